//! Kubernetes as the kubelet drives it: a private containerd with its CRI plugin (its own
//! root, state, socket and config; the "npu" handler registered by `npu-ctk runtime configure
//! --runtime=containerd`), driven over the CRI socket with a CRI client (`k8s-cri` on tonic).
//! Images come from an OCI image layout built from busybox and imported with `ctr` (no
//! registry); pods use the host network (no CNI) and cgroupfs.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, Device, ExecSyncRequest, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest, UpdateContainerResourcesRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use npu_tests::{
    bin,
    cgroups::{Place, unified_mount},
    engines::{ParentCgroups, runtime_wrapper},
    host::FakeHost,
    run,
    runc::busybox_rootfs,
    unique,
};

/// The image every pod runs (and the sandbox image): busybox, whose command sleeps.
pub const IMAGE: &str = "docker.io/library/npu-busybox:test";

/// A private containerd with the CRI plugin, stopped (with its pods) on drop.
pub struct Cri<'a> {
    place: Place<'a>,
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    pods: Vec<String>,
    parents: ParentCgroups,
    /// The containerd config file, as `npu-ctk runtime configure` left it.
    pub config: PathBuf,
    /// The pods' parent cgroup (`/kubepods-...`), as the kubelet makes it at start.
    pub kubepods: String,
}

/// How a pod is set up.
#[derive(Clone, Default)]
pub struct PodSpec {
    pub handler: String,
    pub privileged: bool,
    /// The pod's parent cgroup, as the kubelet gives it (cgroupfs: `/kubepods/...`).
    pub cgroup_parent: String,
}

/// How a container is set up.
#[derive(Clone, Default)]
pub struct ContainerSpec {
    /// Its name in the pod (the kubelet keeps it across restarts); unique when empty.
    pub name: String,
    pub env: Vec<(String, String)>,
    /// A device plugin's DeviceSpecs: (container path, host path, permissions).
    pub devices: Vec<(String, String, String)>,
    pub privileged: bool,
    pub attempt: u32,
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The socket file appears before containerd serves on it: retry until it answers.
        let channel = loop {
            let path = socket.clone();
            let connected = rt.block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    })),
            );
            match connected {
                Ok(channel) => break channel,
                Err(e) => give_up_if_late(&format!("{}: {e}", socket.display())),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cri = Self {
            place,
            child,
            socket,
            rt,
            client: RuntimeServiceClient::new(channel),
            pods: Vec::new(),
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

    fn sandbox_config(name: &str, pod: &PodSpec) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "npu-test".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: pod.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged: pod.privileged,
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox; returns the pod's handle.
    pub fn run_pod(&mut self, pod: &PodSpec) -> Result<Pod, String> {
        let name = unique("pod");
        let config = Self::sandbox_config(&name, pod);
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: pod.handler.clone(),
        };
        let id = self
            .rt
            .block_on(self.client.run_pod_sandbox(request))
            .map_err(|s| s.message().to_string())?
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(id.clone());
        Ok(Pod { id, config })
    }

    /// CreateContainer then StartContainer (the kubelet's order); returns its id, or the
    /// error of the step that failed.
    pub fn start_container(&mut self, pod: &Pod, c: &ContainerSpec) -> Result<String, String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: if c.name.is_empty() {
                    unique("c")
                } else {
                    c.name.clone()
                },
                attempt: c.attempt,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            envs: c
                .env
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            devices: c
                .devices
                .iter()
                .map(|(container_path, host_path, permissions)| Device {
                    container_path: container_path.clone(),
                    host_path: host_path.clone(),
                    permissions: permissions.clone(),
                })
                .collect(),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources::default()),
                security_context: Some(LinuxContainerSecurityContext {
                    privileged: c.privileged,
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = self
            .rt
            .block_on(self.client.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .map_err(|s| format!("CreateContainer: {}", s.message()))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|s| format!("StartContainer: {}", s.message()))?;
        Ok(id)
    }

    /// ExecSync `sh -c script`; returns stdout + stderr.
    pub fn exec(&mut self, id: &str, script: &str) -> String {
        let r = self
            .rt
            .block_on(self.client.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 30,
            }))
            .expect("ExecSync")
            .into_inner();
        let mut text = String::from_utf8_lossy(&r.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&r.stderr));
        text
    }

    /// UpdateContainerResources, as the CPU manager or an in-place resize calls it.
    pub fn update(&mut self, id: &str, resources: LinuxContainerResources) -> Result<(), String> {
        self.rt
            .block_on(
                self.client
                    .update_container_resources(UpdateContainerResourcesRequest {
                        container_id: id.into(),
                        linux: Some(resources),
                        ..Default::default()
                    }),
            )
            .map(drop)
            .map_err(|s| s.message().to_string())
    }

    /// StopPodSandbox, then RemovePodSandbox (its containers go with it).
    pub fn remove_pod(&mut self, pod: &Pod) {
        let _ = self
            .rt
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }));
        let _ = self
            .rt
            .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }));
        self.pods.retain(|p| *p != pod.id);
    }

    /// The OCI spec the runtime was given for container (or sandbox) `id`.
    pub fn spec_of(&self, id: &str) -> serde_json::Value {
        let path = self
            .dir
            .join("state/io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("config.json");
        serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap()
    }

    /// The container's state as the CRI reports it (`CONTAINER_RUNNING`, `CONTAINER_EXITED`...).
    pub fn state(&mut self, id: &str) -> String {
        let status = self
            .rt
            .block_on(self.client.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status");
        ContainerState::try_from(status.state).map_or_else(
            |_| status.state.to_string(),
            |s| s.as_str_name().to_string(),
        )
    }

    /// Waits (up to 30 s) until container `id` has exited.
    pub fn wait_exited(&mut self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state(id) != "CONTAINER_EXITED" {
            assert!(Instant::now() < deadline, "{id} did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs a container's process from outside, as a crash looks to the kubelet.
    pub fn crash(&mut self, id: &str) {
        run(self.ctr().args(["task", "kill", "--signal", "SIGKILL", id]));
        self.wait_exited(id);
    }

    /// Waits (up to 30 s) until containerd has finished cleaning up after dead shims (it runs
    /// `containerd-shim-runc-v2 ... delete` per task, which runs the runtime's `delete`).
    pub fn wait_dead_shim_cleanup(&self) {
        let pattern = format!(
            "containerd-shim.*-address {} .* delete$",
            self.socket.display()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new("pgrep")
            .args(["-f", &pattern])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd's cleanup of dead shims hangs"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of the containerd-shim that serves pod `pod` (its `-id` is the sandbox's).
    pub fn shim_of(&self, pod: &Pod) -> i32 {
        let pattern = format!("containerd-shim.*-id {}", pod.id);
        run(Command::new("pgrep").args(["-f", &pattern]))
            .split_whitespace()
            .find_map(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no shim for pod {}", pod.id))
    }
}

/// A pod sandbox, with the config the kubelet sent (CreateContainer repeats it).
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
}

impl Drop for Cri<'_> {
    fn drop(&mut self) {
        // Pods first, so their shims and poststop hooks run while containerd is there.
        for id in self.pods.clone() {
            let _ = self
                .rt
                .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }));
            let _ = self.rt.block_on(
                self.client
                    .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }),
            );
        }
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
