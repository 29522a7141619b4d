//! The .deb and the .rpm `cargo xtask package` builds (xtask test builds them and names them
//! in `NPU_PACKAGE_DEB`, `NPU_PACKAGE_DEB_UPGRADE`, `NPU_PACKAGE_RPM`): what they hold, lintian,
//! then the .deb installed on this machine - the installed commands, man pages and units, a
//! container through `/usr/bin/npu-container-runtime` and through Docker configured by the
//! installed `npu-ctk`, an upgrade and a remove under running containers, and a purge that
//! leaves nothing of ours. xtask runs the install test after every other suite: it changes
//! `/usr/bin` and `/etc` while it runs.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use npu_tests::{
    cgroups::{Place, TestCgroup, guards_attached, unified_mount},
    engines::{Dockerd, matrix_script, parse_matrix},
    host::FakeHost,
    require, require_root, require_tools,
    runc::{RuncContainer, expect_only},
    unique,
};

const PACKAGE: &str = "npu-container-runtime";
const CONFIG: &str = "/etc/npu-container-runtime/config.toml";
/// What a purge must take away besides the package's files (the default state and bpf dirs).
const NODE_STATE: [&str; 3] = [
    "/etc/npu-container-runtime",
    "/run/npu-container-runtime",
    "/sys/fs/bpf/npu-container-runtime",
];

struct Packages {
    deb: PathBuf,
    deb_upgrade: PathBuf,
    rpm: PathBuf,
}

/// The packages xtask built for this run; under CI their absence fails the suite.
fn packages() -> Option<Packages> {
    let path = |var: &str| std::env::var_os(var).map(PathBuf::from);
    let found = match (
        path("NPU_PACKAGE_DEB"),
        path("NPU_PACKAGE_DEB_UPGRADE"),
        path("NPU_PACKAGE_RPM"),
    ) {
        (Some(deb), Some(deb_upgrade), Some(rpm))
            if deb.exists() && deb_upgrade.exists() && rpm.exists() =>
        {
            Some(Packages {
                deb,
                deb_upgrade,
                rpm,
            })
        }
        _ => None,
    };
    require(
        "the packages `cargo xtask test` builds (NPU_PACKAGE_DEB, NPU_PACKAGE_DEB_UPGRADE, \
         NPU_PACKAGE_RPM)",
        found.is_some(),
    )
    .then_some(found)
    .flatten()
}

/// Output (stdout + stderr) and success of a command, with no stdin.
fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn ok(cmd: &mut Command) -> String {
    let (success, text) = output(cmd);
    assert!(success, "{cmd:?} failed:\n{text}");
    text
}

/// Paths in the .deb (`./usr/bin/x` as `/usr/bin/x`), files and symlinks only.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

