//! gobgpd's configuration file (TOML), written from the `bgp:` section:
//! the global AS, router id and listen port, and each neighbor with its
//! address families. Nothing is announced from it: every path comes over
//! the API. Pure.

use std::fmt::Write as _;

use crate::bgp::config::BgpConfig;

/// The file's text. `cfg` is checked ([`BgpConfig::check`]): descriptions
/// hold no quote or backslash, so they need no escaping.
pub fn config_toml(cfg: &BgpConfig) -> String {
    let mut t = String::new();
    // A String's fmt::Write never fails.
    let _ = write_toml(&mut t, cfg);
    t
}

fn write_toml(t: &mut String, cfg: &BgpConfig) -> std::fmt::Result {
    writeln!(t, "# Written by the detector from its configuration's `bgp:` section; rewritten at each start.")?;
    writeln!(t, "[global.config]")?;
    writeln!(t, "  as = {}", cfg.local_as)?;
    writeln!(t, "  router-id = \"{}\"", cfg.router_id)?;
    // -1: gobgpd accepts no session, only connects out.
    let port = if cfg.gobgpd.listen_port == 0 { -1 } else { cfg.gobgpd.listen_port as i32 };
    writeln!(t, "  port = {port}")?;
    for n in &cfg.neighbors {
        writeln!(t)?;
        writeln!(t, "[[neighbors]]")?;
        writeln!(t, "  [neighbors.config]")?;
        writeln!(t, "    neighbor-address = \"{}\"", n.address)?;
        writeln!(t, "    peer-as = {}", n.remote_as)?;
        if let Some(d) = &n.description {
            writeln!(t, "    description = \"{d}\"")?;
        }
        writeln!(t, "  [neighbors.timers.config]")?;
        writeln!(t, "    connect-retry = {}", n.connect_retry.as_secs().max(1))?;
        for f in &n.families {
            writeln!(t, "  [[neighbors.afi-safis]]")?;
            writeln!(t, "    [neighbors.afi-safis.config]")?;
            writeln!(t, "      afi-safi-name = \"{}\"", f.gobgp_name())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    #[test]
    fn global_and_neighbors() {
        let text = "\
bgp:
  local_as: 64512
  router_id: 192.0.2.1
  neighbors:
    - { address: 192.0.2.2, remote_as: 65000, description: transit A, families: [ipv4_unicast, ipv4_flowspec] }
    - { address: '2001:db8::2', remote_as: 65001, connect_retry: 2s }
  gobgpd: { listen_port: 0 }
";
        let cfg = ConfigFile::parse("t.yaml", text).unwrap().bgp.unwrap();
        let toml = config_toml(&cfg);
        let expected = "\
# Written by the detector from its configuration's `bgp:` section; rewritten at each start.
[global.config]
  as = 64512
  router-id = \"192.0.2.1\"
  port = -1

[[neighbors]]
  [neighbors.config]
    neighbor-address = \"192.0.2.2\"
    peer-as = 65000
    description = \"transit A\"
  [neighbors.timers.config]
    connect-retry = 10
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = \"ipv4-unicast\"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = \"ipv4-flowspec\"

[[neighbors]]
  [neighbors.config]
    neighbor-address = \"2001:db8::2\"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 2
";
        assert!(toml.starts_with(expected), "{toml}");
        assert_eq!(toml.matches("afi-safi-name").count(), 6);
        assert!(toml.ends_with("      afi-safi-name = \"ipv6-flowspec\"\n"), "{toml}");
    }
}
