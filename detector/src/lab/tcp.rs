//! A real TCP service in a lab namespace: a minimal HTTP/1.0 server that
//! answers every request with a short page and counts the connections it
//! accepted ([`HttpServer`]); and `curl`, the legitimate client, run from
//! the other namespace ([`curl_many`]). What SYN-cookie mitigation must
//! keep working, counted by the server's socket and by curl itself.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetnsGuard;

/// The page every request gets.
pub const BODY: &str = "detector lab\n";

/// An HTTP server on a thread, its listener in a lab namespace. Dropped,
/// it stops and its thread is joined.
pub struct HttpServer {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `addr` in namespace `ns` (backlog 4096) and serves it.
    pub fn start(ns: &str, addr: SocketAddr) -> io::Result<HttpServer> {
        let listener = {
            let ns = ns.to_string();
            std::thread::spawn(move || -> io::Result<TcpListener> {
                let _in = NetnsGuard::enter(&ns)?;
                TcpListener::bind(addr)
            })
            .join()
            .map_err(|_| io::Error::other("the bind thread panicked"))??
        };
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::Builder::new().name(format!("http-server-{}", addr.port())).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let _ = answer(conn);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })?
        };
        Ok(HttpServer { addr, accepted, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request (up to its blank line) and writes the page.
fn answer(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 16 * 1024 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let resp = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}", BODY.len());
    conn.write_all(resp.as_bytes())
}

/// What [`curl_many`] saw.
#[derive(Clone, Debug, Default)]
pub struct CurlReport {
    pub attempted: u64,
    /// Requests answered with status 200 and the page.
    pub succeeded: u64,
    /// The first failures, for the test's message.
    pub failures: Vec<String>,
}

/// `curl` from namespace `ns`, `count` times in sequence, each a new
/// connection to `url`, each with `timeout` in all; from each of `sources`
/// in turn (`--interface ADDR`), or from the route's address when empty.
pub fn curl_many(ns: &str, url: &str, count: u64, timeout: Duration, sources: &[String]) -> io::Result<CurlReport> {
    let curl =
        super::find_program("curl").ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "curl is not installed"))?;
    let mut r = CurlReport { attempted: count, ..Default::default() };
    for i in 0..count {
        let mut cmd = super::Lab::command_in(ns, &curl);
        cmd.args(["-sS", "--max-time", &format!("{:.1}", timeout.as_secs_f64()), url]);
        if !sources.is_empty() {
            cmd.args(["--interface", &sources[i as usize % sources.len()]]);
        }
        let out = cmd.output()?;
        let body = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && body == BODY {
            r.succeeded += 1;
        } else if r.failures.len() < 5 {
            r.failures.push(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    Ok(r)
}

/// Where `curl` is, for a test's skip message.
pub fn curl_path() -> Option<PathBuf> {
    super::find_program("curl")
}
