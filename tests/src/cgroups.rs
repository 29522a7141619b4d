//! Real cgroups for the suites: test cgroups that clean up after themselves, and a private mount
//! namespace where cgroup2 is mounted at /sys/fs/cgroup (a pure v2 host, DESIGN.md section 6).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use npu_runtime::node::cgroup::Layout;

use crate::{run, unique};

/// The ids of the device programs named `npu_dev_guard` attached to cgroup `dir` (as the host
/// sees it), from bpftool.
pub fn guards_attached(dir: &Path) -> Vec<u64> {
    let out = run(Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(dir));
    let v: serde_json::Value =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "npu_dev_guard")
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// Where the unified (cgroup2) tree is mounted as seen from the host.
pub fn unified_mount() -> PathBuf {
    match Layout::detect().expect("cgroup layout") {
        Layout::Unified { root } => root.mount_point,
        Layout::Hybrid { unified, .. } => unified.mount_point,
        Layout::Legacy { .. } => panic!("no cgroup2 tree on this host"),
    }
}

/// Where the v1 devices controller is mounted, if it is.
pub fn devices_v1_mount() -> Option<PathBuf> {
    match Layout::detect().ok()? {
        Layout::Hybrid { devices, .. } | Layout::Legacy { devices } => Some(devices.mount_point),
        Layout::Unified { .. } => None,
    }
}

/// A cgroup created for a test under `root` (a cgroup mount as the host sees it); on drop
/// its processes are killed and it is removed, children first.
pub struct TestCgroup {
    pub root: PathBuf,
    /// Path relative to the mount root, e.g. `npu-test-1-3/sub`.
    pub rel: String,
}

impl TestCgroup {
    pub fn new(root: &Path, name: &str) -> Self {
        let cg = Self {
            root: root.to_path_buf(),
            rel: name.to_string(),
        };
        std::fs::create_dir(cg.dir()).unwrap_or_else(|e| panic!("mkdir {:?}: {e}", cg.dir()));
        cg
    }

    pub fn child(&self, name: &str) -> Self {
        Self::new(&self.root, &format!("{}/{name}", self.rel))
    }

    /// The directory as the host sees it.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.rel)
    }

    /// The directory as a process sees it when the same tree is mounted at `mount`.
    pub fn dir_under(&self, mount: &Path) -> PathBuf {
        mount.join(&self.rel)
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir().join(file), value)
            .unwrap_or_else(|e| panic!("write {value:?} to {file} of {:?}: {e}", self.dir()));
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir().join(file)).unwrap_or_default()
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.dir()).expect("cgroup dir").ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        kill_and_remove(&self.dir());
    }
}

fn kill_and_remove(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_and_remove(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}

/// A persistent private mount namespace in which cgroup2 is mounted over /sys/fs/cgroup, so
/// everything run in it (runc included) sees a pure cgroup v2 host. Commands enter it with
/// nsenter; the host keeps its own view. Removed on drop.
pub struct V2Namespace {
    holder: PathBuf,
    ns_file: PathBuf,
}

impl V2Namespace {
    pub fn new() -> Self {
        // Make sure bpffs is on the host before the namespace copies the mount table, so
        // pins made inside are the host's.
        npu_runtime::enforce::guard::mount_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs");
        let holder = Path::new("/run/npu-tests").join(unique("ns"));
        std::fs::create_dir_all(&holder).unwrap();
        // A namespace file can only be bind-mounted on a private mount.
        run(Command::new("mount")
            .args(["-t", "tmpfs", "npu-test-ns"])
            .arg(&holder));
        run(Command::new("mount").arg("--make-private").arg(&holder));
        let ns_file = holder.join("mnt");
        std::fs::write(&ns_file, "").unwrap();
        run(Command::new("unshare")
            .arg(format!("--mount={}", ns_file.display()))
            .args(["--propagation", "private", "mount", "-t", "cgroup2", "none"])
            .arg("/sys/fs/cgroup"));
        Self { holder, ns_file }
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.ns_file.display()))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Default for V2Namespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for V2Namespace {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.ns_file).status();
        let _ = Command::new("umount").arg(&self.holder).status();
        let _ = std::fs::remove_dir(&self.holder);
    }
}

/// Where a command runs: on the host, or inside a [`V2Namespace`].
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Host,
    V2(&'a V2Namespace),
}

impl Place<'_> {
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Self::Host => Command::new(program),
            Self::V2(ns) => ns.command(program),
        }
    }

    /// Where the cgroup2 tree is mounted as seen from this place.
    pub fn unified_mount(&self) -> PathBuf {
        match self {
            Self::Host => unified_mount(),
            Self::V2(_) => PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Runs `test` on a pure cgroup v2 host (a [`V2Namespace`]) and on this host's cgroup v1.
pub fn each_cgroup_mode(test: impl Fn(Place<'_>, &str)) {
    let ns = V2Namespace::new();
    test(Place::V2(&ns), "cgroup v2");
    test(Place::Host, "cgroup v1");
}

/// Runs `f` on a thread of its own in a private mount namespace: what it mounts, and what the
/// processes it starts mount, never reaches the host's mount table (suites running beside it
/// check that table). Its panic is the caller's.
pub fn in_private_mount_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        use nix::{mount::MsFlags, sched::CloneFlags};
        // One thread of a multi-threaded process may take a mount namespace of its own; it
        // lives as long as the thread and the processes it starts.
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make the namespace's mounts private");
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
