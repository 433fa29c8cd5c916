//! Real UDP endpoints in lab namespaces: a server that counts datagrams per
//! source address and answers each one, as a game or DNS server would
//! ([`UdpServer`]), and a client that sends at a steady rate and counts the
//! answers ([`UdpClient`]). The legitimate side of a lab flood: what the
//! mitigation must keep working, counted by the sockets themselves.
//!
//! A socket belongs to the namespace it was created in, whatever thread
//! uses it later: each is bound from a short-lived thread inside its
//! namespace ([`bind_in`]) and then served from an ordinary thread.
//!
//! Datagrams carry a sequence number in their first 8 bytes and the send
//! time in the next 8; the server's answer starts with the same 16 bytes
//! (an NTP server likewise returns the client's transmit timestamp), so the
//! client counts each answer once and measures its round trip.
//!
//! For a flood spread over many destinations (carpet bombing), a sink on a
//! wildcard address counts what each destination address of the host
//! received ([`UdpSink`]).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::NetnsGuard;

/// Bytes at the start of every datagram: sequence number, send time (ns).
pub const HEADER: usize = 16;

/// How long a socket read waits before looking at its stop flag.
const TICK: Duration = Duration::from_millis(20);

/// A UDP socket bound to `addr` in namespace `ns`, with a receive buffer of
/// 8 MiB (`SO_RCVBUFFORCE`), so that a socket counts what the kernel
/// delivered rather than what fit in a default buffer during a flood.
pub fn bind_in(ns: &str, addr: SocketAddr) -> io::Result<UdpSocket> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let _in = NetnsGuard::enter(&ns)?;
        let sock = UdpSocket::bind(addr)?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: a valid socket and an int option of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        sock.set_read_timeout(Some(TICK))?;
        Ok(sock)
    })
    .join()
    .map_err(|_| io::Error::other("the bind thread panicked"))?
}

/// What a [`UdpServer`] sends back for each datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing: a sink.
    None,
    /// The datagram itself (a game server's state update, an echo).
    Echo,
    /// This many bytes of payload (at least [`HEADER`]): the request's
    /// header then zeros, as an NTP server answers 48 bytes to any query.
    Sized(usize),
}

/// What a [`UdpServer`] has seen.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    /// Datagrams received, per source address.
    pub received: HashMap<IpAddr, u64>,
    /// Answers sent.
    pub replies: u64,
    /// Answers the kernel refused: a spoofed source the host has no route
    /// to (`ENETUNREACH` in a lab without a default route).
    pub reply_errors: u64,
}

impl ServerStats {
    /// Datagrams from `addr`.
    pub fn count_from(&self, addr: IpAddr) -> u64 {
        self.received.get(&addr).copied().unwrap_or(0)
    }

    /// Datagrams from every source.
    pub fn total(&self) -> u64 {
        self.received.values().sum()
    }

    /// Datagrams from every source but `addr`.
    pub fn total_except(&self, addr: IpAddr) -> u64 {
        self.total() - self.count_from(addr)
    }
}

/// A UDP server on a thread, its socket in a lab namespace. Dropped, it
/// stops and its thread is joined.
pub struct UdpServer {
    addr: SocketAddr,
    stats: Arc<Mutex<ServerStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Binds `addr` in namespace `ns` and serves it until stopped.
    pub fn start(ns: &str, addr: SocketAddr, reply: Reply) -> io::Result<UdpServer> {
        let sock = bind_in(ns, addr)?;
        let addr = sock.local_addr()?;
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("udp-server-{}", addr.port()))
                .spawn(move || serve(sock, reply, &stats, &stop))?
        };
        Ok(UdpServer { addr, stats, stop, thread: Some(thread) })
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it has seen so far.
    pub fn stats(&self) -> ServerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Datagrams from `addr` so far.
    pub fn received_from(&self, addr: IpAddr) -> u64 {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).count_from(addr)
    }

    /// Stops it: what it saw.
    pub fn stop(mut self) -> ServerStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve(sock: UdpSocket, reply: Reply, stats: &Mutex<ServerStats>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let sent = match reply {
            Reply::None => None,
            Reply::Echo => Some(sock.send_to(&buf[..n], from)),
            Reply::Sized(size) => {
                out.clear();
                out.extend_from_slice(&buf[..n.min(HEADER)]);
                out.resize(size.max(HEADER), 0);
                Some(sock.send_to(&out, from))
            }
        };
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        *s.received.entry(from.ip()).or_insert(0) += 1;
        match sent {
            Some(Ok(_)) => s.replies += 1,
            Some(Err(_)) => s.reply_errors += 1,
            None => {}
        }
    }
}

