//! Setup's closure, on a machine that cannot fool it: a fresh Debian root (mmdebstrap
//! `--variant=minbase` of this machine's release, from the machine's own archive; cached),
//! setup's package lists installed into it with setup's own code (`xtask::setup`, through
//! `chroot`), the demo's level first and then the rest; then, inside the root, every program
//! the demo's packages name is found after the first level, and every program the suites and
//! xtask run (the lists' own and every `Command::new`, `.command` and `require_tools` name in
//! tests/ and xtask/) after the second, and runc's suite helpers build there as setup builds
//! them. A package that leaves setup's list while something still runs it fails this suite.
//! Downloaded .debs are kept between runs (the machine's own apt deletes its own).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use npu_tests::{cgroups::in_private_mount_namespace, require, require_root, require_tools, run};
use xtask::{
    apt::{self, Mirror, Target},
    setup::{self, Level},
};

const CACHE: &str = "/var/cache/npu-tests/fresh-root";

/// Programs that are not Debian's: the toolchain's and ours.
fn ours(program: &str) -> bool {
    matches!(program, "cargo" | "rustc" | "rustup") || program.starts_with("npu-")
}

/// Every program name the suites and xtask start: the literal names given to `Command::new`,
/// `.command` and `require_tools`.
fn programs_in_sources() -> BTreeSet<String> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["tests/src", "tests/tests", "xtask/src"] {
        collect(&top.join(dir), &mut files);
    }
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for marker in ["Command::new(\"", ".command(\""] {
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                let name = &rest[..rest.find('"').unwrap()];
                out.insert(name.to_string());
            }
        }
        for (at, _) in text.match_indices("require_tools(&[") {
            let rest = &text[at + "require_tools(&[".len()..];
            let list = &rest[..rest.find(']').unwrap()];
            out.extend(
                list.split(',')
                    .map(|s| s.trim().trim_matches('"'))
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    // Paths are not looked up, and neither is anything that is no program name (this file's
    // own markers, say).
    out.retain(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
            && !ours(p)
    });
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The cached minbase tarball of this machine's release, made once.
fn base_tarball() -> PathBuf {
    let codename = apt::codename().unwrap();
    let tarball = Path::new(CACHE).join(format!("{codename}-minbase.tar"));
    if tarball.exists() {
        return tarball;
    }
    std::fs::create_dir_all(CACHE).unwrap();
    let mirror = Mirror::of_this_machine().unwrap();
    let partial = tarball.with_extension("tar.partial");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--quiet", "--format=tar"])
        .arg(&codename)
        .arg(&partial)
        .arg(format!("deb {} {codename} main", mirror.archive));
    if let Some(security) = &mirror.security {
        cmd.arg(format!("deb {security} {codename}-security main"));
    }
    run(&mut cmd);
    std::fs::rename(&partial, &tarball).unwrap();
    tarball
}

/// A root unpacked from the tarball, with /proc, /dev and the .deb cache bound in and
/// services kept from starting; unmounted and removed on drop.
struct Root {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Root {
    fn new(tarball: &Path) -> Root {
        // Not on a tmpfs: the root grows to a few GiB.
        let dir = tempfile::Builder::new()
            .prefix("npu-fresh-root-")
            .tempdir_in("/var/tmp")
            .unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(dir.path()));
        let mut root = Root {
            dir,
            mounts: Vec::new(),
        };
        let archives = Path::new(CACHE).join("archives");
        std::fs::create_dir_all(archives.join("partial")).unwrap();
        root.bind(Path::new("/proc"), "proc");
        root.bind(Path::new("/dev"), "dev");
        root.bind(&archives, "var/cache/apt/archives");
        let path = root.path().to_path_buf();
        std::fs::copy("/etc/resolv.conf", path.join("etc/resolv.conf")).unwrap();
        // Maintainer scripts must not start daemons (dockerd, containerd) from the root.
        let policy = path.join("usr/sbin/policy-rc.d");
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").unwrap();
        run(Command::new("chmod").arg("755").arg(&policy));
        root
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn bind(&mut self, from: &Path, at: &str) {
        let target = self.path().join(at);
        std::fs::create_dir_all(&target).unwrap();
        run(Command::new("mount").arg("--rbind").arg(from).arg(&target));
        self.mounts.push(target);
    }

    /// Which of `programs` the root's shell cannot find.
    fn missing<'a>(&self, programs: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        programs
            .into_iter()
            .filter(|p| {
                !Target::Root(self.path())
                    .command("sh")
                    .args(["-c", &format!("command -v {p} >/dev/null")])
                    .env(
                        "PATH",
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    )
                    .status()
                    .unwrap()
                    .success()
            })
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(target)
                .status();
        }
    }
}

