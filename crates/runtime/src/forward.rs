//! What a worker may reach outside its network namespace, each through a
//! listening socket the supervisor opened inside it (see [`crate::netns`]):
//!
//! - its database server, through a relay that reads the PostgreSQL
//!   start-up message and lets through only the worker's own lease role
//!   and its tenant's database (so even a server that trusts local
//!   connections gives a worker nothing but its own login);
//! - HTTPS to the hosts of the tenant's egress allowlist, through a
//!   `CONNECT` proxy that refuses every other host, and any name that
//!   resolves to a loopback, private or link-local address;
//! - or a plain TCP relay to one fixed address.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, copy_bidirectional},
    net::{TcpListener, TcpStream, UnixStream},
};

/// Where one forward leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp {
        to: String,
    },
    /// `to` is `host:port` or the path of the server's Unix socket.
    Postgres {
        to: String,
        roles: Vec<String>,
        databases: Vec<String>,
    },
    Egress(EgressPolicy),
}

/// The hosts a tenant's workers may open HTTPS connections to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    rules: Vec<EgressRule>,
    /// Set only by the operator: may reach loopback, private and
    /// link-local addresses (a tenant's own list never may).
    private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct EgressRule {
    /// A host name (lower case), `*.` + a domain, or an IP address.
    host: String,
    port: u16,
}

impl EgressPolicy {
    /// Parses a tenant's `host[:port]` entries (port 443 when absent;
    /// `*.example.com` for every subdomain). Nothing on it reaches a
    /// loopback, private, link-local or otherwise internal address, by IP
    /// or by a name resolving to one (cloud metadata, the database, the
    /// control plane).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let policy = Self::parse_trusted(entries)?;
        if let Some(rule) =
            policy.rules.iter().find(|r| r.host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip)))
        {
            return Err(format!(
                "egress entry {}: {} is not a public address; a worker may not reach internal addresses",
                rule.host, rule.host
            ));
        }
        Ok(Self { private: false, ..policy })
    }

    /// Like [`EgressPolicy::parse`], for the operator: internal addresses
    /// allowed.
    pub fn parse_trusted<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let rules = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                let (host, port) = split_host_port(entry, 443)
                    .ok_or_else(|| format!("egress entry {entry:?} is not host[:port] (for example api.stripe.com or *.example.com:8443)"))?;
                let name = host.strip_prefix("*.").unwrap_or(&host);
                let valid = host.parse::<IpAddr>().is_ok()
                    || (!name.is_empty() && name.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')));
                if !valid {
                    return Err(format!("egress entry {entry:?}: {host:?} is not a host name or an IP address"));
                }
                Ok(EgressRule { host, port })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { rules, private: true })
    }

    fn allows(&self, host: &str, port: u16) -> Option<&EgressRule> {
        self.rules.iter().find(|rule| {
            rule.port == port
                && match rule.host.strip_prefix("*.") {
                    Some(domain) => host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                    None => rule.host == host,
                }
        })
    }
}

/// `host:port`, `[v6]:port` or a bare host with `default` port; the host in
/// lower case.
fn split_host_port(value: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.parse::<IpAddr>().ok()?.to_string(), port));
    }
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()?),
        Some(_) => return None,
        None => (value, default),
    };
    (!host.is_empty() && port != 0).then(|| (host.to_ascii_lowercase(), port))
}

/// Connections one forward of one worker holds at once: past it, new ones
/// wait, so a worker cannot spend the server's file descriptors ...
const CONNECTIONS_PER_FORWARD: usize = 256;
/// ... nor, through its database relay, the database server's connection
/// slots, which every tenant on that server shares.
const DATABASE_CONNECTIONS_PER_FORWARD: usize = 20;

/// Accepts the worker's connections on `listener` until the task is
/// aborted; each is relayed on its own task.
pub async fn serve(listener: TcpListener, target: Arc<Target>, worker: Arc<str>) {
    let most = match &*target {
        Target::Postgres { .. } => DATABASE_CONNECTIONS_PER_FORWARD,
        _ => CONNECTIONS_PER_FORWARD,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(most));
    let sessions = Sessions::default();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: back off rather than spin.
                tracing::warn!(worker = &*worker, %error, "a forward cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let target = Arc::clone(&target);
        let worker = Arc::clone(&worker);
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = match &*target {
                Target::Tcp { to } => relay(stream, to).await,
                Target::Postgres { to, roles, databases } => {
                    postgres(stream, to, roles, databases, &sessions).await
                }
                Target::Egress(policy) => egress(stream, policy).await,
            };
            if let Err(refused) = outcome {
                tracing::warn!(worker = &*worker, "forward refused or failed: {refused}");
            }
        });
    }
}

const HANDSHAKE: Duration = Duration::from_secs(10);

