//! Appends held on the poll's side and handed to the writer together. Pure:
//! operations and a time in, the operations to hand over now out.
//!
//! During an incident every poll brings its capture a few frames: handed
//! over one poll at a time, each woke the writer thread, ten times a
//! second. On the VMs this runs on a thread's sleep and wake-up alone costs
//! it 63 to 76 µs of CPU, and the writer was about a seventh of the
//! controller's CPU under an attack (0.9 ms a second). Held up to [`FLUSH_EVERY`], the appends of one incident go over
//! as one; a start or an end of a file, and the controller's stop, hand
//! over what is held first, so the file's order is the polls'. What a
//! `kill -9` loses (at most that second) is what a resumed capture then
//! counts without: it is counted from the file (see `store::resume`).

use std::time::{Duration, Instant};

use super::recorder::{FileOp, Packet};

/// How long appends are held at most.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How many packets are held at most (a quiet interface samples every
/// packet with its frame; an attack about a thousand frames a second).
pub const FLUSH_PACKETS: usize = 4096;

/// The appends held, per incident, in the order they first came.
#[derive(Default)]
pub struct Coalescer {
    held: Vec<(String, Vec<Packet>)>,
    packets: usize,
    since: Option<Instant>,
}

impl Coalescer {
    /// Takes one operation at `now`; returns what to hand over now, in
    /// order.
    pub fn push(&mut self, op: FileOp, now: Instant) -> Vec<FileOp> {
        match op {
            FileOp::Append { id, packets } => {
                if packets.is_empty() {
                    return Vec::new();
                }
                self.packets += packets.len();
                match self.held.iter_mut().find(|(held, _)| *held == id) {
                    Some((_, more)) => more.extend(packets),
                    None => self.held.push((id, packets)),
                }
                self.since.get_or_insert(now);
                if self.packets >= FLUSH_PACKETS {
                    return self.drain();
                }
                self.due(now)
            }
            other => {
                let mut ops = self.drain();
                ops.push(other);
                ops
            }
        }
    }

    /// What has been held [`FLUSH_EVERY`] by `now`, if anything.
    pub fn due(&mut self, now: Instant) -> Vec<FileOp> {
        match self.since {
            Some(since) if now.saturating_duration_since(since) >= FLUSH_EVERY => self.drain(),
            _ => Vec::new(),
        }
    }

    /// Everything held.
    pub fn drain(&mut self) -> Vec<FileOp> {
        self.packets = 0;
        self.since = None;
        self.held.drain(..).map(|(id, packets)| FileOp::Append { id, packets }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(at: u64) -> Packet {
        Packet { at_ns: at, orig_len: 60, src: [0; 16], dst: [0; 16], data: vec![0u8; 60].into() }
    }

    fn append(id: &str, ats: &[u64]) -> FileOp {
        FileOp::Append { id: id.into(), packets: ats.iter().map(|&a| pkt(a)).collect() }
    }

    /// (id, packet times) of appends; the id alone of the others.
    fn shape(ops: &[FileOp]) -> Vec<(String, Vec<u64>)> {
        ops.iter()
            .map(|op| match op {
                FileOp::Append { id, packets } => (id.clone(), packets.iter().map(|p| p.at_ns).collect()),
                FileOp::Start { id, .. } => (format!("start {id}"), vec![]),
                FileOp::Finish { id } => (format!("finish {id}"), vec![]),
            })
            .collect()
    }

    #[test]
    fn appends_of_a_second_go_over_as_one_per_incident_in_their_order() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = Coalescer::default();
        assert!(c.push(append("a", &[1, 2]), ms(0)).is_empty());
        assert!(c.push(append("b", &[3]), ms(100)).is_empty());
        assert!(c.push(append("a", &[4]), ms(200)).is_empty());
        assert!(c.push(append("a", &[]), ms(300)).is_empty(), "nothing to hold");
        assert!(c.due(ms(999)).is_empty());
        // A second after the first held append, not after the last.
        assert_eq!(shape(&c.due(ms(1000))), vec![("a".into(), vec![1, 2, 4]), ("b".into(), vec![3])]);
        assert!(c.due(ms(5000)).is_empty(), "nothing left");
        // The next second counts from the next append.
        assert!(c.push(append("a", &[5]), ms(5000)).is_empty());
        assert_eq!(shape(&c.push(append("a", &[6]), ms(6000))), vec![("a".into(), vec![5, 6])]);
    }

    #[test]
    fn a_start_or_an_end_hands_over_what_is_held_first() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert!(c.push(append("a", &[1]), t0).is_empty());
        let start = FileOp::Start {
            id: "b".into(),
            iface: "eth0".into(),
            comment: String::new(),
            pre_attack: vec![],
            packets: vec![pkt(2)],
        };
        assert_eq!(shape(&c.push(start, t0)), vec![("a".into(), vec![1]), ("start b".into(), vec![])]);
        assert!(c.push(append("a", &[3]), t0).is_empty());
        assert!(c.push(append("b", &[4]), t0).is_empty());
        assert_eq!(
            shape(&c.push(FileOp::Finish { id: "a".into() }, t0)),
            vec![("a".into(), vec![3]), ("b".into(), vec![4]), ("finish a".into(), vec![])]
        );
        assert!(c.drain().is_empty());
    }

    #[test]
    fn too_many_packets_are_not_held_for_the_second() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        let many: Vec<u64> = (0..FLUSH_PACKETS as u64 - 1).collect();
        assert!(c.push(append("a", &many), t0).is_empty());
        let ops = c.push(append("a", &[9999]), t0);
        let [FileOp::Append { packets, .. }] = ops.as_slice() else { panic!("{:?}", shape(&ops)) };
        assert_eq!(packets.len(), FLUSH_PACKETS);
        assert!(c.due(t0 + FLUSH_EVERY).is_empty());
    }
}