/// A UDP socket on a thread, in a lab namespace, that answers nothing and
/// counts datagrams per *destination* address: bound to a wildcard address
/// (`0.0.0.0:port`, `[::]:port`) on a host that takes a whole prefix as
/// local, it counts what each address of the prefix received. (An IPv6
/// sink on `[::]` takes IPv4 too, unless the host binds IPv6 only: those
/// are counted under their IPv4 address.) Dropped, it stops.
pub struct UdpSink {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<IpAddr, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Binds `addr` in namespace `ns` and counts until stopped.
    pub fn start(ns: &str, addr: SocketAddr) -> io::Result<UdpSink> {
        let sock = bind_in(ns, addr)?;
        let (level, name) = match addr {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        };
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = sock.local_addr()?;
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::Builder::new().name(format!("udp-sink-{}", addr.port())).spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(to)) = recv_to(&sock, &mut buf) else { continue };
                    *counts.lock().unwrap_or_else(|e| e.into_inner()).entry(to).or_insert(0) += 1;
                }
            })?
        };
        Ok(UdpSink { addr, counts, stop, thread: Some(thread) })
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far, per destination address.
    pub fn counts(&self) -> HashMap<IpAddr, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Datagrams to `addr` so far.
    pub fn received_at(&self, addr: IpAddr) -> u64 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).get(&addr).copied().unwrap_or(0)
    }

    /// Stops it: what it counted.
    pub fn stop(mut self) -> HashMap<IpAddr, u64> {
        self.halt();
        self.counts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Receives one datagram: the destination address of its IP header, from
/// the `IP_PKTINFO` or `IPV6_PKTINFO` message (`None` without one).
fn recv_to(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<IpAddr>> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // u64s: aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it gives.
    if unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut to = None;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled and
    // sized (msg_controllen); each payload is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    to = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical());
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(to)
}

/// What one [`UdpClient::exchange`] did.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// Datagrams sent.
    pub sent: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Datagrams of this exchange that were answered (each counted once).
    pub answered: u64,
    /// Datagrams from the peer received meanwhile, duplicates and late
    /// answers to an earlier exchange included: what the client's socket
    /// took from the peer.
    pub from_peer: u64,
    /// Datagrams from anyone else (a flood that found the client's port).
    pub from_others: u64,
    /// The slowest answer's round trip.
    pub max_rtt: Duration,
    /// From the first send to the last.
    pub sending: Duration,
}

impl Exchange {
    /// Answered share of what was sent, 0 to 1.
    pub fn answered_share(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.answered as f64 / self.sent as f64
    }
}

/// A UDP client with its socket bound in a lab namespace, talking to one
/// peer.
pub struct UdpClient {
    sock: UdpSocket,
    peer: SocketAddr,
    /// The next sequence number: exchanges never share one.
    next_seq: AtomicU64,
}

impl UdpClient {
    /// A socket bound to `local` in namespace `ns` (port 0: any), talking to `peer`.
    pub fn bind(ns: &str, local: SocketAddr, peer: SocketAddr) -> io::Result<UdpClient> {
        Ok(UdpClient { sock: bind_in(ns, local)?, peer, next_seq: AtomicU64::new(0) })
    }

    /// The address it sends from.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Sends `count` datagrams of `payload` bytes (at least [`HEADER`]) at
    /// `pps`, paced against the clock (a late send does not slow the rest),
    /// while counting the answers; then waits up to `linger` for the last
    /// ones. Blocks for about `count / pps + linger`; run it on a thread to
    /// send while something else happens.
    pub fn exchange(&self, count: u64, pps: f64, payload: usize, linger: Duration) -> io::Result<Exchange> {
        let first = self.next_seq.fetch_add(count, Ordering::Relaxed);
        let seqs = first..first + count;
        let epoch = Instant::now();
        let done = AtomicBool::new(false);
        let recv = self.sock.try_clone()?;
        let peer = self.peer;
        std::thread::scope(|s| {
            let receiver = s.spawn(|| {
                let mut ex = Exchange::default();
                let mut seen = HashSet::new();
                let mut buf = vec![0u8; 65536];
                let mut linger_until: Option<Instant> = None;
                loop {
                    if done.load(Ordering::Relaxed) {
                        let until = *linger_until.get_or_insert_with(|| Instant::now() + linger);
                        if Instant::now() >= until || seen.len() as u64 == count {
                            break;
                        }
                    }
                    let Ok((n, from)) = recv.recv_from(&mut buf) else { continue };
                    if from != peer {
                        ex.from_others += 1;
                        continue;
                    }
                    ex.from_peer += 1;
                    if n < HEADER {
                        continue;
                    }
                    let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                    let at = Duration::from_nanos(u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes")));
                    if seqs.contains(&seq) && seen.insert(seq) {
                        ex.max_rtt = ex.max_rtt.max(epoch.elapsed().saturating_sub(at));
                    }
                }
                ex.answered = seen.len() as u64;
                ex
            });
            let (mut sent, mut send_errors) = (0, 0);
            let mut msg = vec![0u8; payload.max(HEADER)];
            for (i, seq) in seqs.clone().enumerate() {
                let due = Duration::from_secs_f64(i as f64 / pps);
                if let Some(wait) = due.checked_sub(epoch.elapsed()) {
                    std::thread::sleep(wait);
                }
                msg[..8].copy_from_slice(&seq.to_be_bytes());
                msg[8..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                match self.sock.send_to(&msg, peer) {
                    Ok(_) => sent += 1,
                    Err(_) => send_errors += 1,
                }
            }
            let sending = epoch.elapsed();
            done.store(true, Ordering::Relaxed);
            let mut ex = receiver.join().map_err(|_| io::Error::other("the receiver thread panicked"))?;
            ex.sent = sent;
            ex.send_errors = send_errors;
            ex.sending = sending;
            Ok(ex)
        })
    }
}
