//! BIRD 2 as the upstream router of a BGP lab: started in a namespace with
//! a configuration, a control socket and a pid file of its own (in the
//! lab's scratch directory), queried with `birdc`, stopped with its handle.
//!
//! [`provider_config`] is what a provider would run for a customer that
//! announces mitigation routes: FlowSpec rules into the tables `flowspec4` and `flowspec6` (`flow4` and
//! `flow6` are keywords)
//! (not validated against unicast routes: the customer announces none),
//! and RTBH per RFC 7999: a customer host route tagged BLACKHOLE
//! (65535:666) becomes a blackhole route, exported to the kernel, where it
//! drops the traffic; anything else from the customer is refused.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use thiserror::Error;

use super::{
    find_program,
    process::{Background, ProcessError, Supervision},
};

#[derive(Debug, Error)]
pub enum BirdError {
    #[error("BIRD 2 is not installed: no `{0}` (`cargo xtask test` installs it: Debian package bird2)")]
    NotInstalled(&'static str),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("BIRD did not answer on {socket} within {after:?}; its output:\n{output}")]
    NotReady { socket: PathBuf, after: Duration, output: String },
    #[error("`birdc {args}` failed: {output}")]
    Birdc { args: String, output: String },
}

/// The upstream side of a session, for [`provider_config`].
#[derive(Clone, Debug)]
pub struct Upstream<'a> {
    pub router_id: &'a str,
    pub local_address: &'a str,
    pub local_as: u32,
    /// The customer's (the detector's speaker) address and AS.
    pub neighbor: &'a str,
    pub neighbor_as: u32,
}

/// BIRD's configuration for `u` (see the [module](self)). The timers are
/// short so that a test sees a session come back within seconds: the first
/// connection after a second, a retry every two, a restart one to two
/// seconds after an error.
pub fn provider_config(u: &Upstream) -> String {
    format!(
        r#"# The upstream of a detector BGP lab.
router id {router_id};
log stderr all;

protocol device {{ scan time 1; }}

flow4 table flowspec4;
flow6 table flowspec6;

# Blackhole routes into the kernel: the drop happens there.
protocol kernel kernel4 {{
  ipv4 {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }};
}}
protocol kernel kernel6 {{
  ipv6 {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }};
}}

# RFC 7999: a customer host route with BLACKHOLE is blackholed; nothing
# else is taken from the customer.
filter customer_rtbh4 {{
  if net.len = 32 && (65535, 666) ~ bgp_community then {{
    dest = RTD_BLACKHOLE;
    accept;
  }}
  reject;
}}
filter customer_rtbh6 {{
  if net.len = 128 && (65535, 666) ~ bgp_community then {{
    dest = RTD_BLACKHOLE;
    accept;
  }}
  reject;
}}

protocol bgp detector {{
  local {local_address} as {local_as};
  neighbor {neighbor} as {neighbor_as};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 2;
  ipv4 {{ import filter customer_rtbh4; export none; }};
  ipv6 {{ import filter customer_rtbh6; export none; }};
  flow4 {{ table flowspec4; import all; export none; }};
  flow6 {{ table flowspec6; import all; export none; }};
}}
"#,
        router_id = u.router_id,
        local_address = u.local_address,
        local_as = u.local_as,
        neighbor = u.neighbor,
        neighbor_as = u.neighbor_as,
    )
}

/// [`provider_config`] with a second session to the customer over IPv6
/// (protocol `detector6`, from `local_v6` to `neighbor_v6`), which takes
/// the customer's IPv6 host routes and IPv6 FlowSpec rules as the first
/// takes the IPv4 ones.
pub fn provider_config_with_v6(u: &Upstream, local_v6: &str, neighbor_v6: &str) -> String {
    format!(
        r#"{v4}
protocol bgp detector6 {{
  local {local_v6} as {local_as};
  neighbor {neighbor_v6} as {neighbor_as};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 2;
  ipv6 {{ import filter customer_rtbh6; export none; }};
  flow6 {{ table flowspec6; import all; export none; }};
}}
"#,
        v4 = provider_config(u),
        local_as = u.local_as,
        neighbor_as = u.neighbor_as,
    )
}

/// A running BIRD.
pub struct Bird {
    child: Background,
    socket: PathBuf,
    birdc: PathBuf,
}

impl Bird {
    /// How long BIRD has to open its control socket.
    pub const START_TIMEOUT: Duration = Duration::from_secs(10);

    /// Writes `config` to `dir/bird.conf` and runs BIRD in namespace `ns`
    /// (in the foreground, so the handle owns it), its control socket
    /// `dir/bird.ctl`; returns once `birdc` gets an answer.
    pub fn start(ns: &str, dir: &Path, config: &str) -> Result<Bird, BirdError> {
        let bird = find_program("bird").ok_or(BirdError::NotInstalled("bird"))?;
        let birdc = find_program("birdc").ok_or(BirdError::NotInstalled("birdc"))?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).map_err(|source| BirdError::Write { path: conf.clone(), source })?;
        let socket = dir.join("bird.ctl");
        let pid = dir.join("bird.pid");
        let args = [
            "-f".as_ref(),
            "-c".as_ref(),
            conf.as_os_str(),
            "-s".as_ref(),
            socket.as_os_str(),
            "-P".as_ref(),
            pid.as_os_str(),
        ];
        let child = Background::spawn_in(ns, &bird, &args, Supervision { die_with_parent: true, cancel: None })?;
        let mut b = Bird { child, socket, birdc };
        let started = Instant::now();
        loop {
            if b.socket.exists() && b.birdc(&["show", "status"]).is_ok() {
                return Ok(b);
            }
            if let Some(out) = b.child.try_finish()? {
                let output =
                    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                return Err(BirdError::NotReady { socket: b.socket, after: started.elapsed(), output });
            }
            if started.elapsed() > Self::START_TIMEOUT {
                return Err(BirdError::NotReady {
                    socket: b.socket.clone(),
                    after: Self::START_TIMEOUT,
                    output: "(still running)".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `birdc -s <socket> ARGS`: its answer. (The control socket is a
    /// file: no namespace needed.)
    pub fn birdc(&self, args: &[&str]) -> Result<String, BirdError> {
        let out = Command::new(&self.birdc)
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| BirdError::Birdc { args: args.join(" "), output: e.to_string() })?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(BirdError::Birdc { args: args.join(" "), output: text });
        }
        Ok(text)
    }

    /// The state of protocol `name` from `show protocols` (`Established`,
    /// `Active`, `Connect`, ...), if it is listed.
    pub fn bgp_state(&self, name: &str) -> Result<Option<String>, BirdError> {
        let out = self.birdc(&["show", "protocols", name])?;
        // "detector   BGP   ---   up   12:00:00.000  Established"
        Ok(out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string))
    }
}
