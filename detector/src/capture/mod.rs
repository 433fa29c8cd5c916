//! Packet captures per incident, for forensics: what the attack's packets
//! looked like, and what came just before.
//!
//! Nothing here copies traffic at full rate. The counting program already
//! samples packets for the detector (one in an adaptive divisor, a few
//! thousand per poll); each sample carries the frame's first bytes and its
//! time ([`detector_common::sample::SampleRecord`]). Per interface the
//! controller keeps the last samples taken before any attack (a rolling
//! buffer), and per incident it writes the samples of its target while it
//! runs, up to a cap, into one pcapng file in the state directory.
//!
//! - [`config`]: the `capture:` section;
//! - [`recorder`]: which samples go where and when a file starts and ends
//!   (pure: samples and incident events in, file operations out);
//! - [`pcapng`]: the file format (blocks written with `pcap-file`);
//! - [`store`]: the files in the state directory, their retention, and
//!   the writer thread that does the disk work for the poll loop;
//! - [`coalesce`]: appends held on the poll's side up to a second, so the
//!   writer wakes once a second during an attack, not at every poll.

pub mod coalesce;
pub mod config;
pub mod pcapng;
pub mod recorder;
pub mod store;

pub use config::CaptureConfig;
pub use recorder::{Packet, Recorder};

/// How long before an incident opens its attack can have begun: the
/// detector's `hold` (counted in whole polls of `interval`, with slack)
/// and a few polls more; at least a second. The recorder's onset buffer
/// keeps the samples of that long, not the whole attack's: a capture of
/// `packets_per_incident` frames was ten seconds of an attack held in
/// memory, copied as it came, its pages faulted in at the first.
pub fn onset_span(hold: std::time::Duration, interval: std::time::Duration) -> std::time::Duration {
    (hold + interval * 4).max(std::time::Duration::from_secs(1))
}

/// The capture subsystem as the poll loop drives it: the recorder's
/// decisions, carried out by the writer thread.
pub struct Captures {
    pub recorder: Recorder,
    pub writer: store::Writer,
}

impl Captures {
    /// Starts the writer; the incidents resumed from the last run carry on
    /// their files (see [`store::resume`]).
    pub fn start<'a>(
        state_dir: &std::path::Path,
        cfg: &CaptureConfig,
        onset_span: std::time::Duration,
        metrics: std::sync::Arc<store::CaptureMetrics>,
        resumed: impl IntoIterator<Item = &'a crate::detect::incident::Incident>,
    ) -> std::io::Result<Captures> {
        let mut recorder = Recorder::new(cfg.clone(), onset_span);
        let mut open = std::collections::HashSet::new();
        for inc in resumed {
            let held = store::resume(state_dir, &inc.id);
            if let Some(h) = &held {
                tracing::info!(incident = %inc.id, packets = h.packets, "packet capture resumed");
            }
            recorder.resume(inc, held);
            open.insert(inc.id.clone());
        }
        let writer = store::Writer::spawn(state_dir, cfg.clone(), metrics, open)?;
        Ok(Captures { recorder, writer })
    }
}
