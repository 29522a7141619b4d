//! Fixtures for the end-to-end suites: fake NPUs, real cgroups, a private mount namespace
//! where cgroup2 is mounted at /sys/fs/cgroup (a pure v2 host, DESIGN.md section 6), and the
//! probe that reports what a process in a cgroup may do with a device.
//!
//! Requirements (root, tools) are checked with [`require`]: under `CI=true` a missing one
//! fails the test; elsewhere the test says loudly that it skipped.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use npu_runtime::{node::cgroup::Layout, node::config::Config, node::devices::registered_majors};

pub mod engines;

/// Path of a binary of this workspace: this package's helpers (`devprobe`, `guardctl`) or the
/// runtime's (`npu-container-runtime`, `npu-container-hook`, built for the runtime's own CLI
/// tests). Cargo puts them next to the `deps/` directory that holds the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Test executables live in deps/, helper binaries (and the demo) one level up.
    let dir = exe.parent().expect("executable directory");
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("binary {name} is not built next to {}", exe.display()))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, for cgroups, bpffs dirs and namespaces.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether a test may run. A missing requirement fails under `CI=true`, and is reported as a
/// skip (on stderr, with the reason) elsewhere.
pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        assert!(!in_ci(), "CI=true but the test environment lacks: {what}");
        eprintln!("SKIPPED: this test needs {what}");
    }
    ok
}

pub fn require_root() -> bool {
    require("root", nix::unistd::geteuid().is_root())
}

pub fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Char majors free on this host (not in /proc/devices), from the local/experimental range.
pub fn free_char_majors(n: usize) -> Vec<u32> {
    let used: BTreeSet<u32> =
        registered_majors(&std::fs::read_to_string("/proc/devices").expect("read /proc/devices"))
            .into_iter()
            .filter(|c| c.dev_type.letter() == 'c')
            .map(|c| c.major)
            .collect();
    let free: Vec<u32> = (234..=254).filter(|m| !used.contains(m)).take(n).collect();
    assert_eq!(
        free.len(),
        n,
        "not enough free char majors for fake devices"
    );
    free
}

/// A simulated NPU host: device nodes with majors no driver owns (opening an allowed node
/// gives ENXIO, a denied one EPERM), a config pointing at them, and a private bpffs dir.
pub struct FakeHost {
    pub dir: tempfile::TempDir,
    pub dev_root: PathBuf,
    /// Where probes may mknod.
    pub scratch: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub chip_major: u32,
    pub mgmt_major: u32,
    /// Major of `other0`, a device outside the guarded classes.
    pub other_major: u32,
    /// Major of the virtual NPUs `vdavinci0..chips`.
    pub virtual_major: u32,
    pub chips: u32,
}

