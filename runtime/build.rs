//! Builds the eBPF guard (`ebpf/`) with the nightly toolchain and bpf-linker, so the runtime
//! binaries embed the exact program their source describes. `cargo xtask setup` installs the
//! prerequisites (nightly rust-src, bpf-linker).
use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    println!("cargo:rerun-if-changed={root}/common/src");
    aya_build::build_ebpf(
        [Package {
            name: "npu-guard-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