async fn relay(mut inside: TcpStream, to: &str) -> Result<(), String> {
    let mut outside =
        TcpStream::connect(to).await.map_err(|e| format!("cannot reach {to}: {e}"))?;
    let _ = copy_bidirectional(&mut inside, &mut outside).await;
    Ok(())
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;
const PROTOCOL_3_LAST: u32 = PROTOCOL_3 + 0xffff;

/// The cancel keys (`BackendKeyData`: process id and secret) of the
/// sessions one worker opened through its relay: the only sessions its
/// cancel requests may name.
#[derive(Debug, Clone, Default)]
struct Sessions(Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>);

impl Sessions {
    fn insert(&self, key: &[u8]) {
        if let Ok(mut keys) = self.0.lock() {
            keys.insert(key.to_vec());
        }
    }

    fn remove(&self, key: &[u8]) {
        if let Ok(mut keys) = self.0.lock() {
            keys.remove(key);
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.0.lock().is_ok_and(|keys| keys.contains(key))
    }
}

async fn postgres(
    mut inside: TcpStream,
    to: &str,
    roles: &[String],
    databases: &[String],
    sessions: &Sessions,
) -> Result<(), String> {
    let startup = tokio::time::timeout(HANDSHAKE, read_startup(&mut inside))
        .await
        .map_err(|_| "the worker sent no PostgreSQL start-up message in time".to_owned())??;
    let (bytes, login) = match &startup {
        Startup::Login { user, database, bytes } => {
            let database = database.as_deref().unwrap_or(user);
            if !roles.iter().any(|r| r == user) || !databases.iter().any(|d| d == database) {
                let message = "bulkhead: this worker may log in only with its own lease (its \
                               BULKHEAD_DATABASE_URL_FILE) to its tenant's database";
                let _ = inside.write_all(&error_response(message)).await;
                return Err(format!("PostgreSQL login as {user:?} to {database:?} refused"));
            }
            (bytes, true)
        }
        // A cancel request names a session by its process id and secret
        // key, of any tenant on the server: passed on only for a session
        // this worker opened through this relay.
        Startup::Cancel { bytes } => {
            if !bytes.get(8..).is_some_and(|key| sessions.contains(key)) {
                return Err("PostgreSQL cancel request for no session of this worker's".to_owned());
            }
            (bytes, false)
        }
    };
    let unreachable = |e: std::io::Error| format!("cannot reach the database at {to}: {e}");
    if to.starts_with('/') {
        let outside = UnixStream::connect(to).await.map_err(unreachable)?;
        pass(inside, outside, bytes, login.then_some(sessions)).await.map_err(unreachable)
    } else {
        let outside = TcpStream::connect(to).await.map_err(unreachable)?;
        pass(inside, outside, bytes, login.then_some(sessions)).await.map_err(unreachable)
    }
}

/// Sends the start-up message, then relays both ways. For a login, the
/// server's messages are read one by one until the session is ready (or
/// refused), to learn its cancel key, which is valid for as long as the
/// session lasts.
async fn pass<S: AsyncRead + AsyncWrite + Unpin>(
    inside: TcpStream,
    mut outside: S,
    startup: &[u8],
    sessions: Option<&Sessions>,
) -> std::io::Result<()> {
    outside.write_all(startup).await?;
    let Some(sessions) = sessions else { return Ok(()) };
    let (mut in_r, mut in_w) = tokio::io::split(inside);
    let (mut out_r, mut out_w) = tokio::io::split(outside);
    let mut key = None;
    let to_server = async {
        let _ = tokio::io::copy(&mut in_r, &mut out_w).await;
        let _ = out_w.shutdown().await;
    };
    let to_worker = async {
        loop {
            let mut head = [0u8; 5];
            out_r.read_exact(&mut head).await?;
            let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            // Start-up messages are small; anything else is no server's.
            if !(4..=1 << 20).contains(&length) {
                return Err(std::io::Error::other("malformed message from the server"));
            }
            let mut body = vec![0u8; usize::try_from(length - 4).unwrap_or(0)];
            out_r.read_exact(&mut body).await?;
            in_w.write_all(&head).await?;
            in_w.write_all(&body).await?;
            match head[0] {
                b'K' => {
                    sessions.insert(&body);
                    key = Some(body);
                }
                b'Z' | b'E' => break,
                _ => {}
            }
        }
        tokio::io::copy(&mut out_r, &mut in_w).await?;
        in_w.shutdown().await
    };
    let (_, relayed) = tokio::join!(to_server, to_worker);
    if let Some(key) = key {
        sessions.remove(&key);
    }
    relayed
}

enum Startup {
    Login { user: String, database: Option<String>, bytes: Vec<u8> },
    Cancel { bytes: Vec<u8> },
}

/// Reads the start-up message, answering "no" to TLS and GSS encryption
/// requests (the hop is loopback inside the worker's own namespace).
async fn read_startup(stream: &mut TcpStream) -> Result<Startup, String> {
    for _ in 0..3 {
        let mut head = [0u8; 8];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("cannot read the start-up message: {e}"))?;
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=10_000).contains(&length) {
            return Err(format!("start-up message of {length} bytes refused"));
        }
        let mut body = vec![0u8; usize::try_from(length).unwrap_or(8) - 8];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("cannot read the start-up message: {e}"))?;
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&body);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                stream.write_all(b"N").await.map_err(|e| format!("cannot answer: {e}"))?;
            }
            CANCEL_REQUEST => return Ok(Startup::Cancel { bytes }),
            // 3.0 and the minor versions after it (3.2 in PostgreSQL 18),
            // which the server negotiates.
            PROTOCOL_3..=PROTOCOL_3_LAST => {
                let mut fields =
                    body.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
                let (mut user, mut database) = (None, None);
                while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
                    match key.as_str() {
                        "user" => user = Some(value),
                        "database" => database = Some(value),
                        _ => {}
                    }
                }
                let user = user.ok_or("start-up message without a user")?;
                return Ok(Startup::Login { user, database, bytes });
            }
            other => return Err(format!("unknown start-up code {other}")),
        }
    }
    Err("too many encryption requests".to_owned())
}

