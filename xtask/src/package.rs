//! `cargo xtask package [--version V]`: the .deb and the .rpm, built by cargo-deb and
//! cargo-generate-rpm (installed by setup) from the static release binaries, stripped, with
//! the man pages (`npu-ctk man`) and the completions (`npu-ctk completion`) generated here.
//! What goes where is declared once per format in runtime/Cargo.toml.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Result, output, run, setup};

const BINARIES: [&str; 3] = ["npu-container-runtime", "npu-container-hook", "npu-ctk"];

/// The packages one run made.
pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

/// Builds both packages into `out` (default: the target directory), with `version` instead
/// of the workspace's (e.g. an upgrade of the same build).
pub fn build(version: Option<&str>, out: Option<&Path>) -> Result<Packages> {
    // The same build as the test run's (which builds every binary first): the packages carry
    // the binaries the suites ran, and nothing is rebuilt. Building the runtime's binaries
    // alone would unify dependency features differently and relink them.
    let release = crate::release_build(crate::Build::All)?;
    let target = setup::release_target()?;
    let version = version.unwrap_or(env!("CARGO_PKG_VERSION"));
    let stage = release.join("package");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    }
    let (bin, man, completions) = (
        stage.join("bin"),
        stage.join("man"),
        stage.join("completions"),
    );
    let doc = stage.join("doc");
    for dir in [&bin, &completions, &doc] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for name in BINARIES {
        run(Command::new("strip")
            .arg("-o")
            .arg(bin.join(name))
            .arg(release.join(name)))?;
    }
    let ctk = bin.join("npu-ctk");
    output(Command::new(&ctk).arg("man").arg("--output").arg(&man))?;
    let pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .map_err(|e| format!("{}: {e}", man.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let changelog = doc.join("changelog");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/package/changelog"),
        &changelog,
    )
    .map_err(|e| format!("copy the changelog: {e}"))?;
    // Maximum compression without a timestamp: what Debian policy (and lintian) ask.
    run(Command::new("gzip").arg("-9n").args(&pages).arg(&changelog))?;
    for (shell, file) in [
        ("bash", "npu-ctk.bash"),
        ("zsh", "_npu-ctk"),
        ("fish", "npu-ctk.fish"),
    ] {
        let script = output(Command::new(&ctk).args(["completion", shell]))?;
        std::fs::write(completions.join(file), script + "\n").map_err(|e| e.to_string())?;
    }

    let out = out.map_or_else(crate::target_dir, Path::to_path_buf);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let out = out
        .canonicalize()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let arch = target.split('-').next().unwrap_or_default();
    let deb_arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let packages = Packages {
        deb: out.join(format!("npu-container-runtime_{version}_{deb_arch}.deb")),
        rpm: out.join(format!("npu-container-runtime-{version}.{arch}.rpm")),
    };
    run(crate::cargo()
        .args([
            "deb",
            "-p",
            "npu-container-runtime",
            "--no-build",
            "--target",
        ])
        .arg(&target)
        .args(["--deb-version", version, "--output"])
        .arg(&packages.deb)
        .stdout(std::process::Stdio::null()))?;
    run(crate::cargo()
        .args(["generate-rpm", "-p", "runtime", "--target", &target])
        .arg("--set-metadata")
        .arg(format!("version = {version:?}"))
        .arg("--output")
        .arg(&packages.rpm)
        .stdout(std::process::Stdio::null()))?;
    Ok(packages)
}

/// `cargo xtask package [--version V]`: builds both and prints their paths.
pub fn command(args: &[String]) -> Result {
    let version = match args {
        [] => None,
        [flag, v] if flag == "--version" => Some(v.as_str()),
        _ => return Err("usage: cargo xtask package [--version VERSION]".into()),
    };
    let packages = build(version, None)?;
    println!("{}", packages.deb.display());
    println!("{}", packages.rpm.display());
    Ok(())
}
