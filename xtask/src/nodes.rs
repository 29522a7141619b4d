//! The node images the node suites boot under qemu (DESIGN.md 6c): Debian roots with systemd
//! as PID 1 and the engines from Debian's packages, built by mmdebstrap from the machine's own
//! archive and kept as ext4 disk images with their kernel and initrd beside them. An image is
//! rebuilt when its recipe (suite, packages, files written into it) changes.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    Result,
    apt::{Mirror, Private, downloaded_deb},
    run,
};

/// Where the images are kept (tests/src/qemu.rs reads the same default).
pub const NODE_CACHE: &str = "/var/cache/npu-tests/nodes";

/// One node image.
#[derive(Debug)]
pub struct Node {
    /// The image's name and the Debian suite it is built from.
    pub suite: &'static str,
    pub packages: &'static [&'static str],
}

/// What every node has: systemd as PID 1 with udev and D-Bus, Debian's cloud kernel (its
/// initrd made inside), the engines, and what the guest test runs (busybox for container
/// roots, bpftool, ip, tar).
const BASE: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "kmod",
    "iproute2",
    "busybox-static",
    "bpftool",
    "docker.io",
    "containerd",
    "runc",
];

/// The current node (Debian 13: kernel 6.12, systemd 257, Docker 26.1 with its CLI packaged
/// apart, containerd 1.7, runc 1.1.15, Podman 5.4 over crun 1.21, and what runc's own suite
/// runs) and the old one (Debian 11:
/// kernel 5.10, the series of openEuler 22.03 LTS, systemd 247, Docker 20.10, runc 1.0;
/// Docker refuses unprivileged containers there without AppArmor's parser).
pub const NODES: [Node; 2] = [
    Node {
        suite: "trixie",
        // bats, jq, gawk and a static C build (dev.bats compiles its device probe): runc's
        // own suite (tests/tests/node_runc_suite.rs).
        packages: &[
            "docker-cli",
            "podman",
            "crun",
            "bats",
            "jq",
            "gawk",
            "gcc",
            "libc6-dev",
        ],
    },
    Node {
        suite: "bullseye",
        packages: &["apparmor"],
    },
];

/// The unit that runs the guest test from the second disk on every boot, once the engines are
/// up. The test decides what this boot does (a suite may reboot the node between its parts).
const GUEST_UNIT: &str = "[Unit]
Description=npu-container-runtime node tests (from the second disk)
After=docker.service containerd.service systemd-udev-settle.service local-fs.target
Wants=docker.service containerd.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /opt/npu-test && mount -o ro /dev/vdb /opt/npu-test && exec /opt/npu-test/node-guest'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
";

/// Files written into every image: (path, contents).
const FILES: &[(&str, &str)] = &[
    ("etc/fstab", "/dev/vda / ext4 rw 0 0\n"),
    ("etc/hostname", "npu-node\n"),
    ("etc/systemd/system/npu-guest.service", GUEST_UNIT),
];

/// Units enabled (linked into multi-user.target.wants) and masked (nothing on the node needs
/// them and each costs seconds of an emulated boot).
const ENABLED: &[&str] = &["npu-guest.service"];
const MASKED: &[&str] = &[
    "systemd-networkd-wait-online.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "serial-getty@ttyS0.service",
];

impl Node {
    /// The image's directory in `cache`.
    pub fn dir(&self, cache: &Path) -> PathBuf {
        cache.join(self.suite)
    }

    /// The recipe as text, kept beside the image: a changed package list or file rebuilds it.
    fn recipe(&self) -> String {
        format!(
            "{:#?}\n",
            (self.suite, BASE, self.packages, FILES, ENABLED, MASKED)
        )
    }

    /// Builds the image unless one of this recipe is there.
    pub fn ensure(&self, cache: &Path, mirror: &Mirror) -> Result {
        let dir = self.dir(cache);
        let stamp = dir.join("recipe");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == self.recipe()) {
            return Ok(());
        }
        eprintln!(
            "xtask setup: the {} node image (systemd, Docker{}) from Debian's packages, for \
             the node suite (about a minute)",
            self.suite,
            if self.packages.contains(&"podman") {
                ", Podman"
            } else {
                ""
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let include: Vec<&str> = BASE.iter().chain(self.packages).copied().collect();
        run(Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet"])
            .arg(format!("--include={}", include.join(",")))
            .arg(self.suite)
            .arg(&root)
            .arg(format!("deb {} {} main", mirror.archive, self.suite)))?;
        for (path, text) in FILES {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).map_err(|e| e.to_string())?;
            std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        let units = root.join("etc/systemd/system");
        let wants = units.join("multi-user.target.wants");
        std::fs::create_dir_all(&wants).map_err(|e| e.to_string())?;
        for unit in ENABLED {
            link(&format!("/etc/systemd/system/{unit}"), &wants.join(unit))?;
        }
        for unit in MASKED {
            link("/dev/null", &units.join(unit))?;
        }
        // The kernel and initrd boot from outside the image (qemu -kernel/-initrd).
        for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
            let found = std::fs::read_dir(root.join("boot"))
                .map_err(|e| format!("{}/boot: {e}", root.display()))?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .ok_or_else(|| format!("the {} root has no /boot/{prefix}*", self.suite))?;
            std::fs::copy(&found, dir.join(name)).map_err(|e| e.to_string())?;
        }
        // A sparse image written from the directory, without mounting anything.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "npu-node", "-d"])
            .arg(&root)
            .arg(dir.join("node.img"))
            .arg("6G"))?;
        std::fs::remove_dir_all(&root).map_err(|e| e.to_string())?;
        std::fs::write(&stamp, self.recipe()).map_err(|e| e.to_string())
    }
}

fn link(target: &str, at: &Path) -> Result {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).map_err(|e| format!("{}: {e}", at.display()))
}

/// Newer packages the trixie node installs over its own with `dpkg -i` (their glibc 2.38 is
/// there): runc 1.3 and 1.4 under its low-level runtime checks, containerd 2.1 under its CRI
/// checks. (package, suite), kept as `debs/PACKAGE-SUITE.deb`.
pub const NEWER_PACKAGES: [(&str, &str); 3] = [
    ("runc", "sid"),
    ("runc", "experimental"),
    ("containerd", "sid"),
];

/// Downloads [`NEWER_PACKAGES`] that are not kept yet, with a private apt configuration.
fn newer_packages(cache: &Path, mirror: &Mirror) -> Result {
    let debs = cache.join("debs");
    for (package, suite) in NEWER_PACKAGES {
        let kept = debs.join(format!("{package}-{suite}.deb"));
        if kept.exists() {
            continue;
        }
        eprintln!(
            "xtask setup: {package} from Debian {suite}, for the trixie node's checks (under a \
             minute)"
        );
        let dir = debs.join(format!("apt-{suite}"));
        let apt = Private::new(&dir, &mirror.sources("deb", &[suite], false))?;
        run(apt
            .command("apt-get")
            .args(["download", "-qq", &format!("{package}/{suite}")])
            .current_dir(&dir))?;
        let deb = downloaded_deb(&dir, &format!("{package}/{suite}"))?;
        std::fs::rename(&deb, &kept).map_err(|e| e.to_string())?;
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Builds every node image that is missing or out of date, and fetches the newer packages.
pub fn ensure() -> Result {
    let mirror = Mirror::of_this_machine()?;
    let cache = Path::new(NODE_CACHE);
    for node in &NODES {
        node.ensure(cache, &mirror)?;
    }
    newer_packages(cache, &mirror)
}