impl FakeHost {
    pub fn new(chips: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("npu-test-")
            .tempdir()
            .expect("tempdir");
        let dev_root = dir.path().join("dev");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&dev_root).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let [chip_major, mgmt_major, other_major, virtual_major] = free_char_majors(4)[..] else {
            unreachable!()
        };
        let mknod = |name: &str, major: u32, minor: u32| {
            nix::sys::stat::mknod(
                &dev_root.join(name),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major.into(), minor.into()),
            )
            .unwrap_or_else(|e| panic!("mknod {name}: {e}"));
        };
        for i in 0..chips {
            mknod(&format!("davinci{i}"), chip_major, i);
            mknod(&format!("vdavinci{i}"), virtual_major, i);
        }
        for (minor, name) in ["davinci_manager", "devmm_svm", "hisi_hdc"]
            .iter()
            .enumerate()
        {
            mknod(name, mgmt_major, minor as u32);
        }
        mknod("other0", other_major, 0);

        // A driver tree and the default mount list, as on an Ascend host.
        let driver_root = dir.path().join("driver");
        let lib64 = driver_root.join("usr/local/Ascend/driver/lib64");
        std::fs::create_dir_all(&lib64).unwrap();
        std::fs::write(lib64.join("libascend_hal.so"), "fake driver library\n").unwrap();
        std::fs::write(
            driver_root.join("usr/local/Ascend/driver/version.info"),
            "Version=24.1.0\n",
        )
        .unwrap();
        let mount_lists = dir.path().join("mounts.d");
        std::fs::create_dir_all(&mount_lists).unwrap();
        std::fs::write(
            mount_lists.join("base.list"),
            "# driver\n/usr/local/Ascend/driver/lib64\n/usr/local/Ascend/driver/version.info\n\
             /usr/local/Ascend/not-installed\n",
        )
        .unwrap();

        let bpf_dir = Path::new("/sys/fs/bpf").join(unique("npu-test"));
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            format!(
                "dev_root = {:?}\ndriver_root = {:?}\nbpf_dir = {:?}\nstate_dir = {:?}\n\
                 mount_list_dir = {:?}\nlog_file = {:?}\nlog_level = \"debug\"\n",
                dev_root,
                driver_root,
                bpf_dir,
                dir.path().join("state"),
                mount_lists,
                dir.path().join("runtime.log"),
            ),
        )
        .unwrap();
        let config = Config::from_file(&config_path).expect("test config");
        Self {
            dir,
            dev_root,
            scratch,
            config_path,
            config,
            chip_major,
            mgmt_major,
            other_major,
            virtual_major,
            chips,
        }
    }

    pub fn node(&self, name: &str) -> PathBuf {
        self.dev_root.join(name)
    }

    pub fn chip(&self, index: u32) -> PathBuf {
        self.node(&format!("davinci{index}"))
    }

    /// Container records currently in the state directory.
    pub fn records(&self) -> Vec<String> {
        std::fs::read_dir(&self.config.state_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// cgroup ids with entries in the pinned grant maps (every pinned version).
    pub fn granted_cgroups(&self) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        for version in
            npu_runtime::enforce::guard::versions(&self.config.bpf_dir).unwrap_or_default()
        {
            let pin = self.config.bpf_dir.join(version).join("npu_grants");
            let dump = run(Command::new("bpftool")
                .args(["-j", "map", "dump", "pinned"])
                .arg(&pin));
            let entries: serde_json::Value = serde_json::from_str(&dump).unwrap();
            for e in entries.as_array().unwrap() {
                ids.insert(e["formatted"]["key"]["cgroup_id"].as_u64().unwrap());
            }
        }
        ids
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config.bpf_dir);
    }
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
        npu_runtime::enforce::guard::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs");
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

/// One probe verdict: operation, path, `OK` or errno name.
pub type Verdict = (String, String, String);

