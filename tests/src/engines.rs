//! Engines for the suites. A private Docker daemon: its own data-root, exec-root, socket and
//! daemon.json (configured with `npu-ctk runtime configure --runtime=docker`), started on the
//! host or inside a [`crate::cgroups::V2Namespace`], stopped by pid.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{bin, cgroups::Place, host::FakeHost, run, runc::busybox_rootfs, unique};

pub struct Dockerd {
    child: Child,
    parents: ParentCgroups,
    pub socket: PathBuf,
    dir: PathBuf,
    /// The image every test container runs: busybox, imported from a local rootfs.
    pub image: String,
}

impl Dockerd {
    /// Starts dockerd at `place` with the "npu" runtime registered for `host`'s config.
    pub fn start(place: Place<'_>, host: &FakeHost) -> Self {
        Self::start_with(place, host, &[])
    }

    /// Like [`Self::start`], with more daemon flags (e.g. `--cgroup-parent=/x`).
    pub fn start_with(place: Place<'_>, host: &FakeHost, flags: &[&str]) -> Self {
        let dir = host.dir.path().join(unique("docker"));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = runtime_wrapper(&dir, host);
        let daemon_json = dir.join("daemon.json");
        run(Command::new(bin("npu-ctk"))
            .args(["runtime", "configure", "--runtime=docker", "--config"])
            .arg(&daemon_json)
            .arg("--runtime-path")
            .arg(&wrapper));
        Self::start_configured(place, dir, &daemon_json, flags)
    }

    /// Starts dockerd at `place` with a daemon.json already written (e.g. by an installed
    /// npu-ctk), keeping its state in `dir`.
    pub fn start_configured(
        place: Place<'_>,
        dir: PathBuf,
        daemon_json: &Path,
        flags: &[&str],
    ) -> Self {
        let parents = ParentCgroups::snapshot("docker");
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = place
            .command("dockerd")
            .arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut d = Self {
            child,
            parents,
            socket,
            dir,
            image: "npu-busybox".into(),
        };
        let mut info = d.docker();
        info.arg("info");
        wait_until_up(&mut d.child, &d.dir.join("dockerd.log"), info);
        let rootfs = busybox_rootfs(&d.dir.join("image"));
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let status = d
            .docker()
            .args(["import", "-", &d.image])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .expect("docker import");
        assert!(
            status.success() && tar.wait().is_ok_and(|s| s.success()),
            "docker import failed"
        );
        d
    }

    /// A `docker` client command for this daemon.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }

    /// `docker run` output and success (stdout + stderr together).
    pub fn output(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .docker()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `docker run --rm --runtime=npu` with `env` and `flags`, running the verdict script for
    /// chips `0..chips` of `major`: their verdicts.
    pub fn verdicts(&self, env: &[&str], flags: &[&str], major: u32, chips: u32) -> Vec<String> {
        let script = matrix_script(major, chips);
        let mut args = vec!["run", "--rm", "--runtime=npu"];
        for e in env {
            args.extend(["-e", e]);
        }
        args.extend(flags);
        args.extend([self.image.as_str(), "sh", "-c", &script]);
        let (_, out) = self.output(&args);
        parse_matrix(&out, chips)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first, so their poststop hooks run while the daemon is there.
        if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.docker().args(["rm", "-f", id]).output();
            }
        }
        stop(&mut self.child);
        self.parents.remove();
        // The daemon leaves its data-root mounts (overlay, netns) behind on the host.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
    }
}

