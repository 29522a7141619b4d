//! Kubernetes as the kubelet drives it: a private containerd with its CRI plugin (its own
//! root, state, socket and config; the "npu" handler registered by `npu-ctk runtime configure
//! --runtime=containerd`), driven over the CRI socket with `npu_tests::cri`'s client.
//! Images come from an OCI image layout built from busybox and imported with `ctr` (no
//! registry); pods use the host network (no CNI) and cgroupfs.
use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use npu_tests::{
    bin,
    cgroups::{Place, unified_mount},
    cri::{self, Client, Pod},
    engines::{ParentCgroups, runtime_wrapper},
    host::FakeHost,
    run,
    runc::busybox_rootfs,
    unique,
};

/// The image every pod runs (and the sandbox image): busybox, whose command sleeps.
pub const IMAGE: &str = "docker.io/library/npu-busybox:test";

/// A private containerd with the CRI plugin, stopped (with its pods) on drop. It derefs to
/// its CRI [`Client`].
pub struct Cri<'a> {
    place: Place<'a>,
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    client: Client,
    parents: ParentCgroups,
    /// The containerd config file, as `npu-ctk runtime configure` left it.
    pub config: PathBuf,
    /// The pods' parent cgroup (`/kubepods-...`), as the kubelet makes it at start.
    pub kubepods: String,
}
impl<'a> Cri<'a> {
    /// Starts containerd at `place` with the CRI plugin and the "npu" handler for `host`.
    /// `disable_cgroup`: the pure-v2 emulation's tree has no cpu controller, which the CRI
    /// plugin always writes for sandboxes.
    pub fn start(place: Place<'a>, host: &FakeHost, disable_cgroup: bool) -> Self {
        let dir = host.dir.path().join(unique("cri"));
        let kubepods = unique("kubepods");
        let parents = ParentCgroups::snapshot(&kubepods);
        std::fs::create_dir_all(unified_mount().join(&kubepods)).unwrap();
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n[grpc]\n  address = {socket:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {IMAGE:?}\n\
                 restrict_oom_score_adj = true\n  disable_apparmor = true\n  disable_cgroup = {disable_cgroup}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  conf_dir = {cni:?}\n  bin_dir = \"/usr/lib/cni\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n  snapshotter = \"overlayfs\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
                root = dir.join("root"),
                state = dir.join("state"),
                cni = dir.join("cni"),
            ),
        )
        .unwrap();
        // The handler as an operator registers it (the wrapper only adds the fake host's config).
        let wrapper = runtime_wrapper(&dir, host);
        run(Command::new(bin("npu-ctk"))
            .args(["runtime", "configure", "--runtime=containerd", "--config"])
            .arg(&config)
            .arg("--runtime-path")
            .arg(&wrapper));
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut child = place
            .command("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until the fixture exists its Drop cannot stop containerd: give up here, stopping it.
        let mut give_up_if_late = |why: &dyn std::fmt::Display| {
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                npu_tests::engines::stop(&mut child);
                panic!(
                    "containerd did not come up: {why}\n{}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
        };
        while !socket.exists() {
            give_up_if_late(&"no socket yet");
            std::thread::sleep(Duration::from_millis(50));
        }
        let connected = Client::connect(&socket, &dir.join("state"), IMAGE, deadline);
        let client = connected.unwrap_or_else(|e| {
            give_up_if_late(&e);
            unreachable!("containerd is up but its socket does not answer: {e}")
        });
        let cri = Self {
            place,
            child,
            socket,
            client,
            parents,
            config,
            kubepods: format!("/{kubepods}"),
            dir,
        };
        cri.import_image();
        cri
    }

    /// `ctr` for this containerd, in the CRI plugin's namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = self.place.command("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// Builds an OCI image layout of busybox (its command sleeps) and imports it.
    fn import_image(&self) {
        let layout = self.dir.join("image");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let rootfs = busybox_rootfs(&self.dir.join("image-src"));
        let layer = self.dir.join("layer.tar");
        run(Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."));
        let put = |bytes: &[u8]| -> (String, usize) {
            let file = self.dir.join("blob.tmp");
            std::fs::write(&file, bytes).unwrap();
            let digest = sha256(&file);
            std::fs::rename(&file, blobs.join(&digest)).unwrap();
            (format!("sha256:{digest}"), bytes.len())
        };
        let (layer_digest, layer_size) = put(&std::fs::read(&layer).unwrap());
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sleep", "3600"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        });
        let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
        std::fs::write(
            layout.join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": IMAGE}}]})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let tarball = self.dir.join("image.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tarball)
            .arg("."));
        run(self.ctr().args(["images", "import"]).arg(&tarball));
    }

    /// The OCI spec the runtime was given for container (or sandbox) `id`.
    pub fn spec_of(&self, id: &str) -> serde_json::Value {
        self.client.spec_of(id).unwrap()
    }

    /// ExecSync `sh -c script`; returns stdout + stderr.
    pub fn exec(&mut self, id: &str, script: &str) -> String {
        self.client.exec(id, script).unwrap()
    }

    /// StopPodSandbox, then RemovePodSandbox (its containers go with it).
    pub fn remove_pod(&mut self, pod: &Pod) {
        self.client.remove_pod(pod).unwrap();
    }

    /// Waits (up to 30 s) until container `id` has exited.
    pub fn wait_exited(&mut self, id: &str) {
        self.client.wait_exited(id).unwrap();
    }

    /// SIGKILLs a container's process from outside, as a crash looks to the kubelet.
    pub fn crash(&mut self, id: &str) {
        run(self.ctr().args(["task", "kill", "--signal", "SIGKILL", id]));
        self.wait_exited(id);
    }

    /// Waits until containerd has cleaned up after dead shims.
    pub fn wait_dead_shim_cleanup(&self) {
        cri::wait_dead_shim_cleanup(&self.socket).unwrap();
    }

    /// The pid of the containerd-shim that serves pod `pod`.
    pub fn shim_of(&self, pod: &Pod) -> i32 {
        cri::shim_of(pod).unwrap()
    }
}

impl Deref for Cri<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Cri<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for Cri<'_> {
    fn drop(&mut self) {
        // Pods first, so their shims and poststop hooks run while containerd is there.
        let _ = self.client.remove_all();
        npu_tests::engines::stop(&mut self.child);
        // The kubelet's pod cgroups (the runtime removes only the containers' own).
        self.parents.remove();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
    }
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
