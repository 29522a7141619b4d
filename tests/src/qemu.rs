//! Other kernels: Debian's kernels booted under qemu (TCG: this VM has no usable KVM) with an
//! initramfs holding busybox, runc with its libraries, the static release binaries and the
//! `kernel-guest` test, which writes its results to the guest's second serial port.
//! `cargo xtask setup` downloads the kernels (DESIGN.md section 6b); `cargo xtask test`
//! builds the release binaries and names both directories in the environment.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::run;

/// Where `cargo xtask setup` keeps the kernels (`NPU_TEST_KERNELS` overrides it).
pub const KERNELS_DEFAULT: &str = "/var/cache/npu-tests/kernels";

/// The guest's cgroup layouts: pure v2, v1 controllers with the v2 tree (hybrid), v1 only.
pub const LAYOUTS: [&str; 3] = ["v2", "hybrid", "v1"];

/// The directory holding the downloaded kernels.
pub fn kernels_dir() -> PathBuf {
    std::env::var_os("NPU_TEST_KERNELS").map_or_else(|| PathBuf::from(KERNELS_DEFAULT), Into::into)
}

/// The kernel image for release `series` (e.g. "5.10"), if downloaded.
pub fn kernel(series: &str) -> Option<PathBuf> {
    let prefix = format!("vmlinuz-{series}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(kernels_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The static release binaries (`NPU_RELEASE_DIR`, else the musl release directory).
pub fn release_dir() -> PathBuf {
    std::env::var_os("NPU_RELEASE_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/release")
        },
        Into::into,
    )
}

/// The binaries the guest needs from the release directory.
pub const GUEST_BINARIES: [&str; 5] = [
    "npu-container-runtime",
    "npu-container-hook",
    "npu-ctk",
    "devprobe",
    "kernel-guest",
];

/// The guest's /init. Stage one (in the initramfs) copies everything into a tmpfs and
/// switch_roots into it: runc cannot pivot_root out of an initramfs. Stage two mounts the
/// layout named on the kernel command line (`npu.layout=`), runs the test, and powers off.
const INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin:/usr/sbin:/usr/bin:/opt/npu
if [ ! -e /.stage2 ]; then
    mkdir -p /proc /sys /dev /newroot
    mount -t proc proc /proc
    mount -t tmpfs -o mode=0755 root /newroot
    for d in bin lib lib64 usr opt etc init; do cp -a /$d /newroot/; done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/run
    touch /newroot/.stage2
    umount /proc
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=0755 run /run
layout=$(sed -n 's/.*npu\.layout=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
cg=/sys/fs/cgroup
case "$layout" in
v2)
    mount -t cgroup2 none $cg
    ;;
hybrid|v1)
    mount -t tmpfs -o mode=0755 cgroup $cg
    for c in devices freezer pids memory cpu,cpuacct cpuset blkio; do
        mkdir -p $cg/$c && mount -t cgroup -o $c $c $cg/$c
    done
    if [ "$layout" = hybrid ]; then
        mkdir -p $cg/unified && mount -t cgroup2 none $cg/unified
    fi
    ;;
esac
echo "npu-guest: layout $layout, kernel $(uname -r)"
kernel-guest "$layout" /dev/ttyS1
echo "npu-guest: kernel-guest exited $?"
sync
poweroff -f
"#;

/// An initramfs for the guest, written under `dir`. `release` holds [`GUEST_BINARIES`].
pub fn build_initramfs(dir: &Path, release: &Path) -> PathBuf {
    let root = dir.join("initramfs");
    for sub in ["bin", "usr/sbin", "opt/npu", "etc", "dev"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // busybox and its applets.
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox (busybox-static) is installed");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in run(Command::new(busybox).arg("--list")).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    // runc, and the shared libraries it links. `runc` itself is kernel-guest's launcher,
    // which runs `runc.real` from a sealed memfd (see kernel-guest.rs: Debian's runc cannot
    // re-execute itself on 5.10 otherwise).
    let runc = run(Command::new("sh").args(["-c", "command -v runc"]));
    let runc = runc.trim();
    std::fs::copy(runc, root.join("usr/sbin/runc.real")).unwrap();
    std::os::unix::fs::symlink("/opt/npu/kernel-guest", root.join("usr/sbin/runc")).unwrap();
    for lib in run(Command::new("ldd").arg(runc))
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let target = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // ldd names links (e.g. /lib64/ld-linux-x86-64.so.2): copy what they point at.
        std::fs::copy(lib, &target).unwrap();
    }
    for name in GUEST_BINARIES {
        copy_release(release, name, &root.join("opt/npu"));
    }
    std::fs::write(root.join("init"), INIT).unwrap();
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    // The kernel opens /dev/console for init before anything is mounted.
    let _ = nix::sys::stat::mknod(
        &root.join("dev/console"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(5, 1),
    );
    let image = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . -print0 | cpio --null --quiet -o -H newc > {}",
            image.display()
        ))
        .current_dir(&root)
        .status()
        .expect("cpio");
    assert!(status.success(), "cpio failed");
    image
}