#[test]
fn package_files_metadata_and_lintian() {
    if !require_tools(&["dpkg-deb", "lintian", "rpm"]) {
        return;
    }
    let Some(p) = packages() else { return };
    let version = env!("CARGO_PKG_VERSION");

    // lintian: no error; what it still says is justified in the package's overrides or README.
    let (_, lint) = output(Command::new("lintian").arg("--pedantic").arg(&p.deb));
    let errors: Vec<&str> = lint.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{lint}");
    assert!(
        !lint.lines().any(|l| l.starts_with("W:")),
        "lintian warnings:\n{lint}"
    );
    let info = ok(Command::new("dpkg-deb").arg("-f").arg(&p.deb));
    for field in [
        format!("Package: {PACKAGE}"),
        format!("Version: {version}"),
        "Depends: runc | crun".into(),
    ] {
        assert!(info.contains(&field), "{field} in:\n{info}");
    }
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&p.deb)
        .arg(dir.path()));
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from([CONFIG, "/etc/npu-container-runtime/mounts.d/base.list"]),
        "{conffiles}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        ok(Command::new("sh").arg("-n").arg(dir.path().join(script)));
    }

    // The rpm: its metadata, and the same files as the .deb but for each family's places.
    let rpm_info = ok(Command::new("rpm").arg("-qpi").arg(&p.rpm));
    for field in [
        format!("Name        : {PACKAGE}"),
        format!("Version     : {version}"),
        "License     : Apache-2.0".into(),
        "Architecture: x86_64".into(),
    ] {
        assert!(rpm_info.contains(&field), "{field} in:\n{rpm_info}");
    }
    let rpm_files: BTreeSet<String> = ok(Command::new("rpm").arg("-qpl").arg(&p.rpm))
        .lines()
        .map(String::from)
        .collect();
    let debian_only = [
        // Debian's zsh looks in vendor-completions; Fedora's and openEuler's in site-functions.
        "/usr/share/zsh/vendor-completions/_npu-ctk",
        // A native package's changelog; the rpm ships it uncompressed as changelog.
        "/usr/share/doc/npu-container-runtime/changelog.gz",
        "/usr/share/lintian/overrides/npu-container-runtime",
    ];
    let rpm_only = [
        "/usr/share/zsh/site-functions/_npu-ctk",
        "/usr/share/doc/npu-container-runtime/changelog",
    ];
    let deb: BTreeSet<String> = deb_files(&p.deb)
        .into_iter()
        .filter(|f| !debian_only.contains(&f.as_str()))
        .collect();
    let rpm: BTreeSet<String> = rpm_files
        .iter()
        .filter(|f| !rpm_only.contains(&f.as_str()))
        .cloned()
        .collect();
    assert_eq!(deb, rpm, "the .deb's and the .rpm's files");
    for f in [
        "/usr/bin/npu-container-runtime",
        "/usr/bin/npu-container-hook",
        "/usr/bin/npu-ctk",
        CONFIG,
        "/usr/lib/systemd/system/npu-container-guard.service",
        "/usr/lib/systemd/system/npu-container-gc.timer",
        "/usr/share/man/man1/npu-ctk.1.gz",
        "/usr/share/man/man1/npu-ctk-guard-install.1.gz",
        "/usr/share/man/man1/npu-container-runtime.1.gz",
        "/usr/share/man/man1/npu-container-hook.1.gz",
        "/usr/share/bash-completion/completions/npu-ctk",
        "/usr/share/fish/vendor_completions.d/npu-ctk.fish",
        "/usr/share/doc/npu-container-runtime/copyright",
    ] {
        assert!(rpm_files.contains(f), "{f} in the rpm: {rpm_files:?}");
    }
    let rpm_config = ok(Command::new("rpm").arg("-qpc").arg(&p.rpm));
    assert!(rpm_config.contains(CONFIG), "{rpm_config}");
    let requires = ok(Command::new("rpm").arg("-qpR").arg(&p.rpm));
    assert!(requires.contains("(runc or crun)"), "{requires}");
    let scripts = ok(Command::new("rpm").args(["-qp", "--scripts"]).arg(&p.rpm));
    for part in [
        "enable npu-container-guard.service npu-container-gc.timer",
        "npu-ctk guard uninstall",
        "rm -rf /run/npu-container-runtime",
        "npu-ctk runtime configure --runtime=docker",
    ] {
        assert!(scripts.contains(part), "{part} in:\n{scripts}");
    }
}

/// Written before this suite installs the package and removed after its purge: a run killed
/// in between (a stopped CI job, a lost session) leaves it, so the next run can tell its own
/// leftover from an operator's installation, which it never touches.
const MARKER: &str = "/var/lib/npu-tests/package-suite-installed";

/// The package installed by this suite: purged (and the marker removed) on drop.
struct Installed;

