//! Hostile images: symlinks in the rootfs where the hook mounts driver files or creates device
//! nodes, pointing at `/`, at a canary tree on the host, out with `../..`, through
//! `/proc/self/root`, nowhere, or swapped while containers start. Each container either gets
//! its mounts inside its rootfs or fails; nothing on the host is created, written or mounted.
//! Every case runs on each mount path the hook has (this kernel's, and the older kernels'
//! forced with seccomp: [`MountPath`]), since each resolves targets its own way.
use std::{
    collections::BTreeMap,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use npu_tests::{
    cgroups::Place, host::FakeHost, require_root, require_tools, runc::RuncContainer,
    syscalls::MountPath,
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox"])
}

/// Every path under `dir` with its content (directories as "<dir>").
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.insert(p.clone(), "<dir>".into());
                stack.push(p);
            } else {
                out.insert(
                    p.clone(),
                    std::fs::read_to_string(&p).unwrap_or_else(|_| "<special>".into()),
                );
            }
        }
    }
    out
}

/// Rewrites a rootfs before its container starts.
type Plant<'a> = Box<dyn Fn(&Path) + 'a>;

/// Host paths a redirected mount target would create.
const HOST_PATHS: [&str; 4] = [
    "/Ascend",
    "/usr/local/Ascend",
    "/driver",
    "/lib64/libascend_hal.so",
];

/// Starts a container whose rootfs `plant` rewrites; `Ok` with the driver file as seen inside,
/// or the failure.
fn attempt(host: &FakeHost, path: MountPath, plant: impl FnOnce(&Path)) -> Result<String, String> {
    let c = RuncContainer::start_with_env(
        Place::Host,
        host.dir.path(),
        &path.runtime(host.dir.path()),
        &host.config_path,
        |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push("ASCEND_VISIBLE_DEVICES=0".into());
            plant(Path::new(spec["root"]["path"].as_str().unwrap()));
        },
    )?;
    let (_, out) =
        c.sh("cat /usr/local/Ascend/driver/version.info; ls /usr/local/Ascend/driver/lib64");
    Ok(out)
}

#[test]
fn symlinks_in_the_image_never_reach_the_host() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(1);
    let canary = host.dir.path().join("canary");
    std::fs::create_dir_all(canary.join("etc")).unwrap();
    std::fs::write(canary.join("etc/passwd"), "root:x:0:0\n").unwrap();
    std::fs::write(canary.join("secret"), "do not touch\n").unwrap();
    let before = snapshot(&canary);
    for p in HOST_PATHS {
        assert!(!Path::new(p).exists(), "{p} exists before the test");
    }
    let mkdirs = |root: &Path, rel: &str| std::fs::create_dir_all(root.join(rel)).unwrap();
    let canary_s = canary.display().to_string();
    let variants: Vec<(&str, Plant<'_>)> = vec![
        (
            "usr/local -> /",
            Box::new(|r: &Path| {
                mkdirs(r, "usr");
                symlink("/", r.join("usr/local")).unwrap();
            }),
        ),
        (
            "usr/local/Ascend -> host canary (absolute)",
            Box::new({
                let c = canary_s.clone();
                move |r: &Path| {
                    mkdirs(r, "usr/local");
                    symlink(&c, r.join("usr/local/Ascend")).unwrap();
                }
            }),
        ),
        (
            "usr/local/Ascend/driver -> ../../../../../../..",
            Box::new(|r: &Path| {
                mkdirs(r, "usr/local/Ascend");
                symlink("../../../../../../..", r.join("usr/local/Ascend/driver")).unwrap();
            }),
        ),
        (
            "usr/local/Ascend/driver -> /etc",
            Box::new(|r: &Path| {
                mkdirs(r, "usr/local/Ascend");
                symlink("/etc", r.join("usr/local/Ascend/driver")).unwrap();
            }),
        ),
        (
            "lib64 -> /proc/self/root",
            Box::new(|r: &Path| {
                mkdirs(r, "usr/local/Ascend/driver");
                symlink("/proc/self/root", r.join("usr/local/Ascend/driver/lib64")).unwrap();
            }),
        ),
        (
            "version.info -> canary secret (absolute)",
            Box::new({
                let c = canary_s.clone();
                move |r: &Path| {
                    mkdirs(r, "usr/local/Ascend/driver");
                    symlink(
                        format!("{c}/secret"),
                        r.join("usr/local/Ascend/driver/version.info"),
                    )
                    .unwrap();
                }
            }),
        ),
        (
            "usr/local/Ascend -> dangling",
            Box::new(|r: &Path| {
                mkdirs(r, "usr/local");
                symlink("/nonexistent/deeper", r.join("usr/local/Ascend")).unwrap();
            }),
        ),
    ];
    let mut outcomes = Vec::new();
    for (name, plant) in &variants {
        for path in MountPath::ALL {
            let name = format!("{name} ({path:?})");
            let result = attempt(&host, path, plant);
            if let Ok(out) = &result {
                // Mounted: the driver's files are what the container sees.
                assert!(
                    out.contains("Version=24.1.0") && out.contains("libascend_hal.so"),
                    "{name}: {out}"
                );
            }
            outcomes.push(format!(
                "{name}: {}",
                if result.is_ok() {
                    "mounted inside the rootfs"
                } else {
                    "failed closed"
                }
            ));
            assert_eq!(snapshot(&canary), before, "{name}: the canary tree changed");
            for p in HOST_PATHS {
                assert!(!Path::new(p).exists(), "{name}: created {p} on the host");
            }
        }
    }
    eprintln!("{}", outcomes.join("\n"));
    assert!(
        host.granted_cgroups().is_empty() || host.records().len() == host.granted_cgroups().len()
    );
}

/// A directory and a symlink to the canary swapped back and forth (renameat2 EXCHANGE) while
/// containers start: every start mounts inside its rootfs or fails; the canary never changes.
#[test]
fn swapping_between_check_and_use() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(1);
    let canary = host.dir.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("secret"), "do not touch\n").unwrap();
    let before = snapshot(&canary);
    let rootfs_dir = host.dir.path().join("shared-rootfs-parts");
    std::fs::create_dir_all(&rootfs_dir).unwrap();
    let stop = AtomicBool::new(false);
    let mut ok = 0;
    let mut failed = 0;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let stop = &stop;
        let swapper = s.spawn(move || {
            // Swap `usr/local/Ascend` of each new rootfs between a real directory and a
            // symlink to the canary until told to stop.
            let mut current: Option<PathBuf> = None;
            while !stop.load(Ordering::Relaxed) {
                while let Ok(r) = rx.try_recv() {
                    current = Some(r);
                }
                if let Some(r) = &current {
                    let _ = nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        &r.join("usr/local/Ascend"),
                        nix::fcntl::AT_FDCWD,
                        &r.join("usr/local/swap"),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                }
            }
        });
        // Ten starts on each mount path.
        for path in MountPath::ALL.into_iter().flat_map(|p| [p; 10]) {
            let tx = tx.clone();
            let c = canary.clone();
            let result = attempt(&host, path, move |r: &Path| {
                std::fs::create_dir_all(r.join("usr/local/Ascend")).unwrap();
                symlink(&c, r.join("usr/local/swap")).unwrap();
                tx.send(r.to_path_buf()).unwrap();
            });
            match result {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            assert_eq!(
                snapshot(&canary),
                before,
                "{path:?}: the canary tree changed"
            );
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
    });
    eprintln!(
        "swap race: {ok} started with their mounts inside the rootfs, {failed} failed closed"
    );
    assert_eq!(ok + failed, 30);
    assert!(host.records().is_empty(), "{:?}", host.records());
}
