//! The gRPC client of a running gobgpd: add, delete and list the
//! detector's paths, list the sessions, and one reconciliation step that
//! puts them together ([`Client::sync`]).
//!
//! The channel connects lazily and reconnects by itself: a client made
//! before the daemon listens, or kept across a daemon restart, works once
//! the daemon is up; until then each call fails with
//! [`GobgpError::Unavailable`].

use std::{net::IpAddr, time::Duration};

use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use super::{
    api::{
        gobgp_api_client::GobgpApiClient, peer_state::SessionState as ApiSessionState, AddPathRequest,
        DeletePathRequest, ListPathRequest, ListPeerRequest, TableType,
    },
    paths::{families, from_path, to_path},
};
use crate::bgp::{
    announce::Announcement,
    plan::{Change, Desired, Planner, Step},
};

/// gobgpd's neighbor address of a path it originated.
fn is_local(neighbor_ip: &str) -> bool {
    neighbor_ip.is_empty() || neighbor_ip == "<nil>" || neighbor_ip.parse::<IpAddr>().is_ok_and(|a| a.is_unspecified())
}

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum GobgpError {
    #[error("gobgpd's API on 127.0.0.1:{port} is not answering: {message}")]
    Unavailable { port: u16, message: String },
    #[error("gobgpd refused to {what}: {message}")]
    Refused { what: String, message: String },
}

/// A BGP session's state, as gobgpd reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Unknown,
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl SessionState {
    pub fn name(&self) -> &'static str {
        match self {
            SessionState::Unknown => "unknown",
            SessionState::Idle => "idle",
            SessionState::Connect => "connect",
            SessionState::Active => "active",
            SessionState::OpenSent => "open_sent",
            SessionState::OpenConfirm => "open_confirm",
            SessionState::Established => "established",
        }
    }
}

/// One neighbor and its session (`detector_bgp_session_up{neighbor}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub remote_as: u32,
    pub description: String,
    pub state: SessionState,
}

/// What [`Client::list`] found: the detector's paths, and any path it
/// could not read (none, unless something else added paths).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listed {
    pub announcements: Vec<Announcement>,
    pub unreadable: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Client {
    api: GobgpApiClient<Channel>,
    port: u16,
}

impl Client {
    /// A client of the API on `127.0.0.1:port` (no connection yet).
    pub fn new(port: u16) -> Client {
        // A literal address: no resolver runs (so no thread outside the
        // caller's network namespace connects).
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("a valid URI")
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT);
        Client { api: GobgpApiClient::new(endpoint.connect_lazy()), port }
    }

    fn error(&self, what: &str, s: tonic::Status) -> GobgpError {
        use tonic::Code;
        let down = matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
            || s.message().contains("transport error");
        if down {
            GobgpError::Unavailable { port: self.port, message: s.message().to_string() }
        } else {
            GobgpError::Refused { what: what.to_string(), message: s.message().to_string() }
        }
    }

    /// Announces `a`, replacing a path with the same key.
    pub async fn add(&mut self, a: &Announcement) -> Result<(), GobgpError> {
        let req =
            AddPathRequest { table_type: TableType::Global as i32, vrf_id: String::new(), path: Some(to_path(a)) };
        self.api.add_path(req).await.map_err(|s| self.error(&format!("announce {a}"), s))?;
        Ok(())
    }

    /// Withdraws `a` (its key: the attributes need not match).
    pub async fn delete(&mut self, a: &Announcement) -> Result<(), GobgpError> {
        let path = to_path(a);
        let req = DeletePathRequest {
            table_type: TableType::Global as i32,
            family: path.family,
            path: Some(path),
            ..Default::default()
        };
        self.api.delete_path(req).await.map_err(|s| self.error(&format!("withdraw {}", a.key()), s))?;
        Ok(())
    }

    /// The paths the detector added, in all four families: the daemon's
    /// local paths (no neighbor), which only the API adds (its
    /// configuration file originates none). gobgpd 3.10 lists them without
    /// the UUID AddPath returned.
    pub async fn list(&mut self) -> Result<Listed, GobgpError> {
        let mut out = Listed::default();
        for family in families() {
            let req =
                ListPathRequest { table_type: TableType::Global as i32, family: Some(family), ..Default::default() };
            let mut stream = self.api.list_path(req).await.map_err(|s| self.error("list paths", s))?.into_inner();
            while let Some(rsp) = stream.message().await.map_err(|s| self.error("list paths", s))? {
                for path in rsp.destination.into_iter().flat_map(|d| d.paths) {
                    if !is_local(&path.neighbor_ip) || path.is_from_external {
                        continue;
                    }
                    match from_path(&path) {
                        Ok(a) => out.announcements.push(a),
                        Err(e) => out.unreadable.push(e),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Each configured neighbor and the state of its session.
    pub async fn peers(&mut self) -> Result<Vec<Peer>, GobgpError> {
        let mut stream =
            self.api.list_peer(ListPeerRequest::default()).await.map_err(|s| self.error("list peers", s))?.into_inner();
        let mut out = Vec::new();
        while let Some(rsp) = stream.message().await.map_err(|s| self.error("list peers", s))? {
            let Some(peer) = rsp.peer else { continue };
            let conf = peer.conf.unwrap_or_default();
            let state = peer.state.unwrap_or_default();
            let Ok(address) = conf.neighbor_address.parse() else { continue };
            let s = match ApiSessionState::try_from(state.session_state).unwrap_or(ApiSessionState::Unknown) {
                ApiSessionState::Unknown => SessionState::Unknown,
                ApiSessionState::Idle => SessionState::Idle,
                ApiSessionState::Connect => SessionState::Connect,
                ApiSessionState::Active => SessionState::Active,
                ApiSessionState::Opensent => SessionState::OpenSent,
                ApiSessionState::Openconfirm => SessionState::OpenConfirm,
                ApiSessionState::Established => SessionState::Established,
            };
            out.push(Peer { address, remote_as: conf.peer_asn, description: conf.description, state: s });
        }
        out.sort_by_key(|p| p.address);
        Ok(out)
    }

    /// Sends `changes` in order; stops at the first that fails (the next
    /// reconciliation computes the rest again).
    pub async fn apply(&mut self, changes: &[Change]) -> Result<(), GobgpError> {
        for c in changes {
            match c {
                Change::Announce(a) => self.add(a).await?,
                Change::Withdraw(a) => self.delete(a).await?,
            }
            tracing::info!(target: "detector::bgp", "{c}");
        }
        Ok(())
    }

    /// One reconciliation: lists what the daemon holds, asks the planner
    /// what to change at `now_ms`, sends it.
    pub async fn sync(&mut self, planner: &mut Planner, desired: &Desired, now_ms: u64) -> Result<Step, GobgpError> {
        let listed = if planner.dry_run() { Listed::default() } else { self.list().await? };
        for u in &listed.unreadable {
            tracing::warn!(target: "detector::bgp", "a path in gobgpd that the detector cannot read, left alone: {u}");
        }
        let step = planner.step(desired, &listed.announcements, now_ms);
        self.apply(&step.apply).await?;
        Ok(step)
    }
}
