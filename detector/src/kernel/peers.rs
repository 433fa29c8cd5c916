//! The known-good peers map of an interface (see
//! `detector_common::known`), read and flushed for the operator.

use std::net::IpAddr;

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use detector_common::{
    known::{KnownPeer, KNOWN_BY_EGRESS, KNOWN_BY_HANDSHAKE, KNOWN_PEERS_MAP},
    maps::SourceKey,
};
use serde::{Deserialize, Serialize};

use super::{ebpf, rules::KernelError};
use crate::sources::key_addr;

/// One known peer, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub addr: IpAddr,
    /// How it became known: `egress` (the host sent it traffic) and/or
    /// `handshake` (it completed a TCP handshake with a SYN cookie).
    pub how: Vec<String>,
    /// Seconds since it was last confirmed.
    pub age_s: u64,
}

pub struct KnownPeers {
    map: HashMap<MapData, SourceKey, KnownPeer>,
}

impl KnownPeers {
    /// Takes the map out of a loaded counting object.
    pub fn take(ebpf: &mut Ebpf) -> Result<KnownPeers, KernelError> {
        let map = HashMap::try_from(ebpf::take_map(ebpf, "detector", KNOWN_PEERS_MAP)?)
            .map_err(|source| KernelError::Layout { map: KNOWN_PEERS_MAP, source })?;
        Ok(KnownPeers { map })
    }

    /// Every peer (the map holds at most 65,536), the most recently
    /// confirmed first; `mono_ns` is `CLOCK_MONOTONIC` now.
    pub fn list(&self, mono_ns: u64) -> Result<Vec<Peer>, KernelError> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(|source| KernelError::Read { map: KNOWN_PEERS_MAP, source })?;
            let mut how = Vec::new();
            if v.how & KNOWN_BY_EGRESS != 0 {
                how.push("egress".to_string());
            }
            if v.how & KNOWN_BY_HANDSHAKE != 0 {
                how.push("handshake".to_string());
            }
            out.push(Peer { addr: key_addr(&k), how, age_s: mono_ns.saturating_sub(v.last_ns) / 1_000_000_000 });
        }
        out.sort_by(|a, b| a.age_s.cmp(&b.age_s).then(a.addr.cmp(&b.addr)));
        Ok(out)
    }

    /// Forgets every peer; returns how many there were.
    pub fn flush(&mut self) -> Result<usize, KernelError> {
        let keys: Vec<SourceKey> = self.map.keys().filter_map(Result::ok).collect();
        let mut n = 0;
        for k in keys {
            // One the LRU evicted meanwhile is gone already.
            if self.map.remove(&k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}
