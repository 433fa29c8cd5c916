//! The capture files' format: pcapng (what Wireshark and tshark read
//! natively), built with `pcap-file`'s blocks.
//!
//! A file is one section: its header carries the incident in a comment,
//! one interface (Ethernet, the snap length, the interface's name,
//! nanosecond timestamps), then one enhanced packet block per packet. The
//! first packet before the attack and the first of the attack carry a
//! comment saying so, which is also how a file read back tells how many of
//! its packets came before the attack. Blocks are only ever appended, so a
//! file cut short by a crash is whole up to its last complete block
//! ([`summarize`] finds it).

use std::{borrow::Cow, time::Duration};

use byteorder_slice::LittleEndian;
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
        Block, PcapNgBlock, PcapNgParser,
    },
    DataLink, Endianness, PcapError,
};

use super::recorder::Packet;

/// The comment on the first packet sampled before the attack.
pub const PRE_ATTACK_COMMENT: &str = "before the attack: the last packets sampled while the interface was calm";
/// The comment on the first packet of the attack.
pub const ATTACK_COMMENT: &str = "the attack: packets sampled from its onset";

/// The section header and the interface: a file's first bytes.
pub fn header(comment: &str, iface: &str, snaplen: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let shb = SectionHeaderBlock {
        endianness: Endianness::Little,
        options: vec![
            SectionHeaderOption::Comment(Cow::Borrowed(comment)),
            SectionHeaderOption::UserApplication(Cow::Owned(format!("detector {}", env!("CARGO_PKG_VERSION")))),
        ],
        ..Default::default()
    };
    let idb = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: snaplen as u32,
        options: vec![
            InterfaceDescriptionOption::IfName(Cow::Borrowed(iface)),
            // Timestamps in nanoseconds (10^-9 s).
            InterfaceDescriptionOption::IfTsResol(9),
        ],
    };
    for block in [shb.into_block(), idb.into_block()] {
        block.write_to::<LittleEndian, _>(&mut out).expect("writing to a Vec cannot fail");
    }
    out
}

/// Appends `packets` as enhanced packet blocks; the first one carries
/// `first_comment` when given.
pub fn packets(out: &mut Vec<u8>, packets: &[Packet], first_comment: Option<&str>) {
    for (i, p) in packets.iter().enumerate() {
        let options = match first_comment {
            Some(c) if i == 0 => vec![EnhancedPacketOption::Comment(Cow::Borrowed(c))],
            _ => Vec::new(),
        };
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(p.at_ns),
            original_len: p.orig_len,
            data: Cow::Borrowed(&p.data),
            options,
        };
        epb.into_block().write_to::<LittleEndian, _>(out).expect("writing to a Vec cannot fail");
    }
}

/// What a file holds, read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub packets: u64,
    /// Of which sampled before the attack.
    pub pre_attack: u64,
    /// Whether the attack's first packet is in it.
    pub attack_started: bool,
    /// The bytes up to the end of the last complete block: what to keep of
    /// a file a crash cut short.
    pub complete_len: usize,
}

/// Reads a file's blocks. A truncated last block is not an error (see
/// [`Summary::complete_len`]); anything else that does not parse is.
pub fn summarize(bytes: &[u8]) -> Result<Summary, String> {
    let (mut rest, mut parser) = match PcapNgParser::new(bytes) {
        Ok(p) => p,
        Err(PcapError::IncompleteBuffer) => return Ok(Summary::default()),
        Err(e) => return Err(format!("not a pcapng file: {e}")),
    };
    let mut s = Summary { complete_len: bytes.len() - rest.len(), ..Summary::default() };
    while !rest.is_empty() {
        let (next, block) = match parser.next_block(rest) {
            Ok(b) => b,
            Err(PcapError::IncompleteBuffer) => break,
            Err(e) => return Err(format!("block at byte {}: {e}", bytes.len() - rest.len())),
        };
        if let Block::EnhancedPacket(epb) = block {
            let marks_attack =
                epb.options.iter().any(|o| matches!(o, EnhancedPacketOption::Comment(c) if c == ATTACK_COMMENT));
            s.attack_started |= marks_attack;
            s.packets += 1;
            if !s.attack_started {
                s.pre_attack += 1;
            }
        }
        rest = next;
        s.complete_len = bytes.len() - rest.len();
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(at: u64, n: usize) -> Packet {
        Packet { at_ns: at, orig_len: 1000, src: [0; 16], dst: [0; 16], data: vec![0x45u8; n].into() }
    }

    #[test]
    fn a_file_reads_back_and_a_cut_one_is_whole_up_to_its_last_block() {
        let mut f = header("incident x", "eth0", 256);
        assert_eq!(summarize(&f).unwrap(), Summary { complete_len: f.len(), ..Summary::default() });
        packets(&mut f, &[pkt(1, 60), pkt(2, 61)], Some(PRE_ATTACK_COMMENT));
        packets(&mut f, &[pkt(3, 256)], Some(ATTACK_COMMENT));
        packets(&mut f, &[pkt(4, 100)], None);
        let s = summarize(&f).unwrap();
        assert_eq!(s, Summary { packets: 4, pre_attack: 2, attack_started: true, complete_len: f.len() });

        // Parsed back with the crate's parser: times, lengths, comments.
        let (mut rest, mut p) = PcapNgParser::new(&f).unwrap();
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let (next, b) = p.next_block(rest).unwrap();
            if let Block::EnhancedPacket(e) = b {
                seen.push((e.timestamp.as_nanos() as u64, e.original_len, e.data.len(), e.options.len()));
            }
            rest = next;
        }
        assert_eq!(seen, vec![(1, 1000, 60, 1), (2, 1000, 61, 0), (3, 1000, 256, 1), (4, 1000, 100, 0)]);

        let cut = &f[..f.len() - 7];
        let s = summarize(cut).unwrap();
        assert_eq!((s.packets, s.pre_attack), (3, 2));
        assert!(s.complete_len < cut.len());
        assert_eq!(summarize(&f[..s.complete_len]).unwrap().packets, 3);
        assert!(summarize(b"not a capture at all, longer than a block header").is_err());
        assert_eq!(summarize(&f[..10]).unwrap().packets, 0);
    }

    /// A capture file damaged anywhere (bytes changed, bits flipped, cut
    /// short) reads as an error or as its whole blocks, never a panic: the
    /// files are read back at each start (resumed captures) and served by
    /// the API. Mutations from a fixed seed.
    #[test]
    fn a_damaged_file_reads_as_an_error_or_its_whole_blocks_never_a_panic() {
        let mut f = header("incident x", "eth0", 256);
        packets(&mut f, &[pkt(1, 60), pkt(2, 61)], Some(PRE_ATTACK_COMMENT));
        packets(&mut f, &[pkt(3, 256)], Some(ATTACK_COMMENT));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut g = f.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() as usize % g.len();
                g[i] = match next() % 3 {
                    0 => next() as u8,
                    1 => g[i] ^ 1 << (next() % 8),
                    _ => [0u8, 0xff, 0x7f, 0x80][next() as usize % 4],
                };
            }
            if next() % 4 == 0 {
                g.truncate(next() as usize % g.len());
            }
            let read = std::panic::catch_unwind(|| summarize(&g));
            let read = read.unwrap_or_else(|_| panic!("summarize panicked on {g:02x?}"));
            if let Ok(s) = read {
                assert!(s.complete_len <= g.len() && s.pre_attack <= s.packets, "{s:?} of {g:02x?}");
            }
        }
    }
}
