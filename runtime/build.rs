//! Builds the eBPF guard (`ebpf/`) with the nightly toolchain and bpf-linker, so the runtime
//! binaries embed the exact program their source describes. `cargo xtask setup` installs the
//! prerequisites (nightly rust-src, bpf-linker).
use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    // aya-build relays every line the nested cargo prints on stderr as a cargo warning: its
    // status lines ("Compiling core ...") would make a clean build print ~50 warnings. Quiet,
    // the nested cargo prints only diagnostics, which are worth a warning, and errors.
    // SAFETY: the build script is single-threaded here; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    println!("cargo:rerun-if-changed={root}/common/src");
    aya_build::build_ebpf(
        [Package {
            name: "npu-guard-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )?;
    // The program's version (its pin directory) is a hash of both variants' objects, computed
    // here once rather than over ~200 KiB on every hook run.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut bytes = std::fs::read(out.join("npu-guard"))?;
    bytes.extend(std::fs::read(out.join("npu-guard-basic"))?);
    // FNV-1a: identification, not security (bpffs is writable by root only).
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    println!("cargo:rustc-env=NPU_GUARD_VERSION={hash:016x}");
    Ok(())
}
