//! Builds the XDP programs of `detector-ebpf` with the nightly toolchain for
//! the BPF target and leaves the objects in `OUT_DIR`, where `src/ebpf.rs`
//! embeds them: the `detector` binary carries its programs.
//!
//! `cargo xtask build` installs what this needs (rust-src, bpf-linker) first.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.parent().context("detector/ has no parent directory")?.join("detector-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("the path of detector-ebpf/ is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "detector-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the XDP programs failed; `cargo xtask build` installs the nightly \
         rust-src component and bpf-linker they need",
    )
}
