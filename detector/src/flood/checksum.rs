//! Internet checksums (RFC 1071) and their incremental update (RFC 1624).

/// Ones' complement sum of `data` as big-endian 16-bit words, folded but
/// not inverted, added to `initial`.
pub fn sum(initial: u32, data: &[u8]) -> u32 {
    let mut s = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        s += (*last as u64) << 8;
    }
    fold(s)
}

fn fold(mut s: u64) -> u32 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

/// The checksum field value for a folded sum.
pub fn finish(s: u32) -> u16 {
    !(fold(s as u64) as u16)
}

/// Checksum of `data` alone (IPv4 header, ICMP).
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The pseudo-header sum for TCP, UDP and ICMPv6 (RFC 768, 793, 8200).
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let mut s = sum(0, src);
    s = sum(s, dst);
    if src.len() == 4 {
        sum(s, &[0, proto, (len >> 8) as u8, len as u8])
    } else {
        let l = (len as u32).to_be_bytes();
        sum(s, &[l[0], l[1], l[2], l[3], 0, 0, 0, proto])
    }
}

/// RFC 1624: the checksum after a 4-byte field covered by it changed from
/// `old` to `new`. The XDP generator does the same arithmetic.
pub fn update4(csum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let w = |b: [u8; 4], i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as u64;
    let s = (!csum) as u64 + (!w(old, 0) & 0xffff) + (!w(old, 2) & 0xffff) + w(new, 0) + w(new, 2);
    !(fold(s) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 section 3: sum 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(0, &data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn a_packet_with_its_checksum_sums_to_zero() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        let c = checksum(&hdr);
        assert_eq!(c, 0xb861);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(finish(sum(0, &hdr)), 0);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 0, 1, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let before = checksum(&hdr);
        for new in [[10, 0, 0, 2], [255, 255, 255, 255], [0, 0, 0, 0], [198, 18, 7, 200]] {
            let old: [u8; 4] = hdr[12..16].try_into().unwrap();
            let cur = u16::from_be_bytes([hdr[10], hdr[11]]);
            let cur = if cur == 0 { before } else { cur };
            hdr[10..12].copy_from_slice(&[0, 0]);
            hdr[12..16].copy_from_slice(&new);
            let fresh = checksum(&hdr);
            let upd = update4(cur, old, new);
            // 0x0000 and 0xffff are the same number in ones' complement.
            assert!(upd == fresh || (upd == 0xffff && fresh == 0) || (upd == 0 && fresh == 0xffff), "{new:?}");
            hdr[10..12].copy_from_slice(&fresh.to_be_bytes());
        }
    }
}