/// Runs `devprobe` at `place` after joining `cgroups` (paths as seen from `place`).
pub fn probe(place: Place<'_>, cgroups: &[PathBuf], ops: &[String]) -> Vec<Verdict> {
    let mut cmd = place.command(bin("devprobe"));
    for cg in cgroups {
        cmd.arg("--join").arg(cg);
    }
    cmd.args(ops);
    run(&mut cmd)
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, ' ');
            (
                p.next().unwrap_or_default().to_string(),
                p.next().unwrap_or_default().to_string(),
                p.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A process parked in `cgroups` (paths as seen from `place`), like a container's init.
pub struct Holder {
    child: Child,
}

impl Holder {
    pub fn start(place: Place<'_>, cgroups: &[PathBuf], host_view: &TestCgroup) -> Self {
        let mut cmd = place.command(bin("devprobe"));
        for cg in cgroups {
            cmd.arg("--join").arg(cg);
        }
        let child = cmd
            .args(["exec", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn holder");
        let pid = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !host_view.read("cgroup.procs").lines().any(|l| l == pid) {
            assert!(Instant::now() < deadline, "holder never joined its cgroup");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ops that read, write and mknod `node` (mknod into `scratch`).
pub fn rwm_ops(node: &Path, major: u32, minor: u32, scratch: &Path) -> Vec<String> {
    let name = node.file_name().unwrap().to_string_lossy();
    vec![
        format!("read:{}", node.display()),
        format!("write:{}", node.display()),
        format!(
            "mknod:{}:{major}:{minor}",
            scratch.join(format!("{name}-m")).display()
        ),
    ]
}

/// Ops over every fake node plus a few host devices.
pub fn all_ops(host: &FakeHost) -> Vec<String> {
    let mut ops = Vec::new();
    for i in 0..host.chips {
        ops.extend(rwm_ops(&host.chip(i), host.chip_major, i, &host.scratch));
    }
    for (minor, name) in ["davinci_manager", "devmm_svm", "hisi_hdc"]
        .iter()
        .enumerate()
    {
        ops.extend(rwm_ops(
            &host.node(name),
            host.mgmt_major,
            minor as u32,
            &host.scratch,
        ));
    }
    ops.extend(rwm_ops(
        &host.node("other0"),
        host.other_major,
        0,
        &host.scratch,
    ));
    ops.push("read:/dev/null".into());
    ops
}

pub fn verdict<'a>(v: &'a [Verdict], op: &str, path_end: &str) -> &'a str {
    v.iter()
        .find(|(o, p, _)| o == op && p.ends_with(path_end))
        .map(|(_, _, r)| r.as_str())
        .unwrap_or_else(|| panic!("no {op} verdict for {path_end} in {v:?}"))
}

/// Granted nodes: ENXIO on open (allowed, no driver), mknod OK; other guarded nodes: EPERM
/// for everything; non-guarded devices untouched.
pub fn assert_matrix(host: &FakeHost, v: &[Verdict], granted: &[u32], management: bool, ctx: &str) {
    let check = |name: &str, allowed: bool| {
        let (open, mk) = if allowed {
            ("ENXIO", "OK")
        } else {
            ("EPERM", "EPERM")
        };
        assert_eq!(
            verdict(v, "read", &format!("/{name}")),
            open,
            "{ctx}: read {name}"
        );
        assert_eq!(
            verdict(v, "write", &format!("/{name}")),
            open,
            "{ctx}: write {name}"
        );
        assert_eq!(
            verdict(v, "mknod", &format!("/{name}-m")),
            mk,
            "{ctx}: mknod {name}"
        );
    };
    for i in 0..host.chips {
        check(&format!("davinci{i}"), granted.contains(&i));
    }
    for name in ["davinci_manager", "devmm_svm", "hisi_hdc"] {
        check(name, management);
    }
    assert_eq!(
        verdict(v, "read", "/other0"),
        "ENXIO",
        "{ctx}: non-guarded node"
    );
    assert_eq!(
        verdict(v, "mknod", "/other0-m"),
        "OK",
        "{ctx}: non-guarded mknod"
    );
    assert_eq!(verdict(v, "read", "/dev/null"), "OK", "{ctx}: /dev/null");
}

/// Runs the `guardctl` helper at `place` with the fake host's config.
pub fn guardctl(place: Place<'_>, host: &FakeHost, args: &[&str]) -> String {
    run(place
        .command(bin("guardctl"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .args(args))
}

/// A busybox root filesystem for containers.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox (busybox-static) is installed");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "ls", "mknod", "sleep", "true", "rm", "stat", "grep", "mount",
        "touch", "test",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    rootfs
}

/// Writes a busybox bundle under `dir/name`: `runc spec` with the rootfs, no terminal, a
/// writable root, CAP_MKNOD (as Docker gives; without it mknod fails before the device cgroup
/// is asked), `args`, then `edit`. Returns the bundle and the spec bytes written.
pub fn write_bundle(
    dir: &Path,
    name: &str,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> (PathBuf, Vec<u8>) {
    let bundle = dir.join(name);
    std::fs::create_dir_all(&bundle).unwrap();
    let rootfs = busybox_rootfs(&bundle);
    run(Command::new("runc").arg("spec").current_dir(&bundle));
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(args);
    for set in ["bounding", "effective", "permitted"] {
        if let Some(caps) = spec["process"]["capabilities"][set].as_array_mut() {
            caps.push("CAP_MKNOD".into());
        }
    }
    edit(&mut spec);
    let bytes = serde_json::to_vec_pretty(&spec).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    (bundle, bytes)
}

/// A runc container running `sleep` from a busybox bundle, deleted on drop.
pub struct RuncContainer<'a> {
    pub place: Place<'a>,
    pub id: String,
    pub root: PathBuf,
    pub bundle: PathBuf,
}

impl<'a> RuncContainer<'a> {
    /// Writes a bundle whose spec `edit` may change (devices, resources, env), then
    /// `runc run -d` it through `runtime` (plain runc or our shim).
    pub fn start(
        place: Place<'a>,
        dir: &Path,
        runtime: &Path,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Self, String> {
        Self::start_inner(place, dir, runtime, None, edit)
    }

    /// Like [`Self::start`], with the runtime told where our configuration file is.
    pub fn start_with_env(
        place: Place<'a>,
        dir: &Path,
        runtime: &Path,
        config: &Path,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Self, String> {
        Self::start_inner(place, dir, runtime, Some(config), edit)
    }

    fn start_inner(
        place: Place<'a>,
        dir: &Path,
        runtime: &Path,
        config: Option<&Path>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Self, String> {
        let id = unique("npu-ctr");
        let root = dir.join(format!("{id}-state"));
        let (bundle, _) = write_bundle(dir, &id, &["sleep", "3600"], edit);
        let container = Self {
            place,
            id,
            root,
            bundle,
        };
        // The container inherits these descriptors: no pipe we would wait on for EOF.
        let errors = dir.join(format!("{}.stderr", container.id));
        let mut cmd = place.command(runtime);
        if let Some(config) = config {
            cmd.env(npu_runtime::node::config::PATH_ENV, config);
        }
        let status = cmd
            .arg("--root")
            .arg(&container.root)
            .args(["run", "-d", "--bundle"])
            .arg(&container.bundle)
            .arg(&container.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors).unwrap())
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(container)
        } else {
            // Hook errors reach us inside runc's own message, with their quotes escaped.
            Err(std::fs::read_to_string(&errors)
                .unwrap_or_default()
                .replace("\\\"", "\""))
        }
    }

    /// Verdict for device `major:minor` in the container: mknod it in /tmp, then open it.
    /// `ENXIO` means allowed (no driver behind it), `EPERM` denied.
    pub fn node_verdict(&self, major: u32, minor: u32) -> String {
        let n = format!("/tmp/n{major}_{minor}");
        let (ok, text) = self.sh(&format!(
            "rm -f {n}; mknod {n} c {major} {minor} && cat {n} </dev/null >/dev/null; r=$?; rm -f {n}; exit $r"
        ));
        errno_of(ok, &text)
    }

    /// The verdict for every chip of `host` from inside the container: ENXIO allowed, EPERM
    /// denied.
    pub fn chip_verdicts(&self, host: &FakeHost) -> Vec<String> {
        (0..host.chips)
            .map(|i| self.node_verdict(host.chip_major, i))
            .collect()
    }

    pub fn runc(&self) -> Command {
        let mut cmd = self.place.command("runc");
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    pub fn pid(&self) -> u32 {
        let state = run(self.runc().args(["state", &self.id]));
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        state["pid"].as_u64().expect("pid") as u32
    }

    /// Runs a shell snippet in the container; returns (success, stdout + stderr).
    pub fn sh(&self, script: &str) -> (bool, String) {
        let out = self
            .runc()
            .args(["exec", &self.id, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("runc exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// The container's cgroup as `/proc/PID/cgroup` names it in the unified tree.
    pub fn unified_path(&self) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("unified cgroup line")
            .to_string()
    }
}

impl Drop for RuncContainer<'_> {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Opens `path` for reading in a container and names the outcome: `ENXIO`, `EPERM`, `ENOENT`
/// or `OK`, from busybox's error text.
pub fn open_verdict(container: &RuncContainer<'_>, path: &str) -> String {
    let (ok, text) = container.sh(&format!("cat {path} </dev/null >/dev/null"));
    errno_of(ok, &text)
}

pub fn errno_of(ok: bool, text: &str) -> String {
    if ok {
        "OK".into()
    } else if text.contains("No such device or address") {
        "ENXIO".into()
    } else if text.contains("Operation not permitted") {
        "EPERM".into()
    } else if text.contains("No such file or directory") {
        "ENOENT".into()
    } else {
        format!("other: {text}")
    }
}

/// The verdicts a container granted `granted` should see for NPUs `0..chips`.
pub fn expect_only(granted: &[u32], chips: u32) -> Vec<String> {
    (0..chips)
        .map(|i| {
            if granted.contains(&i) {
                "ENXIO"
            } else {
                "EPERM"
            }
            .to_string()
        })
        .collect()
}

/// Starts a sleeping container through npu-container-runtime asking for `npus`.
pub fn start_npu<'a>(
    place: Place<'a>,
    host: &FakeHost,
    npus: &str,
) -> Result<RuncContainer<'a>, String> {
    RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &bin("npu-container-runtime"),
        &host.config_path,
        |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(format!("ASCEND_VISIBLE_DEVICES={npus}").into());
        },
    )
}

/// Runs `test` on a pure cgroup v2 host (a [`V2Namespace`]) and on this host's cgroup v1.
pub fn each_cgroup_mode(test: impl Fn(Place<'_>, &str)) {
    let ns = V2Namespace::new();
    test(Place::V2(&ns), "cgroup v2");
    test(Place::Host, "cgroup v1");
}

/// Runs `npu-ctk` with `host`'s configuration; returns success and stdout + stderr.
pub fn npu_ctk(host: &FakeHost, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("npu-ctk"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .args(args)
        .output()
        .expect("npu-ctk");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
