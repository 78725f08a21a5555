//! A real S3-compatible server for tests: moto's (from PyPI; a real HTTP S3
//! API with multipart uploads, kept in memory), one per test on a port of
//! its own, stopped when dropped. scripts/test.sh installs it.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Any key moto accepts; it checks none.
pub const ACCESS_KEY: (&str, &str) = ("testing", "testing");

#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
}

impl S3Server {
    /// Starts a server and creates `bucket` in it.
    ///
    /// # Panics
    /// When moto is not installed or does not start: a test cannot go on.
    pub fn start(bucket: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (python3 -m pip install 'moto[server]'; scripts/test.sh does)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // moto takes an unsigned request.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        Self { child: Some(child), port }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server, as an outage would; what it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process, to stop it from elsewhere (mid-upload).
    pub fn take_process(&mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
