//! `cargo xtask`: the project's only entry points. Installs what the build
//! needs, builds, runs, tests and benchmarks. Product code never shells out
//! to cargo; this does.

mod fuzz;
mod install;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark the detector")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (nightly rust-src, bpf-linker), if missing.
    Setup,
    /// Build everything in release mode: target/release/detector, programs embedded.
    Build,
    /// Build in release mode and install the binary, the systemd unit, the
    /// configuration and the runbooks (files under /etc/detector that exist
    /// are kept). Enables nothing.
    Install {
        /// Where the binary (`PREFIX/bin`) and the documentation go.
        #[arg(long, value_name = "DIR", default_value = "/usr")]
        prefix: PathBuf,
        /// Stage the files under this directory (DESTDIR) instead of /.
        #[arg(long, value_name = "DESTDIR", default_value = "/")]
        root: PathBuf,
        /// Install this binary instead of building one.
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
    },
    /// Build the Debian package target/debian/detector_<version>_<arch>.deb:
    /// the layout of `install`, its /etc files as conffiles.
    Deb {
        /// Package this binary instead of a release build (the tests
        /// package the one they built).
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
        /// Where to write the package (default: target/debian).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// dpkg-deb's compression: xz, gzip, zstd or none.
        #[arg(long, value_name = "TYPE", default_value = "xz")]
        compression: String,
    },
    /// Build, then `detector run` with the arguments after `--` (as root).
    Run {
        /// Arguments for `detector run`, e.g. `-- --iface eth1`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the kernel tests (need root).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Measure the XDP program, the controller, and dropping a flood in
    /// iptables, nftables and XDP; writes BENCHMARKS.md.
    Bench {
        /// Shorter runs, for a quick look (figures are noisier).
        #[arg(long)]
        quick: bool,
        /// Print the results without writing BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
        /// Run only this part and print it (never written to BENCHMARKS.md,
        /// which holds the whole report): `rules`, `targets`, `live`, `reaction`, `firewall`,
        /// `syncookies`, `fastnetmon`, `fastnetmon-cpu` (its CPU runs alone) or `bgp`.
        #[arg(long, value_name = "PART")]
        only: Option<String>,
    },
    /// The whole product in one run (as root): a UDP flood in a lab,
    /// detected, rate-limited in XDP by a runbook, notified to a local
    /// stand-in for Slack, PagerDuty and a webhook, resolved; the lab is
    /// removed afterwards.
    Demo,
    /// Fuzz the XDP parser against the reference classifier (as root):
    /// generated and mutated frames under BPF_PROG_TEST_RUN; mismatches go
    /// to tests/fuzz/regressions.txt, the figures to BENCHMARKS.md.
    Fuzz {
        /// Frames to run through the program.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Seed of the frame generator (default: a random one, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the figures without writing BENCHMARKS.md.
        #[arg(long)]
        no_write: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => setup::toolchain(),
        Cmd::Build => {
            setup::toolchain()?;
            build_release(&root)
        }
        Cmd::Install { prefix, root: destdir, binary } => {
            install::install(&root, install::InstallOptions { prefix, root: destdir, binary })
        }
        Cmd::Deb { binary, out, compression } => {
            install::deb(&root, install::DebOptions { binary, out_dir: out, compression }).map(drop)
        }
        Cmd::Run { args } => {
            setup::toolchain()?;
            setup::run_tools(&args);
            build_release(&root)?;
            let bin = root.join("target/release/detector");
            let mut cmd = as_root(&bin);
            cmd.arg("run").args(&args);
            // The repository's runbooks, unless the operator names a directory.
            if !args.iter().any(|a| a == "--runbooks" || a.starts_with("--runbooks=")) {
                cmd.arg("--runbooks").arg(root.join("runbooks"));
            }
            exec(cmd)
        }
        Cmd::Test { filter } => {
            setup::toolchain()?;
            setup::test_tools()?;
            test(&root, filter.as_deref())
        }
        Cmd::Bench { quick, no_write, only } => {
            setup::toolchain()?;
            setup::bench_tools()?;
            cargo(&root, &["build", "--release", "-p", "detector", "-p", "detector-bench"])?;
            let mut cmd = as_root(&root.join("target/release/detector-bench"));
            if quick {
                cmd.arg("--quick");
            }
            match only {
                Some(part) => {
                    cmd.arg("--only").arg(part);
                }
                None if !no_write => {
                    cmd.arg("--write").arg(root.join("BENCHMARKS.md"));
                }
                None => {}
            }
            exec(cmd)
        }
        Cmd::Demo => {
            setup::toolchain()?;
            setup::test_tools()?;
            cargo(&root, &["build", "--release", "-p", "detector", "-p", "detector-demo"])?;
            let mut cmd = as_root(&root.join("target/release/detector-demo"));
            cmd.arg("--detector")
                .arg(root.join("target/release/detector"))
                .arg("--runbooks")
                .arg(root.join("runbooks"));
            // Replace this process: on Ctrl-C a waiting xtask would die at
            // once and hand the terminal back while the demo still cleans
            // its lab up; this way the shell waits for the cleanup.
            use std::os::unix::process::CommandExt as _;
            let err = cmd.exec();
            Err(err).with_context(|| format!("starting {:?}", cmd.get_program()))
        }
        Cmd::Fuzz { frames, seed, no_write } => fuzz::run(&root, fuzz::Options { frames, seed, no_write }),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn build_release(root: &Path) -> Result<()> {
    cargo(root, &["build", "--release", "-p", "detector"])?;
    println!("xtask: built {}", root.join("target/release/detector").display());
    Ok(())
}

fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    let root_user = setup::is_root();
    if !root_user {
        let msg = "the kernel tests need root (CAP_BPF, CAP_NET_ADMIN, network namespaces)";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            bail!("{msg}; CI=true, so they may not be skipped: run `cargo xtask test` as root");
        }
        eprintln!("xtask: {msg}; not root, so they will skip with a message. Run as root to run them.");
    }
    warn_if_disk_low(root);
    let mut args = vec!["test", "--workspace", "--exclude", "detector-ebpf"];
    if let Some(f) = filter {
        args.extend(["--", f]);
    }
    cargo(root, &args)
}

/// Space a fresh build of the tests takes (target/ after `cargo xtask
/// test` in a fresh clone), with some room.
const TEST_BUILD_GIB: u64 = 12;

/// A full disk fails a build deep in the linker (`Bus error`, `No space
/// left on device`), which says nothing of the cause: say it first.
fn warn_if_disk_low(root: &Path) {
    let Ok(out) = Command::new("df").arg("-Pk").arg(root).output() else { return };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse::<u64>().ok());
    if let Some(kib) = free_kib.filter(|k| *k < TEST_BUILD_GIB << 20) {
        eprintln!(
            "xtask: warning: {:.1} GiB free on the disk of {}; building the tests takes about {TEST_BUILD_GIB} GiB, and a full disk fails in the linker (Bus error, No space left on device)",
            kib as f64 / (1u64 << 20) as f64,
            root.display()
        );
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(args);
    let status = cmd.status().with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The command, through `sudo -E` when we are not root and sudo exists.
fn as_root(bin: &Path) -> Command {
    if setup::is_root() || setup::which("sudo").is_none() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(bin);
        c
    }
}

fn exec(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}
