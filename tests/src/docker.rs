//! A private Docker daemon for the suites: its own data-root, exec-root, socket and
//! daemon.json (configured with `npu-ctk runtime configure --runtime=docker`), started on the
//! host or inside a [`crate::V2Namespace`], stopped by pid.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{FakeHost, Place, bin, busybox_rootfs, run, unique};

pub struct Dockerd {
    child: Child,
    /// `docker` parent cgroups dockerd will create that did not exist before it started.
    new_cgroups: Vec<PathBuf>,
    pub socket: PathBuf,
    dir: PathBuf,
    /// The image every test container runs: busybox, imported from a local rootfs.
    pub image: String,
}

impl Dockerd {
    /// Starts dockerd at `place` with the "npu" runtime registered for `host`'s config.
    pub fn start(place: Place<'_>, host: &FakeHost) -> Self {
        let dir = host.dir.path().join(unique("docker"));
        std::fs::create_dir_all(&dir).unwrap();
        // Engines start the runtime with their own environment: a wrapper pins our config.
        let wrapper = dir.join("npu-runtime-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport {}={}\nexec {} \"$@\"\n",
                npu_runtime::config::PATH_ENV,
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
        let daemon_json = dir.join("daemon.json");
        run(Command::new(bin("npu-ctk"))
            .args(["runtime", "configure", "--runtime=docker", "--config"])
            .arg(&daemon_json)
            .arg("--runtime-path")
            .arg(&wrapper));
        let new_cgroups = docker_cgroups()
            .into_iter()
            .filter(|p| !p.exists())
            .collect();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = place
            .command("dockerd")
            .arg("--config-file")
            .arg(&daemon_json)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut d = Self {
            child,
            new_cgroups,
            socket,
            dir,
            image: "npu-busybox".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d
            .docker()
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            if Instant::now() > deadline || d.child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default();
                panic!("dockerd did not come up:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first, so their poststop hooks run while the daemon is there.
        if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.docker().args(["rm", "-f", id]).output();
            }
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // dockerd leaves its (empty) parent cgroups behind; remove those it created.
        for cg in &self.new_cgroups {
            let _ = std::fs::remove_dir(cg);
        }
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

/// The `docker` parent cgroup in every cgroup hierarchy mounted under /sys/fs/cgroup.
fn docker_cgroups() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/sys/fs/cgroup/docker")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        out.extend(entries.flatten().map(|e| e.path().join("docker")));
    }
    out
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
            crate::errno_of(false, line)
        })
        .collect()
}
