//! Installing what the build and the tests need, idempotently, saying what
//! is being done. Nothing here runs when everything is already in place.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// bpf-linker release that builds against nightly's own LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

pub fn is_root() -> bool {
    // The effective uid, from /proc: no libc needed.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
}

/// Nightly with rust-src, and a bpf-linker that runs against nightly's LLVM.
pub fn toolchain() -> Result<()> {
    if which("rustup").is_none() {
        bail!("rustup is required (https://rustup.rs): the eBPF programs build with a nightly toolchain");
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("xtask: installing the nightly toolchain (the eBPF programs need it)");
        run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))?;
    }
    let sysroot =
        PathBuf::from(output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file() {
        println!("xtask: adding rust-src to nightly (to build core for the BPF target)");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    bpf_linker(&sysroot)
}

/// Builds bpf-linker against the libLLVM that ships with nightly, so no
/// LLVM package is needed. The library lives in a prefix under CARGO_HOME
/// that outlives the build (bpf-linker's runpath points there), with a stamp
/// naming the nightly it was built for: a new nightly means a rebuild.
fn bpf_linker(sysroot: &Path) -> Result<()> {
    let vv = output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` names no LLVM version")?
        .to_string();
    let prefix = cargo_home().join("detector-llvm");
    let stamp_path = prefix.join("stamp");
    let stamp = format!("{BPF_LINKER_VERSION}\n{vv}");

    let linker = cargo_home().join("bin/bpf-linker");
    let works = Command::new(if linker.is_file() { linker.as_os_str() } else { "bpf-linker".as_ref() })
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    if works && fs::read_to_string(&stamp_path).is_err() && which("bpf-linker").is_some() {
        // A bpf-linker installed by other means that runs: keep it.
        return Ok(());
    }

    let lib_dir = sysroot.join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            // libLLVM.so.<ver>-rust-...: the real library. The
            // libLLVM-<major>-rust-...so beside it is a linker script.
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}: is the nightly toolchain complete?", lib_dir.display()))?;
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    let soname = libllvm.file_name().expect("a file name").to_owned();
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    println!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (about a minute, once)"
    );
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .env("LLVM_PREFIX", &prefix))?;
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(())
}

/// What the kernel tests call: `ip` for the lab, `promtool` to check the
/// metrics text and the alert rules and the `prometheus` server that
/// scrapes a lab's controller (both in the Debian package `prometheus`),
/// Alertmanager (`prometheus-alertmanager` and `amtool`, in the Debian
/// package of that name), which takes the fleet lab's runbook alerts,
/// `hping3` for spoofed floods from a real tool, `iperf3` for legitimate
/// bulk TCP, `curl` for real clients of a TCP service, `nft`,
/// which SYN cookies need (the controller installs a SYNPROXY rule), and the
/// two BGP daemons of the BGP lab: GoBGP (`gobgpd` and its `gobgp` CLI), the
/// detector's speaker, and BIRD 2 (`bird`, `birdc`), the upstream router;
/// for the package test, `systemd-analyze` (which checks the unit) and
/// `strip` and `objdump` (which `cargo xtask deb` runs); `tshark`, which
/// reads the incidents' packet captures back; and aiosmtpd for
/// Debian's Python (`/usr/bin/python3`), the SMTP server the email channel
/// is tested against (`tests/smtp/server.py`).
pub fn test_tools() -> Result<()> {
    let mut missing = Vec::new();
    if which("ip").is_none() {
        missing.push("iproute2");
    }
    if which("promtool").is_none() || which("prometheus").is_none() {
        missing.push("prometheus");
    }
    if which("prometheus-alertmanager").is_none() || which("amtool").is_none() {
        missing.push("prometheus-alertmanager");
    }
    // In /usr/sbin, which a non-root PATH may lack; the lab looks there too.
    if which("hping3").is_none() && which_sbin("hping3").is_none() {
        missing.push("hping3");
    }
    if which("iperf3").is_none() {
        missing.push("iperf3");
    }
    if which("curl").is_none() {
        missing.push("curl");
    }
    // Decodes the incidents' packet captures (tests/capture.rs).
    if which("tshark").is_none() {
        missing.push("tshark");
    }
    if which("nft").is_none() && which_sbin("nft").is_none() {
        missing.push("nftables");
    }
    if which("systemd-analyze").is_none() {
        missing.push("systemd");
    }
    if which("strip").is_none() || which("objdump").is_none() {
        missing.push("binutils");
    }
    for (tools, package) in [(["gobgpd", "gobgp"], "gobgpd"), (["bird", "birdc"], "bird2")] {
        if tools.iter().any(|t| which(t).is_none() && which_sbin(t).is_none()) {
            missing.push(package);
        }
    }
    // A Python module, not a command: Debian's interpreter must import it
    // (a python3 earlier in PATH, such as pyenv's, does not see it).
    let aiosmtpd = Command::new("/usr/bin/python3").args(["-c", "import aiosmtpd"]).output();
    if !aiosmtpd.is_ok_and(|o| o.status.success()) {
        missing.push("python3-aiosmtpd");
    }
    let new_daemons: Vec<&str> = ["gobgpd", "bird2", "prometheus", "prometheus-alertmanager"]
        .into_iter()
        .filter(|p| missing.contains(p))
        .collect();
    apt_install(&missing, "the tests")?;
    // The packages enable and start their services with the stock
    // configuration (bird2's `bird`, gobgpd's `gobgpd`, prometheus's
    // `prometheus`, prometheus-alertmanager's `prometheus-alertmanager`,
    // which listens on 9093 and 9094 for its cluster); the tests run their
    // own instances in lab namespaces only.
    for service in new_daemons.iter().map(|p| if *p == "bird2" { "bird" } else { p }) {
        disable_service(service)?;
    }
    Ok(())
}

/// Stops and disables a service a package just enabled, where systemd runs.
fn disable_service(service: &str) -> Result<()> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Ok(());
    }
    println!("xtask: disabling the {service} service the package started (the detector and the tests run their own)");
    run(Command::new("systemctl").args(["disable", "--now", service]))
}

/// What `detector run` calls: `nft`, for the SYNPROXY rule that SYN cookies
/// need (the shipped SYN runbook turns them on), and `gobgpd` when the
/// configuration file among `args` (`--config FILE`) has a `bgp:` section
/// (a line starting `bgp:`; the detector itself checks the rest). Missing
/// and not installable here (not root, no apt-get), the run still starts:
/// a SYN-cookie rule would then be refused, and a `bgp:` section refused at
/// start, each saying why.
pub fn run_tools(args: &[String]) {
    if which("nft").is_none() && which_sbin("nft").is_none() {
        if let Err(e) = apt_install(&["nftables"], "SYN cookies (`detector run`)") {
            eprintln!("xtask: {e}");
        }
    }
    if config_has_bgp(args) && which("gobgpd").is_none() && which_sbin("gobgpd").is_none() {
        let installed = apt_install(&["gobgpd"], "upstream mitigation over BGP (`bgp:` in the configuration)")
            // `detector run` starts its own gobgpd; the package's service
            // would hold the BGP port.
            .and_then(|()| disable_service("gobgpd"));
        if let Err(e) = installed {
            eprintln!("xtask: {e}");
        }
    }
}

/// Whether the `--config` file among `detector run`'s arguments has a
/// top-level `bgp:` key.
fn config_has_bgp(args: &[String]) -> bool {
    let path = args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--config=") {
        Some(p) => Some(p.to_string()),
        None if a == "--config" => args.get(i + 1).cloned(),
        None => None,
    });
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return false;
    };
    text.lines().any(|l| l.starts_with("bgp:"))
}

/// What the bench needs: `ip` for the lab, and for the firewall comparison
/// the droppers XDP is measured against (`iptables`, `nft`) and `ethtool`,
/// which turns GRO on so the target's veth runs NAPI without XDP; for the
/// side-by-side with FastNetMon Community, `fastnetmon` itself, `hping3`
/// for the floods and `perf`, which samples both detectors' CPU time in the
/// kernel the same way; for upstream mitigation over BGP, GoBGP (`gobgpd`, the
/// detector's speaker) and BIRD 2 (`bird`, `birdc`, the upstream router).
pub fn bench_tools() -> Result<()> {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("nft", "nftables"),
        ("ethtool", "ethtool"),
        ("hping3", "hping3"),
        ("fastnetmon", "fastnetmon"),
        ("perf", "linux-perf"),
        ("gobgpd", "gobgpd"),
        ("bird", "bird2"),
        ("birdc", "bird2"),
    ] {
        if which(tool).is_none() && which_sbin(tool).is_none() && !missing.contains(&package) {
            missing.push(package);
        }
    }
    let new_fastnetmon = missing.contains(&"fastnetmon");
    let new_daemons: Vec<&str> = ["gobgpd", "bird2"].into_iter().filter(|p| missing.contains(p)).collect();
    apt_install(&missing, "the bench")?;
    // As for the tests: the bench runs its own instances in lab namespaces.
    for service in new_daemons.iter().map(|p| if *p == "bird2" { "bird" } else { "gobgpd" }) {
        disable_service(service)?;
    }
    if new_fastnetmon && Path::new("/run/systemd/system").is_dir() {
        // The package enables and starts its service with the stock
        // configuration; the bench runs its own instances in lab
        // namespaces only.
        println!("xtask: disabling the fastnetmon service the package started (the bench runs its own, in its labs)");
        run(Command::new("systemctl").args(["disable", "--now", "fastnetmon"]))?;
    }
    Ok(())
}

/// `which`, also looking in the sbin directories a non-root PATH may lack.
fn which_sbin(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin"].into_iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn apt_install(packages: &[&str], for_what: &str) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if which("apt-get").is_none() || !is_root() {
        bail!("{for_what} need the packages: {list}; install them (this host has no apt-get, or we are not root)");
    }
    println!("xtask: installing {list} for {for_what} (apt-get)");
    let install = |c: &mut Command| {
        c.args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install(&mut Command::new("apt-get")) {
        return Ok(());
    }
    println!("xtask: apt-get install failed; updating the package lists and trying again");
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    if !install(&mut Command::new("apt-get")) {
        bail!("apt-get could not install {list}");
    }
    Ok(())
}
