//! `cargo xtask install` and `cargo xtask deb`: the files of an installed
//! detector, laid out in one place ([`stage`]), either onto this host (or a
//! `--root` DESTDIR), or into a staged tree that `dpkg-deb --build` packs
//! with its `DEBIAN/` control files.
//!
//! | file | from |
//! |---|---|
//! | `<prefix>/bin/detector` | the release build (debug info stripped, symbols kept for backtraces) |
//! | `/lib/systemd/system/detector.service` (`<prefix>/lib/systemd/system/` for another prefix) | `deploy/systemd/detector.service` |
//! | `/etc/detector/detector.yaml` | `detector.example.yaml` |
//! | `/etc/detector/detector.env` (0600) | `deploy/systemd/detector.env` |
//! | `/etc/detector/runbooks/*.yaml` | `runbooks/*.yaml` |
//! | `<prefix>/share/doc/detector/` | the README, the example config, `runbooks/README.md` and `runbooks/upstream/` (their `bgp` steps need a `bgp:` section first) |
//!
//! What is under `/etc` is the administrator's: `install` never overwrites
//! a file there (it says which it kept), and the package lists them as
//! conffiles, so dpkg asks before replacing an edited one.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::setup;

/// The package's version: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const ETC: &str = "/etc/detector";
const UNIT: &str = "detector.service";
/// What the unit in `deploy/systemd/` runs; rewritten for another prefix.
const UNIT_EXEC: &str = "ExecStart=/usr/bin/detector ";
const DESCRIPTION: &str = "DDoS detector and mitigator in XDP
 An XDP program counts every packet of an interface per traffic class at
 line rate; a controller learns normal traffic, opens incidents for UDP,
 SYN, ACK, ICMP, DNS, amplification, HTTP and fragment floods within a few
 hundred milliseconds, and mitigates them in the same XDP program (drop
 and rate-limit rules, SYN cookies) or upstream over BGP (RTBH, FlowSpec),
 as YAML runbooks say. Prometheus metrics, a JSON API, a local history.
 .
 The service is installed but neither enabled nor started: name the
 interfaces in /etc/detector/detector.env, then
 `systemctl enable --now detector`.";

/// Where an installation puts things, for a prefix (`/usr` by default).
pub struct Layout {
    prefix: PathBuf,
}

impl Layout {
    pub fn new(prefix: &Path) -> Result<Layout> {
        ensure!(prefix.is_absolute(), "--prefix must be an absolute path, not {}", prefix.display());
        Ok(Layout { prefix: prefix.to_path_buf() })
    }

    pub fn binary(&self) -> PathBuf {
        self.prefix.join("bin/detector")
    }

    /// `/lib/systemd/system` for `/usr` (Debian's place for packaged
    /// units), `<prefix>/lib/systemd/system` otherwise (systemd also reads
    /// `/usr/local/lib/systemd/system`).
    pub fn unit(&self) -> PathBuf {
        let dir = if self.prefix == Path::new("/usr") {
            PathBuf::from("/lib/systemd/system")
        } else {
            self.prefix.join("lib/systemd/system")
        };
        dir.join(UNIT)
    }

    pub fn doc(&self) -> PathBuf {
        self.prefix.join("share/doc/detector")
    }
}

/// What became of one file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// A file under /etc already as shipped.
    Same,
    /// An administrator's file under /etc, left as it was.
    Kept,
}

/// One installed file: its path on the installed system (not under the
/// DESTDIR), and what happened to it.
struct Installed {
    path: PathBuf,
    outcome: Outcome,
    conffile: bool,
}

