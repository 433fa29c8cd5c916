//! Serving a listener: the HTTP port and the control socket are started,
//! bounded and stopped the same way.
//!
//! A stranger who can reach a port can open connections and never use them,
//! or send a request one byte at a time. Each listener therefore
//!
//! - keeps at most [`Limits::max_connections`] connections open. When it is
//!   full, a new connection closes the one that has been idle longest (no
//!   request in progress; the least recent byte in or out) to make room, so
//!   a flood of idle or half-sent connections never locks out a real client.
//!   Only when every connection has a request in progress is the new one
//!   answered `503` and closed at once: nothing waits in a queue.
//! - closes a connection that takes longer than [`Limits::header_timeout`]
//!   from the first byte of a request head to its end (slowloris), and one
//!   that sends nothing, with no request in progress, for
//!   [`Limits::idle_timeout`] (an idle keep-alive connection, or one that
//!   never sent a byte, or one that stopped reading its response);
//! - answers `503` to a request not done within [`Limits::request_timeout`].
//!
//! The caps come from the descriptor limit (raised to the hard limit at
//! start, [`crate::privileges::raise_fd_limit`]) minus [`FD_RESERVE`], so the
//! BPF maps, the state directory and the history always find descriptors;
//! the control socket has its own, smaller cap, so no amount of TCP
//! connections can starve it. What is refused or closed is counted in
//! `detector_api_connections_closed_total{listener, reason}`.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json, Router,
};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{watch, Notify},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use crate::metrics::Metrics;

