//! The service kit, as an administrator gets it: `cargo xtask deb` builds
//! the Debian package (from the `detector` these tests built, through its
//! `--binary` flag: a release build would take minutes), dpkg installs it
//! into a scratch root with a database of its own (the host is never
//! touched), the installed binary runs and validates the installed
//! runbooks, the installed unit passes `systemd-analyze verify`, and
//! removing and purging the package leave and then take the conffiles.
//! `cargo xtask install --root` lays out the same files and keeps the
//! administrator's.
//!
//! Needs root (dpkg), `dpkg-deb` and `systemd-analyze` (`cargo xtask test`
//! installs the `systemd` package for it); without them the tests skip
//! with a message, except under `CI=true`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const BIN: &str = env!("CARGO_BIN_EXE_detector");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the detector crate is in the workspace").to_path_buf()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// False (after saying so) when `what` is missing and we may skip.
fn have(test: &str, ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    let msg = format!("{test}: needs {what}");
    if ci() {
        panic!("{msg}; CI=true, so it may not be skipped");
    }
    eprintln!("SKIPPED {msg}");
    false
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(tool).is_file())
}

/// A scratch directory, removed on drop (a failing test too).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("detector-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd`; fails the test, with its output, unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask ARGS` (the xtask binary `cargo xtask test` already built).
fn xtask(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args))
}

/// The shipped runbooks' file names (`runbooks/*.yaml`, not `upstream/`).
fn shipped_runbooks() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(workspace().join("runbooks"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "the shipped runbooks: {names:?}");
    names
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// `dpkg` on the scratch root `root`, its database and log inside it. The
/// maintainer scripts run unchrooted (the scratch root has no shell) with
/// DPKG_ROOT set, which makes them leave the running system alone.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("dpkg.log").display()))
        .arg("--force-script-chrootless")
        .args(args))
}

/// `systemd-analyze verify` of the installed unit, pointed at the installed
/// binary (it checks that ExecStart's program exists); everything else as
/// installed. Warnings fail it too.
fn verify_unit(unit: &Path, binary: &Path, scratch: &Path) {
    let text = fs::read_to_string(unit).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/detector run "), "the unit's ExecStart:\n{text}");
    let dir = scratch.join("verify");
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("detector.service");
    fs::write(&copy, text.replace("ExecStart=/usr/bin/detector ", &format!("ExecStart={} ", binary.display())))
        .unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(said.trim().is_empty(), "systemd-analyze verify {}:\n{said}", unit.display());

    // The exposure score the README reports; a hardening line lost (the
    // capability bounding set, the system call filter) shows here.
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&copy).output().unwrap();
    let text = stdout(&out);
    match text.lines().find_map(|l| l.split("Overall exposure level for detector.service: ").nth(1)) {
        Some(rest) => {
            let score: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            eprintln!("systemd-analyze security: exposure {score}");
            assert!(score <= 3.0, "the unit's exposure rose to {score}:\n{text}");
        }
        // systemd before 250 has no --offline.
        None => eprintln!("systemd-analyze security --offline=true: {}", String::from_utf8_lossy(&out.stderr).trim()),
    }
}