/// Writes the whole layout under `destdir` (`/` for this host). `binary`
/// is the `detector` to install.
fn stage(ws: &Path, binary: &Path, destdir: &Path, layout: &Layout) -> Result<Vec<Installed>> {
    let mut done = Vec::new();
    let under = |p: &Path| destdir.join(p.strip_prefix("/").expect("installed paths are absolute"));

    let bin = layout.binary();
    place_binary(binary, &under(&bin))?;
    done.push(Installed { path: bin, outcome: Outcome::Written, conffile: false });

    let unit_text = read(&ws.join("deploy/systemd").join(UNIT))?;
    ensure!(unit_text.contains(UNIT_EXEC), "deploy/systemd/{UNIT} no longer runs /usr/bin/detector");
    let unit_text = unit_text.replace(UNIT_EXEC, &format!("ExecStart={} ", layout.binary().display()));
    done.push(program_file(&under(&layout.unit()), &unit_text, layout.unit())?);

    let etc = Path::new(ETC);
    let config = [
        ("detector.yaml", ws.join("detector.example.yaml"), 0o644),
        // Its secrets are root's alone.
        ("detector.env", ws.join("deploy/systemd/detector.env"), 0o600),
    ];
    for (name, src, mode) in config {
        done.push(config_file(&under(&etc.join(name)), &read(&src)?, mode, etc.join(name))?);
    }
    for src in yaml_files(&ws.join("runbooks"))? {
        let path = etc.join("runbooks").join(src.file_name().expect("a file"));
        done.push(config_file(&under(&path), &read(&src)?, 0o644, path)?);
    }

    let doc = layout.doc();
    let mut docs = vec![
        (doc.join("README.md"), ws.join("README.md")),
        (doc.join("detector.example.yaml"), ws.join("detector.example.yaml")),
        (doc.join("runbooks/README.md"), ws.join("runbooks/README.md")),
    ];
    let upstream = ws.join("runbooks/upstream");
    for entry in fs::read_dir(&upstream).with_context(|| format!("reading {}", upstream.display()))? {
        let src = entry?.path();
        if src.is_file() {
            docs.push((doc.join("runbooks/upstream").join(src.file_name().expect("a file")), src));
        }
    }
    for (path, src) in docs {
        done.push(program_file(&under(&path), &read(&src)?, path)?);
    }
    done.push(program_file(&under(&doc.join("copyright")), &copyright(), doc.join("copyright"))?);
    Ok(done)
}