/// Waits until `probe` succeeds against a daemon we started; panics with its log if the
/// daemon exits or a minute passes first.
fn wait_until_up(child: &mut Child, log: &Path, mut probe: Command) {
    let deadline = Instant::now() + Duration::from_secs(60);
    probe.stdout(Stdio::null()).stderr(Stdio::null());
    while !probe.status().is_ok_and(|s| s.success()) {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} did not come up:\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a daemon we started: SIGTERM, then SIGKILL after 20 s.
pub fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The parent cgroups an engine creates (`docker`, `libpod_parent`) and leaves behind, empty,
/// in every hierarchy. Those that did not exist when this test process first looked are
/// removed on request; the snapshot is per process, because tests run in parallel and a later
/// fixture would otherwise take a sibling's leftovers for the host's.
pub struct ParentCgroups(Vec<PathBuf>);

impl ParentCgroups {
    pub fn snapshot(name: &str) -> Self {
        static FIRST_SEEN: std::sync::Mutex<Vec<(String, Vec<PathBuf>)>> =
            std::sync::Mutex::new(Vec::new());
        let mut seen = FIRST_SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, paths)) = seen.iter().find(|(n, _)| n == name) {
            return Self(paths.clone());
        }
        let mut all = vec![PathBuf::from("/sys/fs/cgroup").join(name)];
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            all.extend(entries.flatten().map(|e| e.path().join(name)));
        }
        let absent: Vec<PathBuf> = all.into_iter().filter(|p| !p.exists()).collect();
        seen.push((name.to_string(), absent.clone()));
        Self(absent)
    }

    pub fn remove(&self) {
        fn remove_tree(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_tree(&e.path());
                    }
                }
            }
            // Fails harmlessly if a process still lives there.
            let _ = std::fs::remove_dir(dir);
        }
        for cg in &self.0 {
            remove_tree(cg);
        }
    }
}

/// The verdict script: for each NPU index, mknod a node and open it; prints `INDEX VERDICT`.
pub fn matrix_script(major: u32, chips: u32) -> String {
    format!(
        "for i in $(seq 0 {}); do rm -f /tmp/n$i; \
         if ! mknod /tmp/n$i c {major} $i 2>/tmp/e; then echo \"$i $(cat /tmp/e)\"; continue; fi; \
         cat /tmp/n$i </dev/null >/dev/null 2>/tmp/e; echo \"$i $(cat /tmp/e)\"; done",
        chips - 1
    )
}

/// Parses [`matrix_script`] output into ENXIO/EPERM verdicts per index.
pub fn parse_matrix(text: &str, chips: u32) -> Vec<String> {
    (0..chips)
        .map(|i| {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{i} ")))
                .unwrap_or_else(|| panic!("no verdict for NPU {i} in:\n{text}"));
            crate::runc::errno_of(false, line)
        })
        .collect()
}

/// Podman with private storage (`--root`/`--runroot`, vfs), cgroupfs, file events and no
/// network, at a place; its image is busybox imported from a local rootfs.
pub struct Podman<'a> {
    place: Place<'a>,
    parents: ParentCgroups,
    dir: PathBuf,
    conf: PathBuf,
    pub image: String,
    v2: bool,
}