#[test]
fn the_package_installs_runs_and_leaves() {
    let test = "the_package_installs_runs_and_leaves";
    if !have(test, is_root(), "root (dpkg)")
        || !have(test, on_path("dpkg-deb") && on_path("dpkg"), "dpkg and dpkg-deb (a Debian host)")
        || !have(test, on_path("systemd-analyze"), "systemd-analyze (Debian package systemd)")
    {
        return;
    }
    let scratch = Scratch::new("package");
    let out_dir = scratch.0.join("out");
    // Uncompressed: xz would spend a minute on a debug binary.
    let built = xtask(&["deb", "--binary", BIN, "--out", out_dir.to_str().unwrap(), "--compression", "none"]);
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture"))).trim().to_string();
    let deb = out_dir.join(format!("detector_{VERSION}_{arch}.deb"));
    assert!(deb.is_file(), "no {} after:\n{}", deb.display(), stdout(&built));
    assert_eq!(listing(&out_dir), [format!("detector_{VERSION}_{arch}.deb")], "the staged tree is left behind");

    let fields = stdout(&run(Command::new("dpkg-deb").arg("--field").arg(&deb)));
    for want in
        ["Package: detector", &format!("Version: {VERSION}"), "Depends: libc6 (>= 2.", "Recommends: nftables, gobgpd"]
    {
        assert!(fields.contains(want), "control lacks {want:?}:\n{fields}");
    }

    // A scratch root with an empty dpkg database. The package's libraries
    // are the host's, which this database does not list.
    let root = scratch.0.join("root");
    fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&root, &["--force-depends", "--install", deb.to_str().unwrap()]);
    let status = stdout(&run(Command::new("dpkg-query").arg(format!("--root={}", root.display())).args([
        "--show",
        "--showformat=${Status} ${Version}",
        "detector",
    ])));
    assert_eq!(status, format!("install ok installed {VERSION}"));

    // Where everything is.
    let at = |p: &str| root.join(p);
    assert_eq!(mode(&at("usr/bin/detector")), 0o755);
    assert_eq!(mode(&at("lib/systemd/system/detector.service")), 0o644);
    assert_eq!(mode(&at("etc/detector/detector.yaml")), 0o644);
    assert_eq!(mode(&at("etc/detector/detector.env")), 0o600, "detector.env holds secrets");
    assert_eq!(listing(&at("etc/detector/runbooks")), shipped_runbooks(), "upstream/ needs bgp: first");
    assert!(at("usr/share/doc/detector/runbooks/upstream/upstream-rtbh.yaml").is_file());
    assert!(at("usr/share/doc/detector/copyright").is_file());
    let conffiles = stdout(&run(Command::new("dpkg-query").arg(format!("--root={}", root.display())).args([
        "--show",
        "--showformat=${Conffiles}",
        "detector",
    ])));
    let mut listed: Vec<&str> = conffiles.lines().filter_map(|l| l.split_whitespace().next()).collect();
    listed.sort();
    let mut want = vec!["/etc/detector/detector.env".to_string(), "/etc/detector/detector.yaml".to_string()];
    want.extend(shipped_runbooks().iter().map(|n| format!("/etc/detector/runbooks/{n}")));
    want.sort();
    assert_eq!(listed, want, "the conffiles");

    // The installed binary runs, and passes what it installed.
    let installed = at("usr/bin/detector");
    let version = stdout(&run(Command::new(&installed).arg("--version")));
    assert_eq!(version.trim(), format!("detector {VERSION}"));
    let validated = run(Command::new(&installed).args(["runbooks", "validate"]).arg(at("etc/detector/runbooks")));
    assert_eq!(stdout(&validated).lines().filter(|l| l.starts_with("ok ")).count(), shipped_runbooks().len());

    verify_unit(&at("lib/systemd/system/detector.service"), &installed, &scratch.0);

    // Removed: the program goes, the administrator's files stay; purged:
    // they go too.
    let config = at("etc/detector/detector.yaml");
    fs::write(&config, format!("{}# edited\n", fs::read_to_string(&config).unwrap())).unwrap();
    dpkg(&root, &["--remove", "detector"]);
    assert!(!installed.exists() && !at("lib/systemd/system/detector.service").exists());
    assert!(fs::read_to_string(&config).unwrap().ends_with("# edited\n"), "remove kept the edited config");
    assert!(at("etc/detector/detector.env").is_file() && at("etc/detector/runbooks").is_dir());
    dpkg(&root, &["--purge", "detector"]);
    assert!(!at("etc/detector").exists(), "purge left {:?}", listing(&at("etc/detector")));
    assert!(!at("usr/share/doc/detector").exists());
}

#[test]
fn install_lays_out_the_files_and_keeps_the_administrators() {
    let scratch = Scratch::new("install");
    let dest = scratch.0.join("dest");
    let dest_str = dest.to_str().unwrap();
    xtask(&["install", "--root", dest_str, "--binary", BIN]);
    let at = |p: &str| dest.join(p);
    assert_eq!(mode(&at("usr/bin/detector")), 0o755);
    assert_eq!(mode(&at("etc/detector/detector.env")), 0o600);
    assert_eq!(listing(&at("etc/detector/runbooks")), shipped_runbooks());
    let example = fs::read_to_string(workspace().join("detector.example.yaml")).unwrap();
    assert_eq!(fs::read_to_string(at("etc/detector/detector.yaml")).unwrap(), example);

    // The administrator's edits survive a second install; what they
    // deleted comes back.
    let config = at("etc/detector/detector.yaml");
    let runbook = at("etc/detector/runbooks").join(&shipped_runbooks()[0]);
    let env = at("etc/detector/detector.env");
    fs::write(&config, "detection: {}\n").unwrap();
    fs::write(&runbook, "# mine\n").unwrap();
    fs::write(&env, "DETECTOR_OPTS=\"--iface eth9\"\n").unwrap();
    let deleted = at("etc/detector/runbooks").join(&shipped_runbooks()[1]);
    fs::remove_file(&deleted).unwrap();
    let second = stdout(&xtask(&["install", "--root", dest_str, "--binary", BIN]));
    assert_eq!(fs::read_to_string(&config).unwrap(), "detection: {}\n");
    assert_eq!(fs::read_to_string(&runbook).unwrap(), "# mine\n");
    assert_eq!(fs::read_to_string(&env).unwrap(), "DETECTOR_OPTS=\"--iface eth9\"\n");
    assert!(deleted.is_file());
    assert!(second.contains(&format!("kept {}", config.display())), "{second}");

    // Another prefix: the binary, the unit and the docs move, the unit runs
    // that binary; the configuration stays in /etc.
    let local = scratch.0.join("local");
    xtask(&["install", "--prefix", "/usr/local", "--root", local.to_str().unwrap(), "--binary", BIN]);
    let unit = fs::read_to_string(local.join("usr/local/lib/systemd/system/detector.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/local/bin/detector run --config /etc/detector/detector.yaml "), "{unit}");
    assert!(local.join("usr/local/bin/detector").is_file());
    assert!(local.join("usr/local/share/doc/detector/runbooks/upstream").is_dir());
    assert!(local.join("etc/detector/detector.yaml").is_file());
}