fn programs(level: Level) -> BTreeSet<&'static str> {
    level
        .packages()
        .iter()
        .flat_map(|p| p.programs.iter().copied())
        .collect()
}

/// The root after the demo's packages is a plain Docker host (containerd came as Docker's
/// dependency; no Podman, CRI-O or kubelet): once Docker is configured, doctor warns about no
/// engine, and says once that containerd needs the handler only for Kubernetes or ctr.
fn docker_only_doctor(root: &Root) {
    let bin_dir = root.path().join("usr/local/bin");
    for name in ["npu-ctk", "npu-container-runtime", "npu-container-hook"] {
        std::fs::copy(npu_tests::bin(name), bin_dir.join(name)).unwrap();
    }
    let ctk = |args: &[&str]| {
        let out = Target::Root(root.path())
            .command("/usr/local/bin/npu-ctk")
            .args(args)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ctk(&["runtime", "configure", "--runtime=docker"]);
    let doctor = ctk(&["doctor"]);
    let engine_lines: Vec<&str> = doctor
        .lines()
        .filter(|l| l.contains(" configured: ") || l.contains("CRI"))
        .collect();
    let expect = [
        "[ ok ] docker configured: runtime \"npu\" in /etc/docker/daemon.json",
        "[info] containerd configured: no runtime \"npu\" in /etc/containerd/config.toml",
        "[info] podman configured: podman is not installed",
        "[info] crio configured: crio is not installed",
    ];
    assert_eq!(engine_lines.len(), expect.len(), "{doctor}");
    for (line, want) in engine_lines.iter().zip(expect) {
        assert!(line.starts_with(want), "{want:?} in:\n{doctor}");
    }
    assert!(
        engine_lines[1].contains("needed only for Kubernetes or ctr"),
        "{doctor}"
    );
}

#[test]
fn setup_s_packages_bring_every_program_to_a_fresh_root() {
    if !require_root() || !require_tools(&["mmdebstrap", "chroot", "tar"]) {
        return;
    }
    let tarball = base_tarball();
    // The root's bind mounts are made in a mount namespace of this test's own, so suites
    // running beside it never see the host's mount table change.
    in_private_mount_namespace(move || in_a_fresh_root(&tarball));
}

fn in_a_fresh_root(tarball: &Path) {
    let root = Root::new(tarball);
    let target = Target::Root(root.path());
    // What minbase lacks: the demo's programs are not there yet (the test can tell).
    assert!(!root.missing(["runc", "dockerd"]).is_empty());

    setup::install_packages(target, Level::Demo).expect("the demo's packages");
    let missing = root.missing(programs(Level::Demo));
    assert!(
        missing.is_empty(),
        "after the demo's setup, not found in a fresh root: {missing:?}"
    );

    docker_only_doctor(&root);

    setup::install_packages(target, Level::Tests).expect("every level's packages");
    let sources = programs_in_sources();
    assert!(
        sources.contains("runc") && sources.contains("bpftool") && sources.len() > 20,
        "the scan found too little: {sources:?}"
    );
    let wanted: BTreeSet<&str> = programs(Level::Tests)
        .into_iter()
        .chain(sources.iter().map(String::as_str))
        .collect();
    let missing = root.missing(wanted.iter().copied());
    assert!(
        missing.is_empty(),
        "run by the suites or xtask, but not found in a fresh root after setup's packages: \
         {missing:?} (add their packages to xtask/src/setup.rs)"
    );

    // runc's suite helpers build from setup's Go packages alone, as setup builds them.
    let suite = Path::new(xtask::runc_suite::DIR);
    if !require(
        "runc's suite prepared by cargo xtask setup",
        suite.join("ready").exists(),
    ) {
        return;
    }
    let src = std::fs::read_dir(suite.join("src"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("tests/integration").is_dir())
        .expect("runc's source tree");
    let inside = Path::new("/build");
    run(Command::new("mkdir")
        .arg("-p")
        .arg(root.path().join("build/src")));
    run(Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(root.path().join("build/src/runc")));
    xtask::runc_suite::build_helpers(target, inside, &inside.join("src/runc"))
        .expect("runc's helpers build in the fresh root");
    for helper in xtask::runc_suite::HELPERS {
        let built = root
            .path()
            .join(format!("build/src/runc/contrib/cmd/{helper}/{helper}"));
        assert!(built.is_file(), "{} was not built", built.display());
    }
}