impl Installed {
    /// Takes the machine over for the suite: purges what an interrupted run of this suite left,
    /// refuses an installation that is not the suite's.
    fn take_over() -> Installed {
        if let Some(version) = installed_version() {
            assert!(
                Path::new(MARKER).exists(),
                "{PACKAGE} {version} is installed here and not by this suite (no {MARKER}); \
                 this suite installs and purges it"
            );
            eprintln!("purging {PACKAGE} {version}, left by an interrupted run of this suite");
            purge();
        }
        std::fs::create_dir_all(Path::new(MARKER).parent().unwrap()).unwrap();
        std::fs::write(MARKER, "").unwrap();
        Installed
    }
}

fn purge() {
    let _ = Command::new("dpkg")
        .args(["--purge", PACKAGE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Installed {
    fn drop(&mut self) {
        purge();
        if installed_version().is_none() {
            let _ = std::fs::remove_file(MARKER);
        }
    }
}

fn installed_version() -> Option<String> {
    let (ok, text) = output(Command::new("dpkg-query").args([
        "-W",
        "-f=${db:Status-Status} ${Version}",
        PACKAGE,
    ]));
    text.strip_prefix("installed ")
        .filter(|_| ok)
        .map(|v| v.trim().to_string())
}

fn dpkg(args: &[&str], deb: Option<&Path>) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(deb) = deb {
        cmd.arg(deb);
    }
    ok(&mut cmd)
}

/// The runc state root that holds container `id` under an engine's directory.
fn runc_root_of(engine_dir: &Path, id: &str) -> PathBuf {
    let (_, found) = output(
        Command::new("find")
            .arg(engine_dir)
            .args(["-name", "state.json", "-path"])
            .arg(format!("*/{id}/state.json")),
    );
    let state = found
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no runc state of {id} under {}", engine_dir.display()));
    Path::new(state)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

/// Unit files and enablement links of ours anywhere systemd or deb-systemd-helper keeps them.
fn our_units() -> String {
    let (_, found) = output(
        Command::new("find")
            .args([
                "/etc/systemd",
                "/lib/systemd",
                "/usr/lib/systemd",
                "/var/lib/systemd",
            ])
            .args(["-name", "npu-container-*"]),
    );
    found.trim().to_string()
}

#[test]
fn package_installs_runs_upgrades_and_purges_cleanly() {
    if !require_root()
        || !require_tools(&[
            "dpkg",
            "man",
            "systemd-analyze",
            "dockerd",
            "docker",
            "runc",
            "bpftool",
            "busybox",
        ])
    {
        return;
    }
    let Some(p) = packages() else { return };
    let _installed = Installed::take_over();
    let version = env!("CARGO_PKG_VERSION");
    let engine_configs = [
        "/etc/docker/daemon.json",
        "/etc/containerd/config.toml",
        "/etc/containers/containers.conf",
    ];
    let engines_before: Vec<Option<Vec<u8>>> = engine_configs
        .iter()
        .map(|f| std::fs::read(f).ok())
        .collect();
    let host = FakeHost::new(4);

    // Install: units enabled, no engine touched, the line to run printed.
    let out = dpkg(&["-i"], Some(&p.deb));
    assert!(
        out.contains("npu-ctk runtime configure --runtime=docker"),
        "{out}"
    );
    assert_eq!(installed_version().as_deref(), Some(version));
    assert_eq!(
        engine_configs
            .iter()
            .map(|f| std::fs::read(f).ok())
            .collect::<Vec<_>>(),
        engines_before,
        "installing changed an engine's configuration"
    );
    let ctk = Path::new("/usr/bin/npu-ctk");
    assert_eq!(
        ok(Command::new(ctk).arg("--version")).trim(),
        format!("npu-ctk {version}")
    );
    for page in [
        "npu-ctk",
        "npu-ctk-guard-install",
        "npu-container-runtime",
        "npu-container-hook",
    ] {
        assert_eq!(
            ok(Command::new("man").args(["-w", page])).trim(),
            format!("/usr/share/man/man1/{page}.1.gz")
        );
    }
    let completion = ok(Command::new("bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/npu-ctk && complete -p npu-ctk",
    ]));
    assert!(completion.contains("npu-ctk"), "{completion}");
    // The units are valid where installed (binaries and pages found) and enabled.
    let units = [
        "/usr/lib/systemd/system/npu-container-guard.service",
        "/usr/lib/systemd/system/npu-container-gc.service",
        "/usr/lib/systemd/system/npu-container-gc.timer",
    ];
    let (valid, text) = output(Command::new("systemd-analyze").arg("verify").args(units));
    assert!(
        valid && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    for link in [
        "/etc/systemd/system/multi-user.target.wants/npu-container-guard.service",
        "/etc/systemd/system/timers.target.wants/npu-container-gc.timer",
    ] {
        assert!(
            std::fs::read_link(link).is_ok(),
            "{link} (enabled):\n{}",
            our_units()
        );
    }

    // The operator points the installed config at this test's simulated NPUs and driver tree
    // (the package's base.list names the driver paths the fake tree has).
    let shipped = std::fs::read_to_string(CONFIG).unwrap();
    let edited = format!(
        "{shipped}\n# Edited by the operator.\ndev_root = {:?}\ndriver_root = {:?}\n",
        host.dev_root,
        host.dir.path().join("driver")
    );
    std::fs::write(CONFIG, &edited).unwrap();

    // A container through the installed shim, which finds the hook beside it.
    let shim = Path::new("/usr/bin/npu-container-runtime");
    let runc_ctr = RuncContainer::start(Place::Host, host.dir.path(), shim, |spec| {
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push("ASCEND_VISIBLE_DEVICES=1".into());
    })
    .expect("a container through /usr/bin/npu-container-runtime");
    assert_eq!(runc_ctr.chip_verdicts(&host), expect_only(&[1], host.chips));
    let (_, version_info) = runc_ctr.sh("cat /usr/local/Ascend/driver/version.info");
    assert!(version_info.contains("Version=24.1.0"), "{version_info}");
    assert!(
        Path::new("/run/npu-container-runtime")
            .join(format!("{}.json", runc_ctr.id))
            .exists(),
        "the record in the default state_dir"
    );

    // Docker, registered by the installed npu-ctk (the shim's path is its sibling's).
    let docker_dir = host.dir.path().join(unique("docker"));
    std::fs::create_dir_all(&docker_dir).unwrap();
    let daemon_json = docker_dir.join("daemon.json");
    ok(Command::new(ctk)
        .args(["runtime", "configure", "--runtime=docker", "--config"])
        .arg(&daemon_json));
    let registered: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon_json).unwrap()).unwrap();
    assert_eq!(
        registered["runtimes"]["npu"]["path"],
        "/usr/bin/npu-container-runtime"
    );
    // Under a parent of the test's own, which the node guard will watch.
    let parent_name = unique("npu-pkg-docker");
    let parent = TestCgroup::new(&unified_mount(), &parent_name);
    let parent_path = format!("/{parent_name}");
    let d = Dockerd::start_configured(
        Place::Host,
        docker_dir,
        &daemon_json,
        &[&format!("--cgroup-parent={parent_path}")],
    );
    let matrix = matrix_script(host.chip_major, host.chips);
    let docker_verdicts = |npus: &str| {
        let env = format!("ASCEND_VISIBLE_DEVICES={npus}");
        d.verdicts(&[&env], &[], host.chip_major, host.chips)
    };
    assert_eq!(docker_verdicts("0,2"), expect_only(&[0, 2], host.chips));
    let (started, id) = d.output(&[
        "run",
        "-d",
        "--runtime=npu",
        "-e",
        "ASCEND_VISIBLE_DEVICES=3",
        &d.image,
        "sleep",
        "600",
    ]);
    assert!(started, "{id}");
    let id = id.trim().to_string();
    let running_verdicts = || {
        let (_, out) = d.output(&["exec", &id, "sh", "-c", &matrix]);
        parse_matrix(&out, host.chips)
    };
    assert_eq!(running_verdicts(), expect_only(&[3], host.chips));
    let listed = |who: &str| {
        let (_, policy) = output(Command::new("/usr/bin/npu-ctk").args(["policy", "show"]));
        policy.contains(who)
    };
    assert!(
        listed(&id) && listed(&runc_ctr.id),
        "policy show lists both"
    );
    ok(Command::new(ctk).args(["guard", "install", "--cgroup", &parent_path]));
    assert_eq!(guards_attached(&parent.dir()).len(), 1);

    // Upgrade under running containers: same verdicts, the edited config kept, the guard on.
    let upgrade_version = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&p.deb_upgrade)
        .arg("Version"))
    .trim()
    .to_string();
    assert_ne!(upgrade_version, version);
    dpkg(&["-i"], Some(&p.deb_upgrade));
    assert_eq!(installed_version(), Some(upgrade_version));
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    assert_eq!(runc_ctr.chip_verdicts(&host), expect_only(&[1], host.chips));
    assert_eq!(running_verdicts(), expect_only(&[3], host.chips));
    assert!(
        listed(&id) && listed(&runc_ctr.id),
        "policy show after the upgrade"
    );
    assert_eq!(
        guards_attached(&parent.dir()).len(),
        1,
        "the guard across the upgrade"
    );
    assert_eq!(docker_verdicts("1"), expect_only(&[1], host.chips));

    // Remove under running containers: they keep running with their grants and confinement,
    // the node guard goes, the edited config stays until purge. Engines run a container's
    // later commands (exec, kill, delete) through the runtime it was created with, so Docker
    // cannot manage these two until the package is back; plain runc can (README, "Install").
    dpkg(&["-r", PACKAGE], None);
    assert!(!ctk.exists() && !shim.exists());
    assert_eq!(
        guards_attached(&parent.dir()).len(),
        0,
        "remove uninstalls the node guard"
    );
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    assert_eq!(runc_ctr.chip_verdicts(&host), expect_only(&[1], host.chips));
    let (_, running) = d.output(&["inspect", "-f", "{{.State.Running}}", &id]);
    assert_eq!(running.trim(), "true");
    let docker_runc_root = runc_root_of(d.dir(), &id);
    let (_, out) = output(
        Command::new("runc")
            .arg("--root")
            .arg(&docker_runc_root)
            .args(["exec", &id, "sh", "-c", &matrix]),
    );
    assert_eq!(
        parse_matrix(&out, host.chips),
        expect_only(&[3], host.chips)
    );
    // A container deleted meanwhile (by plain runc: the shim that cleans up is gone) leaves
    // its record for gc.
    let record = Path::new("/run/npu-container-runtime").join(format!("{}.json", runc_ctr.id));
    let runc_root = runc_ctr.root.clone();
    let runc_id = runc_ctr.id.clone();
    ok(runc_ctr.runc().args(["delete", "-f", &runc_id]));
    drop(runc_ctr);
    let (exists, _) = output(
        Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["state", &runc_id]),
    );
    assert!(!exists, "runc did not delete the container");
    assert!(record.exists(), "no shim cleaned up, so its record is left");

    // Reinstalled: the config as edited, Docker manages its container again, and gc takes
    // what the container deleted meanwhile left.
    dpkg(&["-i"], Some(&p.deb_upgrade));
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    ok(Command::new(ctk).arg("gc"));
    assert!(!record.exists(), "gc removes the stale record");
    let (removed, text) = d.output(&["rm", "-f", &id]);
    assert!(removed, "{text}");
    drop(d);
    dpkg(&["-r", PACKAGE], None);

    // Purge: nothing of ours is left - files, config, records, pins, units.
    dpkg(&["--purge", PACKAGE], None);
    assert!(installed_version().is_none());
    let left: Vec<String> = deb_files(&p.deb)
        .into_iter()
        .chain(NODE_STATE.map(String::from))
        .filter(|f| Path::new(f).symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert_eq!(our_units(), "", "units or unit links left after purge");
}