/// A FATAL `ErrorResponse` with SQLSTATE 28000 (invalid authorization).
fn error_response(message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (kind, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "28000"), (b'M', message)] {
        fields.push(kind);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&u32::try_from(fields.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

async fn egress(mut inside: TcpStream, policy: &EgressPolicy) -> Result<(), String> {
    let request = tokio::time::timeout(HANDSHAKE, read_head(&mut inside))
        .await
        .map_err(|_| "no proxy request in time".to_owned())??;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let target = match parsed.parse(&request) {
        Ok(httparse::Status::Complete(_)) if parsed.method == Some("CONNECT") => {
            parsed.path.map(str::to_owned)
        }
        _ => None,
    };
    let Some((host, port)) = target.as_deref().and_then(|t| split_host_port(t, 443)) else {
        refuse(
            &mut inside,
            "405 Method Not Allowed",
            "this proxy takes only CONNECT host:port (HTTPS)",
        )
        .await;
        return Err("not a CONNECT request".to_owned());
    };
    if policy.allows(&host, port).is_none() {
        refuse(
            &mut inside,
            "403 Forbidden",
            &format!("{host}:{port} is not on this tenant's egress allowlist"),
        )
        .await;
        return Err(format!("egress to {host}:{port} refused: not on the allowlist"));
    }
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .filter(|a| policy.private || is_public(a.ip()))
        .collect();
    if addresses.is_empty() {
        refuse(&mut inside, "403 Forbidden", &format!("{host} resolves to no public address"))
            .await;
        return Err(format!("egress to {host}:{port} refused: no public address"));
    }
    let mut outside = match TcpStream::connect(&addresses[..]).await {
        Ok(stream) => stream,
        Err(e) => {
            refuse(&mut inside, "502 Bad Gateway", &format!("cannot reach {host}:{port}")).await;
            return Err(format!("cannot reach {host}:{port}: {e}"));
        }
    };
    inside
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .map_err(|e| format!("cannot answer: {e}"))?;
    let _ = copy_bidirectional(&mut inside, &mut outside).await;
    Ok(())
}

/// The request head, up to 8 KiB.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.map_err(|e| format!("cannot read the request: {e}"))?;
        if n == 0 || head.len() + n > 8192 {
            return Err("incomplete or oversized proxy request".to_owned());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

async fn refuse(stream: &mut TcpStream, status: &str, why: &str) {
    let body = format!("bulkhead: {why}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Not loopback, private, link-local, shared (CGNAT), benchmarking,
/// reserved, multicast or unspecified; IPv6 forms that carry an IPv4
/// address (mapped, NAT64, 6to4) are judged by that address.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0))
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(segments[6], segments[7]));
            }
            if segments[0] == 0x2002 {
                return is_public(embedded(segments[1], segments[2]));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_match_host_port_and_subdomains() {
        let policy =
            EgressPolicy::parse_trusted(&["api.stripe.com", "*.example.com:8443", "10.1.2.3:5000"])
                .unwrap();
        assert!(
            EgressPolicy::parse(&["10.1.2.3:5000"]).unwrap_err().contains("not a public address")
        );
        assert!(EgressPolicy::parse(&["169.254.169.254:80"]).is_err());
        assert!(EgressPolicy::parse(&["[::1]:443"]).is_err());
        assert!(policy.allows("api.stripe.com", 443).is_some());
        assert!(policy.allows("api.stripe.com", 80).is_none());
        assert!(policy.allows("evil-api.stripe.com", 443).is_none());
        assert!(policy.allows("a.example.com", 8443).is_some());
        assert!(policy.allows("example.com", 8443).is_none(), "a wildcard is for subdomains only");
        assert!(policy.allows("aexample.com", 8443).is_none());
        assert!(policy.allows("10.1.2.3", 5000).is_some());
        for bad in ["", "a b", "host:0", "host:x", "*.", "::1"] {
            assert!(EgressPolicy::parse(&[bad]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_never_reach_private_addresses() {
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_error_response_is_a_well_formed_fatal() {
        let bytes = error_response("no");
        assert_eq!(bytes[0], b'E');
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(length + 1, bytes.len());
        assert!(bytes.windows(6).any(|w| w == b"C28000"));
    }
}