impl<'a> Podman<'a> {
    /// Sets podman up for `host`; its containers.conf registers the "npu" runtime through
    /// `npu-ctk runtime configure --runtime=podman`.
    pub fn new(place: Place<'a>, host: &FakeHost) -> Self {
        let dir = host.dir.path().join(unique("podman"));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = runtime_wrapper(&dir, host);
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        run(Command::new(bin("npu-ctk"))
            .args(["runtime", "configure", "--runtime=podman", "--config"])
            .arg(&conf)
            .arg("--runtime-path")
            .arg(&wrapper));
        let p = Self {
            place,
            parents: ParentCgroups::snapshot("libpod_parent"),
            dir,
            conf,
            image: "localhost/npu-busybox".into(),
            v2: matches!(place, Place::V2(_)),
        };
        let rootfs = busybox_rootfs(&p.dir.join("image"));
        let tarball = p.dir.join("image.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg("."));
        run(p.podman().arg("import").arg(&tarball).arg(&p.image));
        p
    }

    pub fn podman(&self) -> Command {
        let mut cmd = self.place.command("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]);
        cmd
    }

    /// `podman [global] run --rm <args>` with this VM's limits; returns success and output.
    pub fn run(&self, global: &[&str], args: &[&str]) -> (bool, String) {
        let mut cmd = self.podman();
        cmd.args(global).args(["run", "--rm", "--network", "none"]);
        // This VM's limits (DESIGN.md section 6); its cgroup2 tree has no pids controller.
        cmd.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        if self.v2 {
            cmd.args(["--pids-limit", "0"]);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        self.parents.remove();
    }
}

/// A script that runs npu-container-runtime with `host`'s configuration: engines start
/// runtimes with their own environment.
pub fn runtime_wrapper(dir: &Path, host: &FakeHost) -> PathBuf {
    let wrapper = dir.join("npu-runtime-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport {}={}\nexec {} \"$@\"\n",
            npu_runtime::node::config::PATH_ENV,
            host.config_path.display(),
            bin("npu-container-runtime").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// A private containerd (own root, state and socket; CRI plugin off), driven with `ctr`.
pub struct Containerd<'a> {
    place: Place<'a>,
    parents: ParentCgroups,
    child: Child,
    pub socket: PathBuf,
    dir: PathBuf,
    /// Our runtime, as `ctr run --runc-binary` takes it.
    pub runtime: PathBuf,
    /// A busybox root filesystem for `ctr run --rootfs`.
    pub rootfs: PathBuf,
}

impl<'a> Containerd<'a> {
    pub fn start(place: Place<'a>, host: &FakeHost) -> Self {
        let dir = host.dir.path().join(unique("containerd"));
        std::fs::create_dir_all(&dir).unwrap();
        let runtime = runtime_wrapper(&dir, host);
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
        .unwrap();
        let socket = dir.join("containerd.sock");
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = place
            .command("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut c = Self {
            place,
            // containerd puts the containers of its "default" namespace under this parent.
            parents: ParentCgroups::snapshot("default"),
            child,
            socket,
            rootfs: busybox_rootfs(&dir.join("image")),
            dir,
            runtime,
        };
        let mut version = c.ctr();
        version.arg("version");
        wait_until_up(&mut c.child, &c.dir.join("containerd.log"), version);
        c
    }

    /// A `ctr` command for this containerd (run where it runs, so paths agree).
    pub fn ctr(&self) -> Command {
        let mut cmd = self.place.command("ctr");
        cmd.arg("--address").arg(&self.socket);
        cmd
    }

    /// Starts a detached sleeping container with `env` through our runtime.
    pub fn run_detached(&self, id: &str, env: &[&str]) -> (bool, String) {
        let mut cmd = self.ctr();
        cmd.args(["run", "-d", "--rootfs", "--runc-binary"])
            .arg(&self.runtime);
        for e in env {
            cmd.args(["--env", e]);
        }
        // As Docker grants by default; without it mknod fails before the cgroup is asked.
        cmd.args(["--cap-add", "CAP_MKNOD"]);
        cmd.arg(&self.rootfs).arg(id).args(["/bin/sleep", "600"]);
        let out = cmd.stdin(Stdio::null()).output().expect("ctr run");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Starts a detached sleeping container with plain runc (no `--runc-binary`: around our
    /// runtime), given `devices` (`ctr run --device`: each node with its own rule). ctr puts
    /// it in the cgroup `/default/<id>` (its namespace, then the id).
    pub fn run_around(&self, id: &str, devices: &[PathBuf]) -> (bool, String) {
        let mut cmd = self.ctr();
        cmd.args(["run", "-d", "--rootfs", "--cap-add", "CAP_MKNOD"]);
        for d in devices {
            cmd.arg("--device").arg(d);
        }
        let out = cmd
            .arg(&self.rootfs)
            .arg(id)
            .args(["/bin/sleep", "600"])
            .stdin(Stdio::null())
            .output()
            .expect("ctr run");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs a shell script in a running container; returns its output.
    pub fn exec(&self, id: &str, script: &str) -> String {
        let out = self
            .ctr()
            .args([
                "task",
                "exec",
                "--exec-id",
                &unique("x"),
                id,
                "/bin/sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("ctr task exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    }

    /// Kills and deletes a container (its poststop hook runs).
    pub fn remove(&self, id: &str) {
        let quiet = |mut c: Command| {
            let _ = c
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        let mut kill = self.ctr();
        kill.args(["task", "kill", "-s", "SIGKILL", id]);
        quiet(kill);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut del = self.ctr();
            del.args(["task", "delete", id]);
            let ok = del
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut c = self.ctr();
        c.args(["container", "delete", id]);
        quiet(c);
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        if let Ok(out) = self.ctr().args(["container", "list", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                self.remove(id);
            }
        }
        stop(&mut self.child);
        self.parents.remove();
    }
}
