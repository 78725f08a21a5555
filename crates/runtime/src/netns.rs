//! The outside of a worker's network namespace, done from the supervisor:
//! bring its loopback up and open the listening sockets of its forwards
//! there. A listening socket stays in the namespace it was made in, so the
//! supervisor accepts the worker's connections from its own network and
//! relays only what the forward allows; the worker has no route out.

use std::{
    fs::File,
    net::{Ipv4Addr, TcpListener},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    },
};

/// Enters the network namespace of process `pid` on a thread of its own
/// (namespaces belong to threads; the thread ends with the work), brings
/// `lo` up and listens on `127.0.0.1:<port>` for each port.
pub fn prepare(pid: u32, ports: &[u16]) -> Result<Vec<TcpListener>, String> {
    let ports = ports.to_vec();
    std::thread::spawn(move || {
        let ns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("cannot open the worker's network namespace: {e}"))?;
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot enter the worker's network namespace: {e}"))?;
        loopback_up()?;
        ports
            .iter()
            .map(|&port| {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| {
                    format!("cannot listen on 127.0.0.1:{port} in the worker's network: {e}")
                })?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| format!("cannot set up a forward: {e}"))?;
                Ok(listener)
            })
            .collect()
    })
    .join()
    .map_err(|_| "the network set-up thread failed".to_owned())?
}

/// `ip link set lo up`, as one rtnetlink request (`RTM_NEWLINK` with
/// `IFF_UP` on interface 1, which is always the loopback).
fn loopback_up() -> Result<(), String> {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const LOOPBACK_INDEX: i32 = 1;
    let fail = |e: nix::Error| format!("cannot bring the worker's loopback up: {e}");
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(fail)?;
    let up = u32::try_from(libc::IFF_UP).unwrap_or(1);
    let mut message = Vec::with_capacity(32);
    message.extend_from_slice(&32u32.to_ne_bytes()); // nlmsghdr: length
    message.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    message.extend_from_slice(&[0, 0]); // ifinfomsg: family AF_UNSPEC, padding
    message.extend_from_slice(&0u16.to_ne_bytes()); // device type
    message.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    message.extend_from_slice(&up.to_ne_bytes()); // flags
    message.extend_from_slice(&up.to_ne_bytes()); // change mask
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &message,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(fail)?;
    let mut reply = [0u8; 256];
    let n =
        recv(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut reply, MsgFlags::empty()).map_err(fail)?;
    let field = |at: usize| reply.get(at..at + 4).and_then(|b| b.try_into().ok());
    let kind = reply.get(4..6).and_then(|b| b.try_into().ok()).map(u16::from_ne_bytes);
    match (kind, field(16).map(i32::from_ne_bytes)) {
        (Some(NLMSG_ERROR), Some(0)) if n >= 20 => Ok(()),
        (Some(NLMSG_ERROR), Some(error)) => Err(fail(nix::Error::from_raw(-error))),
        _ => Err("cannot bring the worker's loopback up: unexpected netlink reply".to_owned()),
    }
}