/// `*.yaml` and `*.yml` directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    out.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    out.sort();
    ensure!(!out.is_empty(), "no runbooks in {}", dir.display());
    Ok(out)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` at `dest` (mode 0644), replacing what is there.
fn program_file(dest: &Path, text: &str, path: PathBuf) -> Result<Installed> {
    write_atomically(dest, text.as_bytes(), 0o644)?;
    Ok(Installed { path, outcome: Outcome::Written, conffile: false })
}

/// Writes `text` at `dest` unless a file is there already.
fn config_file(dest: &Path, text: &str, mode: u32, path: PathBuf) -> Result<Installed> {
    let outcome = if fs::read(dest).is_ok_and(|b| b == text.as_bytes()) {
        Outcome::Same
    } else if fs::symlink_metadata(dest).is_ok() {
        Outcome::Kept
    } else {
        write_atomically(dest, text.as_bytes(), mode)?;
        Outcome::Written
    };
    Ok(Installed { path, outcome, conffile: true })
}

/// The binary without its debug info (a debug build's is most of its
/// size; the symbols stay, for backtraces), replaced atomically: a running
/// `detector` keeps its old file.
fn place_binary(src: &Path, dest: &Path) -> Result<()> {
    ensure!(src.is_file(), "{} is not a file", src.display());
    let tmp = temporary(dest)?;
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(src)
        .status()
        .context("running strip (Debian package binutils)")?;
    ensure!(status.success(), "strip --strip-debug {} failed ({status})", src.display());
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))
}

/// Writes through a temporary file in the same directory, then renames.
fn write_atomically(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = temporary(dest)?;
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))
}

/// A temporary name beside `dest`, its directory created.
fn temporary(dest: &Path) -> Result<PathBuf> {
    let dir = dest.parent().expect("installed paths have a directory");
    create_dirs(dir)?;
    let name = dest.file_name().expect("a file name").to_string_lossy();
    Ok(dir.join(format!(".{name}.xtask-new")))
}

/// Creates `dir` and its missing parents 0755, whatever the umask (the
/// package's directories are these); existing ones are left as they are.
fn create_dirs(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {}", dir.display()))
}

fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: detector\n\
         Source: {}\n\n\
         Files: *\n\
         Copyright: the detector contributors\n\
         License: MIT or Apache-2.0\n",
        repository()
    )
}

fn repository() -> &'static str {
    "https://github.com/detector-ddos/detector"
}

/// The binary to install: `given`, or a fresh release build.
fn binary(ws: &Path, given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(b) => {
            ensure!(b.is_file(), "--binary {}: no such file", b.display());
            Ok(b)
        }
        None => {
            setup::toolchain()?;
            crate::build_release(ws)?;
            Ok(ws.join("target/release/detector"))
        }
    }
}

pub struct InstallOptions {
    pub prefix: PathBuf,
    /// DESTDIR: `/` installs on this host.
    pub root: PathBuf,
    pub binary: Option<PathBuf>,
}

/// `cargo xtask install`.
pub fn install(ws: &Path, o: InstallOptions) -> Result<()> {
    let layout = Layout::new(&o.prefix)?;
    let on_host = o.root == Path::new("/");
    if on_host && !setup::is_root() {
        bail!("installing into / needs root (or pass --root DIR to stage the files in DIR)");
    }
    need_tool("strip", "binutils")?;
    let binary = binary(ws, o.binary)?;
    let done = stage(ws, &binary, &o.root, &layout)?;
    let shown = |p: &Path| o.root.join(p.strip_prefix("/").expect("absolute")).display().to_string();
    for f in &done {
        match f.outcome {
            Outcome::Written => println!("xtask: installed {}", shown(&f.path)),
            Outcome::Same => println!("xtask: {} is up to date", shown(&f.path)),
            Outcome::Kept => println!("xtask: kept {}: it is yours (the shipped one: {})", shown(&f.path), shipped(f)),
        }
    }
    if on_host && Path::new("/run/systemd/system").is_dir() {
        let reload = Command::new("systemctl").arg("daemon-reload").status().context("running systemctl")?;
        ensure!(reload.success(), "systemctl daemon-reload failed ({reload})");
    }
    println!(
        "xtask: next: name the interfaces in {}{ETC}/detector.env (DETECTOR_OPTS=\"--iface eth0\"), then \
         `systemctl enable --now detector`",
        if on_host { String::new() } else { o.root.display().to_string() }
    );
    Ok(())
}

/// Where the shipped version of a kept file under /etc is, in the
/// repository.
fn shipped(f: &Installed) -> String {
    let name = f.path.file_name().expect("a file").to_string_lossy();
    match name.as_ref() {
        "detector.yaml" => "detector.example.yaml".into(),
        "detector.env" => "deploy/systemd/detector.env".into(),
        _ => format!("runbooks/{name}"),
    }
}

pub struct DebOptions {
    /// Package this binary instead of a release build (the tests package
    /// the one they built).
    pub binary: Option<PathBuf>,
    /// Where the .deb goes (default `target/debian/`).
    pub out_dir: Option<PathBuf>,
    /// dpkg-deb's `-Z`: xz (Debian's default), gzip, zstd or none.
    pub compression: String,
}

/// `cargo xtask deb`: `detector_<version>_<arch>.deb`. Returns its path.
pub fn deb(ws: &Path, o: DebOptions) -> Result<PathBuf> {
    need_tool("dpkg-deb", "dpkg")?;
    need_tool("strip", "binutils")?;
    need_tool("objdump", "binutils")?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();
    let binary = binary(ws, o.binary)?;
    let out_dir = o.out_dir.unwrap_or_else(|| ws.join("target/debian"));
    let name = format!("detector_{VERSION}_{arch}");
    let tree = out_dir.join(&name);
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let built = (|| {
        let done = stage(ws, &binary, &tree, &Layout::new(Path::new("/usr"))?)?;
        control_files(&tree, &done, &arch, &binary)?;
        let deb = out_dir.join(format!("{name}.deb"));
        let status = Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .arg(format!("-Z{}", o.compression))
            .arg("--build")
            .arg(&tree)
            .arg(&deb)
            .status()
            .context("running dpkg-deb")?;
        ensure!(status.success(), "dpkg-deb --build {} failed ({status})", tree.display());
        Ok(deb)
    })();
    let _ = fs::remove_dir_all(&tree);
    let deb = built?;
    println!("xtask: built {}", deb.display());
    Ok(deb)
}

/// `DEBIAN/`: control, conffiles and the maintainer scripts.
fn control_files(tree: &Path, done: &[Installed], arch: &str, binary: &Path) -> Result<()> {
    let debian = tree.join("DEBIAN");
    create_dirs(&debian)?;
    let maintainer = match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(mail)) => format!("{name} <{mail}>"),
        _ => format!("detector developers <{}/issues>", repository()),
    };
    let control = format!(
        "Package: detector\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {size}\n\
         Depends: {depends}, iproute2\n\
         Recommends: nftables, gobgpd\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: {repo}\n\
         Description: {DESCRIPTION}\n",
        size = installed_size_kib(tree)?,
        depends = library_depends(binary)?,
        repo = repository(),
    );
    write_atomically(&debian.join("control"), control.as_bytes(), 0o644)?;
    let conffiles: String = done.iter().filter(|f| f.conffile).map(|f| format!("{}\n", f.path.display())).collect();
    write_atomically(&debian.join("conffiles"), conffiles.as_bytes(), 0o644)?;
    for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write_atomically(&debian.join(name), script.as_bytes(), 0o755)?;
    }
    Ok(())
}

/// The libraries the binary links, as package dependencies: libc6 at the
/// newest glibc symbol version it uses, and libgcc-s1 for unwinding.
fn library_depends(binary: &Path) -> Result<String> {
    let dynamic = output(Command::new("objdump").arg("-T").arg(binary))?;
    let newest = dynamic
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| v.split('.').map(|n| n.parse::<u32>().ok()).collect::<Option<Vec<u32>>>())
        .max()
        .context("the binary uses no versioned glibc symbol: is it dynamically linked against glibc?")?;
    let newest = newest.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
    let mut depends = format!("libc6 (>= {newest})");
    if output(Command::new("objdump").arg("-p").arg(binary))?.contains("libgcc_s.so.1") {
        depends.push_str(", libgcc-s1");
    }
    Ok(depends)
}

/// The staged tree's size in KiB (dpkg's Installed-Size), DEBIAN/ aside.
fn installed_size_kib(tree: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                if e.file_name() != "DEBIAN" {
                    walk(&e.path(), total)?;
                }
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(tree, &mut total)?;
    Ok(total)
}

fn need_tool(tool: &str, package: &str) -> Result<()> {
    if setup::which(tool).is_none() {
        bail!("{tool} is missing: install the Debian package {package}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// The maintainer scripts. Like Debian's own daemons that need configuring
// first, the package neither enables nor starts the service: it cannot run
// before an interface is named in /etc/detector/detector.env, and putting
// an XDP program on a production interface is the administrator's call.
// Each script acts on the running system only when systemd runs it and
// dpkg installs into / (DPKG_ROOT empty: not a chroot being built).

/// Makes systemd read the new unit; after an upgrade, restarts a running
/// controller on the new binary (the rules in force and a gobgpd are kept
/// across the restart and adopted, as after any stop).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -n "$2" ]; then
        systemctl try-restart detector.service || true
    fi
fi
exit 0
"#;

/// Stops the service before its binary goes (a removed package would
/// leave systemd restarting a missing program). The configured
/// `mitigation.on_stop` decides whether the rules stay in force.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl stop detector.service || true
fi
exit 0
"#;

/// Makes systemd forget the removed unit; a purge also drops an
/// administrator's `systemctl enable` link. The history in
/// /var/lib/detector is kept, even on purge.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ] && [ -z "${DPKG_ROOT:-}" ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/detector.service
fi
if { [ "$1" = remove ] || [ "$1" = purge ]; } && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
"#;
