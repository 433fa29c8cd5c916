//! The exact engine: one `send` per frame on an `AF_PACKET` socket bound to
//! the interface, paced to the requested rate. Every frame that `send`
//! accepted was handed to the driver; on a veth that means it reached the
//! peer, which is what the tests count on.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::{stopped, Engine, FloodError, FloodPlan, FloodReport, Limit, Rate, SourcePicker};

/// A send-only raw packet socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> Result<PacketSocket, FloodError> {
        let err = |what| move |source| FloodError::Socket { ifindex, what, source };
        // Protocol 0: this socket sends only and never receives a copy.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(err("socket")(io::Error::last_os_error()));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(err("bind")(io::Error::last_os_error()));
        }
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends one frame, retrying while the device queue is full.
    pub fn send(&self, frame: &[u8]) -> Result<(), FloodError> {
        loop {
            let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => std::thread::sleep(Duration::from_micros(50)),
                Some(libc::EINTR) if !stopped() => {}
                _ => return Err(FloodError::Socket { ifindex: self.ifindex, what: "send", source: e }),
            }
        }
    }
}

pub fn run(ifindex: u32, plan: &FloodPlan) -> Result<FloodReport, FloodError> {
    let sock = PacketSocket::open(ifindex)?;
    let mut frame = plan.frame.clone();
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let mut picker = SourcePicker::new(plan.sources.clone(), u64::from_ne_bytes(seed));
    let wall = std::time::SystemTime::now();
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        if stopped() {
            break;
        }
        match plan.limit {
            Limit::Count(n) if sent >= n => break,
            Limit::Duration(d) if start.elapsed() >= d => break,
            _ => {}
        }
        if let Rate::Pps(pps) = plan.rate {
            // Frame `sent` is due at sent/pps seconds; sleep when over 1 ms early.
            let due = Duration::from_secs_f64(sent as f64 / pps as f64);
            let now = start.elapsed();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        if let Some(src) = picker.next_source() {
            frame.set_source(src);
        }
        sock.send(&frame.bytes)?;
        sent += 1;
    }
    Ok(FloodReport::new(Engine::Exact, sent, wall, start.elapsed()))
}