/// How long a request head may take, from its first byte to its end.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent with no request in progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The HTTP listener's cap when descriptors allow it.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// The control socket's cap (the CLI opens one connection per command).
pub const MAX_CONTROL_CONNECTIONS: usize = 64;
/// Descriptors never given to connections: BPF maps and links, pins, the
/// state directory's files, the history (the writer and readers), runbook
/// notifications, the log.
pub const FD_RESERVE: u64 = 512;
/// The smallest HTTP cap, however low the descriptor limit.
const MIN_HTTP_CONNECTIONS: usize = 16;
/// Largest request head (and read buffer) per connection: bounds memory.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Refused connections being answered at once (each holds a descriptor
/// for at most [`REFUSAL_LINGER`]).
const MAX_REFUSING: usize = 32;
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long a stop waits for requests in progress before closing them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a listener allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `http` or `control`: the `listener` label of its metrics.
    pub name: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    /// The HTTP listener's, sized from this process's descriptor limit.
    pub fn http() -> Limits {
        Self::http_for(crate::privileges::fd_limit())
    }

    /// The control socket's.
    pub fn control() -> Limits {
        Limits {
            name: "control",
            max_connections: MAX_CONTROL_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// The HTTP listener's, for a descriptor limit of `nofile`: what is
    /// left after the reserve and the control socket's cap, at most
    /// [`MAX_HTTP_CONNECTIONS`].
    pub fn http_for(nofile: u64) -> Limits {
        let room = nofile.saturating_sub(FD_RESERVE + MAX_CONTROL_CONNECTIONS as u64);
        Limits {
            name: "http",
            max_connections: (room as usize).clamp(MIN_HTTP_CONNECTIONS, MAX_HTTP_CONNECTIONS),
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// A listening socket the accept loop can take connections from.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        let (s, _) = TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// A listener serving on a task of its own.
pub struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Serves `router` on `listener` within `limits` until [`Server::stop`].
pub fn spawn<L: Accept>(listener: L, router: Router, limits: Limits, metrics: Arc<Metrics>) -> Server {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, router, limits, metrics, stopped));
    Server { stop, task }
}

impl Server {
    /// Stops accepting, lets requests in progress finish (for up to 5 s),
    /// closes idle connections, and returns when every connection is closed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The answer to a connection refused because every slot has a request in
/// progress.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 70\r\nconnection: close\r\n\r\n{\"error\":\"too many connections with requests in progress; try again\"}\n";

async fn accept_loop<L: Accept>(
    mut listener: L,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let shared =
        Arc::new(Shared { table: Table::new(limits.max_connections), epoch: Instant::now(), limits, metrics, router });
    let name = shared.limits.name;
    shared.metrics.api_listener(name, shared.limits.max_connections);
    let mut tasks = JoinSet::new();
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let mut last_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok(io) => {
                    let Some(conn) = shared.admit() else {
                        shared.metrics.api_connection_closed(name, "full");
                        // Answered and closed on a task of its own, a few at
                        // a time; past that, just closed.
                        if let Ok(turn) = refusing.clone().try_acquire_owned() {
                            tasks.spawn(async move {
                                refuse(io).await;
                                drop(turn);
                            });
                        }
                        continue;
                    };
                    shared.metrics.api_connection_opened(name);
                    tasks.spawn(serve_connection(io, conn, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    shared.metrics.api_accept_failed(name);
                    if is_per_connection(&e) {
                        continue;
                    }
                    // Out of descriptors or memory: free what this listener
                    // can (its idlest connection), say so now and then, and
                    // let the pending connection wait in the backlog.
                    let freed = shared.table.evict_idlest();
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(
                            listener = name,
                            "cannot accept a connection: {e}{}",
                            if freed { "; closed the idlest connection" } else { "" }
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Stop accepting (the socket closes), let requests in progress finish.
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            connections = tasks.len(),
            "requests still in progress after 5 s; closing them"
        );
        tasks.shutdown().await;
    }
}

/// Answers a connection refused for lack of room with a 503, and closes it
/// once the client has read it: closing with its request unread would reset
/// the connection, and the client might never see the answer.
async fn refuse<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        io.write_all(BUSY).await?;
        io.shutdown().await?;
        let mut buf = [0u8; 1024];
        while io.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Errors that concern one connection only, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM | libc::ETIMEDOUT | libc::EINTR)
    ) || matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// What every connection task of a listener shares.
struct Shared {
    table: Table,
    epoch: Instant,
    limits: Limits,
    metrics: Arc<Metrics>,
    router: Router,
}

impl Shared {
    /// Milliseconds since the listener started, from 1 (0 means "never").
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A slot for a new connection, closing the idlest one if the table is
    /// full; `None` if every connection has a request in progress.
    fn admit(&self) -> Option<Arc<Conn>> {
        self.table.admit(self.now())
    }
}

/// One open connection, as its watchdog and the table see it.
struct Conn {
    id: u64,
    /// When a byte last went in or out, or a request ended.
    last_io: AtomicU64,
    /// When the first byte of a request head arrived; 0: none pending.
    head_since: AtomicU64,
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicUsize,
    /// Told to close, to make room for a new connection.
    evict: Notify,
    /// Told that its deadlines moved (a head started, a request began or ended).
    wake: Notify,
}

impl Conn {
    fn read(&self, now: u64) {
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    fn wrote(&self, now: u64) {
        self.last_io.store(now, Ordering::Relaxed);
    }

    /// When to look again, or why to close now.
    fn check(&self, limits: &Limits, now: u64) -> Result<u64, &'static str> {
        let ms = |d: Duration| d.as_millis() as u64;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // The request's own time limit answers it; look again after.
            return Ok(now + ms(limits.request_timeout));
        }
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            let due = head + ms(limits.header_timeout);
            return if now >= due { Err("header_timeout") } else { Ok(due) };
        }
        let due = self.last_io.load(Ordering::Relaxed) + ms(limits.idle_timeout);
        if now >= due {
            Err("idle_timeout")
        } else {
            Ok(due)
        }
    }
}

/// The open connections of a listener.
struct Table {
    cap: usize,
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Table {
    fn new(cap: usize) -> Table {
        Table { cap: cap.max(1), next: AtomicU64::new(0), conns: Mutex::new(HashMap::new()) }
    }

    fn admit(&self, now: u64) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() >= self.cap {
            let victim = Self::idlest(&conns)?;
            conns.remove(&victim.id);
            victim.evict.notify_one();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            last_io: AtomicU64::new(now),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            evict: Notify::new(),
            wake: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some(conn)
    }

    /// Closes the connection idle longest, if any is idle.
    fn evict_idlest(&self) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let Some(victim) = Self::idlest(&conns) else { return false };
        conns.remove(&victim.id);
        victim.evict.notify_one();
        true
    }

    fn idlest(conns: &HashMap<u64, Arc<Conn>>) -> Option<Arc<Conn>> {
        conns
            .values()
            .filter(|c| c.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|c| c.last_io.load(Ordering::Relaxed))
            .cloned()
    }

    fn remove(&self, id: u64) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// Leaves the table and the gauge however the connection task ends
/// (finished, or aborted at stop).
struct Leave {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.shared.table.remove(self.id);
        self.shared.metrics.api_connection_ended(self.shared.limits.name);
    }
}

/// A request in progress on a connection.
struct InFlight {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl InFlight {
    fn start(conn: &Arc<Conn>, shared: &Arc<Shared>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.head_since.store(0, Ordering::Relaxed);
        conn.wake.notify_one();
        InFlight { conn: conn.clone(), shared: shared.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.last_io.store(self.shared.now(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.conn.wake.notify_one();
    }
}

async fn serve_connection<Io>(io: Io, conn: Arc<Conn>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _leave = Leave { shared: shared.clone(), id: conn.id };
    let name = shared.limits.name;
    let io = TokioIo::new(Tracked { inner: io, conn: conn.clone(), shared: shared.clone() });
    let router = TowerToHyperService::new(shared.router.clone());
    let service = {
        let (conn, shared) = (conn.clone(), shared.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(&conn, &shared);
            let answer = hyper::service::Service::call(&router, req);
            let shared = shared.clone();
            async move {
                let _in_flight = in_flight;
                let limit = shared.limits.request_timeout;
                match tokio::time::timeout(limit, answer).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        shared.metrics.api_request_timed_out(name);
                        Ok::<_, Infallible>(too_slow(limit))
                    }
                }
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut draining = false;
    let closed = loop {
        if !draining && *stop.borrow() {
            draining = true;
            served.as_mut().graceful_shutdown();
        }
        let next = match conn.check(&shared.limits, shared.now()) {
            Ok(at) => shared.epoch + Duration::from_millis(at),
            Err(reason) => break Some(reason),
        };
        tokio::select! {
            done = served.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(listener = name, "connection ended: {e}");
                }
                break None;
            }
            _ = conn.evict.notified() => break Some("evicted"),
            _ = conn.wake.notified() => {}
            changed = stop.changed(), if !draining => {
                if changed.is_err() {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    };
    if let Some(reason) = closed {
        shared.metrics.api_connection_closed(name, reason);
    }
}

fn too_slow(limit: Duration) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": format!("the request took longer than {}", humantime::format_duration(limit)) })),
    )
        .into_response();
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// A connection's stream, noting when bytes move (for the watchdog).
struct Tracked<T> {
    inner: T,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read(self.shared.now());
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote(self.shared.now());
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote(self.shared.now());
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use axum::routing::get;
    use prometheus_client::registry::Registry;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn limits(cap: usize) -> Limits {
        Limits {
            name: "http",
            max_connections: cap,
            header_timeout: Duration::from_millis(400),
            idle_timeout: Duration::from_millis(800),
            request_timeout: Duration::from_millis(400),
        }
    }

    struct Served {
        addr: std::net::SocketAddr,
        server: Server,
        registry: Registry,
    }

    impl Served {
        fn sample(&self, name: &str) -> f64 {
            let text = crate::metrics::encode(&self.registry);
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0.0)
        }

        fn closed(&self, reason: &str) -> f64 {
            self.sample(&format!("detector_api_connections_closed_total{{listener=\"http\",reason=\"{reason}\"}}"))
        }
    }

    async fn serve(limits: Limits) -> Served {
        let router = Router::new().route("/healthz", get(|| async { "ok\n" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done\n"
            }),
        );
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(listener, router, limits, metrics);
        Served { addr, server, registry }
    }

    /// A request on a fresh connection: the whole answer, as text.
    async fn request(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.unwrap().unwrap();
        out
    }

    /// True once the server has closed `s` (EOF or reset), within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // A response (a 503, or one to a request): read on.
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[test]
    fn caps_leave_descriptors_in_reserve() {
        assert_eq!(Limits::http_for(1024).max_connections, 1024 - 512 - 64);
        assert_eq!(Limits::http_for(1 << 20).max_connections, MAX_HTTP_CONNECTIONS);
        assert_eq!(Limits::http_for(100).max_connections, MIN_HTTP_CONNECTIONS);
        assert_eq!(Limits::control().max_connections, MAX_CONTROL_CONNECTIONS);
        // The refusal says how long its body is, truly.
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[tokio::test]
    async fn idle_and_slow_headed_connections_are_closed_on_time() {
        let s = serve(limits(64)).await;
        let started = StdInstant::now();
        // Never sends a byte.
        let mut silent = TcpStream::connect(s.addr).await.unwrap();
        // A slowloris: a head begun, never ended, a byte now and then.
        let mut slow = TcpStream::connect(s.addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").await.unwrap();
        // A keep-alive client that made one request and went quiet.
        let mut kept = TcpStream::connect(s.addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("HTTP/1.1 200"));
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            slow.write_all(b"X").await.unwrap();
        }
        // The slow head goes first: 400 ms after its first byte.
        assert!(closed_within(&mut slow, Duration::from_secs(2)).await, "the slowloris connection stayed open");
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
        // The idle ones 800 ms after their last byte.
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "the silent connection stayed open");
        assert!(closed_within(&mut kept, Duration::from_secs(3)).await, "the idle keep-alive connection stayed open");
        assert!(started.elapsed() >= Duration::from_millis(800), "closed before the idle timeout");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // Counted, and gone from the gauge.
        let until = Instant::now() + Duration::from_secs(2);
        while s.sample("detector_api_connections{listener=\"http\"}") != 0.0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(s.sample("detector_api_connections{listener=\"http\"}"), 0.0);
        assert_eq!(s.closed("header_timeout"), 1.0);
        assert_eq!(s.closed("idle_timeout"), 2.0);
        assert_eq!(s.sample("detector_api_connections_accepted_total{listener=\"http\"}"), 3.0);
        s.server.stop().await;
    }

    #[tokio::test]
    async fn a_full_listener_closes_its_idlest_connection_for_a_new_one() {
        let s = serve(Limits {
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(60),
            ..limits(4)
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(s.addr).await.unwrap());
            // Accepted in order, so "idlest" is well defined.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = StdInstant::now();
        let answer = request(s.addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // The oldest went first; the newest three are still open.
        for c in idle.iter_mut().take(17) {
            assert!(closed_within(c, Duration::from_secs(2)).await);
        }
        for c in idle.iter_mut().skip(17) {
            assert!(!closed_within(c, Duration::from_millis(100)).await);
        }
        assert_eq!(s.closed("evicted"), 17.0);
        assert_eq!(s.closed("full"), 0.0);
        assert!(s.sample("detector_api_connections{listener=\"http\"}") <= 4.0);
        assert_eq!(s.sample("detector_api_connection_limit{listener=\"http\"}"), 4.0);
        s.server.stop().await;
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_a_new_one_is_refused_at_once() {
        let s = serve(Limits { request_timeout: Duration::from_secs(10), ..limits(2) }).await;
        let busy: Vec<_> = (0..2).map(|_| tokio::spawn(request(s.addr, "/slow"))).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = StdInstant::now();
        let answer = request(s.addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too many connections"), "{answer}");
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        assert_eq!(s.closed("full"), 1.0);
        for b in busy {
            assert!(b.await.unwrap().ends_with("done\n"));
        }
        // Room again.
        assert!(request(s.addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        s.server.stop().await;
    }

    #[tokio::test]
    async fn a_request_over_its_time_limit_is_answered_503() {
        let s = serve(limits(8)).await;
        let t = StdInstant::now();
        let answer = request(s.addr, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("the request took longer than 400ms"), "{answer}");
        assert!(t.elapsed() < Duration::from_millis(1400), "{:?}", t.elapsed());
        assert_eq!(s.sample("detector_api_requests_timed_out_total{listener=\"http\"}"), 1.0);
        s.server.stop().await;
    }

    #[tokio::test]
    async fn stop_lets_requests_in_progress_finish_and_closes_the_rest() {
        let s = serve(Limits {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..limits(8)
        })
        .await;
        let mut idle = TcpStream::connect(s.addr).await.unwrap();
        let slow = tokio::spawn(request(s.addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = StdInstant::now();
        s.server.stop().await;
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert!(slow.await.unwrap().ends_with("done\n"));
        assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
        assert!(TcpStream::connect(s.addr).await.is_err(), "still accepting after stop");
    }
}
