//! Driver mounts on every mount path the hook has: this kernel's (`mount_setattr`, 5.12+), the
//! 5.2 - 5.11 one (no `mount_setattr`: attach, then remount) and the pre-5.2 one (no
//! `open_tree`, `move_mount`, `openat2`: bind mount through /proc/self/fd, then remount),
//! the older ones forced by hiding their syscalls with seccomp. Each is read-only, nosuid and
//! nodev inside the container, on a pure cgroup v2 host and on cgroup v1. (The hostile-image
//! suite runs through every path too.)
use npu_tests::{
    cgroups::each_cgroup_mode,
    host::FakeHost,
    require_root, require_tools,
    runc::{RuncContainer, expect_only},
    syscalls::MountPath,
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

/// The mount options of `path` in the container's mountinfo (the last mount there).
fn mount_options(c: &RuncContainer<'_>, path: &str) -> String {
    let (ok, text) = c.sh("cat /proc/self/mountinfo");
    assert!(ok, "{text}");
    text.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_else(|| panic!("{path} is not a mount point:\n{text}"))
        .to_string()
}

#[test]
fn driver_mounts_are_read_only_on_every_mount_path() {
    if !can_run() {
        return;
    }
    each_cgroup_mode(|place, mode| {
        for path in MountPath::ALL {
            let ctx = format!("{mode}, {path:?}");
            let host = FakeHost::new(2);
            let c = RuncContainer::start_with_env(
                place,
                host.dir.path(),
                &path.runtime(host.dir.path()),
                &host.config_path,
                |spec| {
                    spec["process"]["env"]
                        .as_array_mut()
                        .unwrap()
                        .push("ASCEND_VISIBLE_DEVICES=1".into());
                },
            )
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let log = std::fs::read_to_string(host.dir.path().join("runtime.log")).unwrap();
            assert!(
                log.contains(&format!("mount_api={}", path.api())),
                "{ctx}: the hook did not use the {} path:\n{log}",
                path.api()
            );
            let (ok, text) = c.sh(
                "cat /usr/local/Ascend/driver/version.info /usr/local/Ascend/driver/lib64/libascend_hal.so",
            );
            assert!(
                ok && text.contains("Version=24.1.0") && text.contains("fake driver"),
                "{ctx}: {text}"
            );
            for (file, write) in [
                ("/usr/local/Ascend/driver/version.info", "echo x > "),
                ("/usr/local/Ascend/driver/lib64", "touch "),
            ] {
                let target = if write == "touch " {
                    format!("{file}/new")
                } else {
                    file.to_string()
                };
                let (ok, text) = c.sh(&format!("{write}{target}"));
                assert!(
                    !ok && text.contains("Read-only file system"),
                    "{ctx}: {file} is writable: {text}"
                );
                let options = mount_options(&c, file);
                for want in ["ro", "nosuid", "nodev"] {
                    assert!(
                        options.split(',').any(|o| o == want),
                        "{ctx}: {file} mounted {options}, without {want}"
                    );
                }
            }
            assert_eq!(
                c.chip_verdicts(&host),
                expect_only(&[1], host.chips),
                "{ctx}"
            );
            drop(c);
            assert!(host.records().is_empty(), "{ctx}: {:?}", host.records());
        }
    });
}

#[test]
fn a_bad_source_fails_the_container_on_every_mount_path() {
    if !can_run() {
        return;
    }
    for path in MountPath::ALL {
        let host = FakeHost::new(1);
        // World-writable driver file: refused before anything is mounted.
        let file = host
            .dir
            .path()
            .join("driver/usr/local/Ascend/driver/version.info");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let err = RuncContainer::start_with_env(
            npu_tests::cgroups::Place::Host,
            host.dir.path(),
            &path.runtime(host.dir.path()),
            &host.config_path,
            |spec| {
                spec["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push("ASCEND_VISIBLE_DEVICES=0".into());
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{path:?}: a world-writable source was mounted"));
        assert!(
            err.contains("version.info") && err.contains("world-writable"),
            "{path:?}: {err}"
        );
        assert!(host.records().is_empty(), "{path:?}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{path:?}");
    }
}
