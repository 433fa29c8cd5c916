//! Builds the XDP programs of `detector-ebpf` with the nightly toolchain for
//! the BPF target and leaves the objects in `OUT_DIR`, where
//! `src/kernel/ebpf.rs` embeds them: the `detector` binary carries its
//! programs.
//!
//! This is what `aya_build::build_ebpf` does, except for the output:
//! aya-build forwards every line of the nested cargo's output as a
//! `cargo:warning`, so a build where nothing was wrong showed dozens of
//! warnings. Here that output is shown only when the nested build fails
//! (as this script's error), at `cargo build -vv` (which shows this
//! script's stderr), and, at any verbosity, with `DETECTOR_BUILD_VERBOSE=1`.
//!
//! `cargo xtask build` installs what this needs (rust-src, bpf-linker) first.
//! `AYA_BUILD_SKIP=1` skips the nested build (the objects already in
//! `OUT_DIR` are used).

use std::{
    env,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};

/// The `[[bin]]`s of detector-ebpf, under the names `src/kernel/ebpf.rs`
/// embeds from `OUT_DIR`.
const PROGRAMS: [&str; 2] = ["detector-xdp", "flood-xdp"];
const VERBOSE: &str = "DETECTOR_BUILD_VERBOSE";
const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> ExitCode {
    // Printed here rather than returned: `main` returning an error shows
    // anyhow's backtrace too whenever RUST_BACKTRACE is set, burying the
    // compiler's message.
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={VERBOSE}");
    println!("cargo:rerun-if-env-changed={SKIP}");
    if env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning={SKIP} is set: the XDP programs were not rebuilt");
        return Ok(());
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.parent().context("detector/ has no parent directory")?.join("detector-ebpf");
    // detector-ebpf is a build-dependency, so cargo reruns this when its
    // library changes; this covers its binaries (the programs) too.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported target endianness {other}"),
    };
    // aya-ebpf picks its kernel bindings by the architecture the programs
    // will run on (aya-build's naming: every riscv64 is "riscv64").
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") { "riscv64" } else { &arch };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Outside OUT_DIR (`<target>/<profile>/build/detector-<hash>/out`), so
    // that builds with other features of this crate, whose OUT_DIRs differ,
    // share one nested build instead of compiling `core` again each.
    let target_dir = out_dir.ancestors().nth(2).unwrap_or(&out_dir).join("detector-ebpf-target");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", "detector-ebpf", "--bins", "--release"])
        .args(["--target", target, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        // BTF (from the debug info) lets the kernel check the maps' layout.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        // Set by the outer cargo for the stable toolchain; the nested build
        // must pick nightly's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let out = cmd.output().context("cannot run `rustup run nightly cargo` (install rustup: https://rustup.rs)")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "building the XDP programs failed ({}):\n{text}\n(if the nightly rust-src component or bpf-linker \
             is what is missing, `cargo xtask setup` installs them)",
            out.status
        );
    }
    // Shown by `cargo build -vv`; kept in the build script's output file.
    eprint!("{text}");
    if env::var(VERBOSE).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        for line in text.lines() {
            println!("cargo:warning={line}");
        }
    }
    for name in PROGRAMS {
        let from = target_dir.join(target).join("release").join(name);
        std::fs::copy(&from, out_dir.join(name)).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}