/// qemu under TCG (no usable KVM here) with `smp` CPUs and `memory` MiB, no display, no
/// reboot (a guest's reboot ends qemu), the console on the first serial port and results on
/// the second.
fn emulator(smp: &str, memory: &str, console: &Path, results: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", smp, "-m", memory])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// What one boot produced.
pub struct Boot {
    /// The guest test's results, one JSON object per line.
    pub results: Vec<serde_json::Value>,
    /// The kernel's and init's console output.
    pub console: String,
    pub seconds: f64,
}

/// Boots `kernel` with `initramfs` and the cgroup `layout`, waiting at most `limit`.
pub fn boot(kernel: &Path, initramfs: &Path, layout: &str, dir: &Path, limit: Duration) -> Boot {
    let tag = format!("{}-{layout}", kernel.file_name().unwrap().to_string_lossy());
    let console = dir.join(format!("{tag}.console"));
    let results = dir.join(format!("{tag}.results"));
    let started = Instant::now();
    // -smp 1: with two vCPUs the emulator sometimes hangs a guest (DESIGN.md 6b).
    let child = emulator("1", "1024", &console, &results)
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet npu.layout={layout}"))
        .spawn()
        .expect("qemu-system-x86_64");
    Boot::wait(child, started, limit, &console, &results)
}

impl Boot {
    /// Waits for the guest `child` to end (killing it after `limit`), then reads what it wrote
    /// to its two serial ports.
    fn wait(
        mut child: std::process::Child,
        started: Instant,
        limit: Duration,
        console: &Path,
        results: &Path,
    ) -> Boot {
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let text = std::fs::read_to_string(results).unwrap_or_default();
        Boot {
            results: text
                .lines()
                .filter_map(|l| serde_json::from_str(l.trim()).ok())
                .collect(),
            console: String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default())
                .into_owned(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Copies release binary `name` from `release` into directory `to`.
fn copy_release(release: &Path, name: &str, to: &Path) {
    let from = release.join(name);
    assert!(
        from.exists(),
        "{} is missing: build the release binaries (cargo xtask test does)",
        from.display()
    );
    std::fs::copy(&from, to.join(name)).unwrap();
}

/// The bytes of the files under `dir` (symbolic links not followed).
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Where `cargo xtask setup` keeps the node images (`NPU_TEST_NODES` overrides it).
pub const NODES_DEFAULT: &str = "/var/cache/npu-tests/nodes";

/// The directory holding the node images and `debs/`.
pub fn nodes_dir() -> PathBuf {
    std::env::var_os("NPU_TEST_NODES").map_or_else(|| PathBuf::from(NODES_DEFAULT), Into::into)
}

/// The directory of node image `suite` (its `node.img`, `vmlinuz` and `initrd.img`).
pub fn node_dir(suite: &str) -> PathBuf {
    nodes_dir().join(suite)
}

/// The seed of a node suite's random choices: `NPU_TEST_SEED`, else the clock (printed, so a
/// run can be repeated).
pub fn seed() -> u64 {
    let seed = std::env::var("NPU_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed {seed} (NPU_TEST_SEED={seed} repeats this run)");
    seed
}

/// xorshift64*, enough to vary majors and chips between runs.
pub struct Rng(u64);

impl Rng {
    /// A generator for one node: `seed` mixed with `salt` (xorshift never leaves a non-zero
    /// state).
    pub fn new(seed: u64, salt: u64) -> Self {
        Rng((seed ^ salt ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }
}

/// The simulated NPUs of a node's plan (`node-guest` reads `plan.json`): majors from the
/// local/experimental ranges no driver is given dynamically (60-63, 120-127), 2-16 chips, a
/// random non-empty request, a `--device` NPU, one NPU with a /dev/char link and one without.
pub fn node_plan(rng: &mut Rng) -> serde_json::Map<String, serde_json::Value> {
    let majors: Vec<u64> = (60..=63).chain(120..=127).collect();
    let major = majors[rng.next(majors.len() as u64) as usize];
    let mgmt_major = loop {
        let m = majors[rng.next(majors.len() as u64) as usize];
        if m != major {
            break m;
        }
    };
    let chips = 2 + rng.next(15);
    let mut request: Vec<u64> = (0..chips).filter(|_| rng.next(3) == 0).collect();
    if request.is_empty() {
        request.push(rng.next(chips));
    }
    let linked = rng.next(chips);
    let unlinked = (linked + 1 + rng.next(chips - 1)) % chips;
    let plan = serde_json::json!({
        "chips": chips,
        "major": major,
        "mgmt_major": mgmt_major,
        "request": request,
        "device": rng.next(chips),
        "linked": linked,
        "unlinked": unlinked,
        "podman": false,
        "runtimes": [],
        "containerds": [],
    });
    plan.as_object().cloned().unwrap()
}

/// A node's payload directory under `dir`: `binaries` from the release directory and
/// `plan.json`.
pub fn node_payload(dir: &Path, binaries: &[&str], plan: &serde_json::Value) -> PathBuf {
    let payload = dir.join("payload");
    std::fs::create_dir_all(&payload).unwrap();
    let release = release_dir();
    for name in binaries {
        copy_release(&release, name, &payload);
    }
    std::fs::write(payload.join("plan.json"), plan.to_string()).unwrap();
    payload
}

/// A node of image `image_dir` for one suite: a copy-on-write disk over the image (what the
/// guest changes stays across its reboots, never in the image) and a read-only payload disk.
pub struct NodeGuest {
    image_dir: PathBuf,
    disk: PathBuf,
    payload: PathBuf,
    dir: PathBuf,
    boots: u32,
}

impl NodeGuest {
    /// `payload` is a directory the guest mounts at /opt/npu-test.
    pub fn new(image_dir: &Path, payload: &Path, dir: &Path) -> Self {
        let disk = dir.join("disk.qcow2");
        let image = image_dir.join("node.img");
        crate::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image)
                .arg(&disk),
        );
        let payload_img = dir.join("payload.img");
        // Room for the files and ext4's own (a sparse file: only what is written takes space).
        let mib = du(payload) / (1 << 20) * 5 / 4 + 64;
        crate::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(payload)
                .arg(&payload_img)
                .arg(format!("{}M", mib.max(256))),
        );
        Self {
            image_dir: image_dir.to_path_buf(),
            disk,
            payload: payload_img,
            dir: dir.to_path_buf(),
            boots: 0,
        }
    }

    /// Boots the node once (until it powers off or reboots: qemu runs with -no-reboot),
    /// waiting at most `limit`.
    pub fn boot(&mut self, limit: Duration) -> Boot {
        self.boots += 1;
        let console = self.dir.join(format!("boot{}.console", self.boots));
        let results = self.dir.join(format!("boot{}.results", self.boots));
        let started = Instant::now();
        let drive = |file: &Path, format: &str, extra: &str| {
            format!("file={},format={format},if=virtio{extra}", file.display())
        };
        // Two vCPUs: systemd, dockerd and Podman are CPU-bound under TCG (no hang seen in
        // these guests, unlike the initramfs kernels' one in 16 with two).
        let child = emulator("2", "3072", &console, &results)
            .arg("-kernel")
            .arg(self.image_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.image_dir.join("initrd.img"))
            .args(["-append", "root=/dev/vda rw console=ttyS0 panic=-1"])
            .arg("-drive")
            .arg(drive(&self.disk, "qcow2", ""))
            .arg("-drive")
            .arg(drive(&self.payload, "raw", ",readonly=on"))
            .args(["-nic", "none"])
            .spawn()
            .expect("qemu-system-x86_64");
        Boot::wait(child, started, limit, &console, &results)
    }
}
