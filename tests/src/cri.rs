//! A CRI client (`k8s-cri` on tonic) that drives a containerd's CRI plugin over its socket as
//! the kubelet does: RunPodSandbox -> CreateContainer -> StartContainer -> ExecSync ->
//! UpdateContainerResources -> StopPodSandbox -> RemovePodSandbox. The Kubernetes suite runs
//! it against a private containerd on this machine, the node guest against the node's own.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
/// What UpdateContainerResources sets, as callers build it.
pub use k8s_cri::v1::LinuxContainerResources;
use k8s_cri::v1::{
    CdiDevice, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, Device, ExecSyncRequest, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, runtime_service_client::RuntimeServiceClient,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::unique;

/// How a pod is set up.
#[derive(Clone, Default)]
pub struct PodSpec {
    pub handler: String,
    pub privileged: bool,
    /// The pod's parent cgroup as the kubelet gives it: a path with cgroupfs
    /// (`/kubepods/...`), a slice name with the systemd driver
    /// (`kubepods-besteffort-pod<uid>.slice`).
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
    /// The CRI's `CDIDevices` field: fully qualified CDI device names.
    pub cdi_devices: Vec<String>,
    pub annotations: Vec<(String, String)>,
    pub privileged: bool,
    pub attempt: u32,
}

/// A pod sandbox, with the config the kubelet sent (CreateContainer repeats it).
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
}

/// A CRI connection to one containerd.
pub struct Client {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    image: String,
    /// containerd's state directory (its shims' bundles are under it).
    state: PathBuf,
    /// The pods run through this client and not removed yet.
    pods: Vec<String>,
}

impl Client {
    /// Connects to the CRI socket (retrying until `deadline`: the socket file appears before
    /// containerd serves on it). Pods and containers run `image`; `state` is containerd's.
    pub fn connect(
        socket: &Path,
        state: &Path,
        image: &str,
        deadline: Instant,
    ) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let channel = loop {
            let path = socket.to_path_buf();
            let connected = rt.block_on(
                Endpoint::try_from("http://[::]:50051")
                    .map_err(|e| e.to_string())?
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
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("{}: {e}", socket.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Ok(Self {
            rt,
            client: RuntimeServiceClient::new(channel),
            image: image.into(),
            state: state.into(),
            pods: Vec::new(),
        })
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
            .map_err(|s| format!("RunPodSandbox: {}", s.message()))?
            .into_inner()
            .pod_sandbox_id;
        self.pods.push(id.clone());
        Ok(Pod { id, config })
    }

    /// CreateContainer then StartContainer (the kubelet's order); returns its id, or the
    /// error of the step that failed.
    pub fn start_container(&mut self, pod: &Pod, c: &ContainerSpec) -> Result<String, String> {
        let pairs = |list: &[(String, String)]| -> HashMap<String, String> {
            list.iter().cloned().collect()
        };
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
                image: self.image.clone(),
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
            cdi_devices: c
                .cdi_devices
                .iter()
                .map(|name| CdiDevice { name: name.clone() })
                .collect(),
            annotations: pairs(&c.annotations),
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
    pub fn exec(&mut self, id: &str, script: &str) -> Result<String, String> {
        let r = self
            .rt
            .block_on(self.client.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 30,
            }))
            .map_err(|s| format!("ExecSync in {id}: {}", s.message()))?
            .into_inner();
        let mut text = String::from_utf8_lossy(&r.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&r.stderr));
        Ok(text)
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
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<(), String> {
        self.remove_pod_id(&pod.id)
    }

    fn remove_pod_id(&mut self, id: &str) -> Result<(), String> {
        self.rt
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|s| format!("StopPodSandbox: {}", s.message()))?;
        self.rt
            .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|s| format!("RemovePodSandbox: {}", s.message()))?;
        self.pods.retain(|p| p != id);
        Ok(())
    }

    /// Removes every pod still here (their shims and poststop hooks run while containerd is
    /// there); the first error, after trying them all.
    pub fn remove_all(&mut self) -> Result<(), String> {
        let mut first = Ok(());
        for id in self.pods.clone() {
            let removed = self.remove_pod_id(&id);
            if first.is_ok() {
                first = removed;
            }
        }
        first
    }

    /// Removes every pod containerd lists, this client's or not (what an earlier run left);
    /// how many there were.
    pub fn remove_listed(&mut self) -> Result<usize, String> {
        let listed = self
            .rt
            .block_on(
                self.client
                    .list_pod_sandbox(ListPodSandboxRequest::default()),
            )
            .map_err(|s| format!("ListPodSandbox: {}", s.message()))?
            .into_inner()
            .items;
        for pod in &listed {
            self.remove_pod_id(&pod.id)?;
        }
        Ok(listed.len())
    }

    /// The OCI spec the runtime was given for container (or sandbox) `id`.
    pub fn spec_of(&self, id: &str) -> Result<serde_json::Value, String> {
        let path = self
            .state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The container's state as the CRI reports it (`CONTAINER_RUNNING`, `CONTAINER_EXITED`...).
    fn state(&mut self, id: &str) -> Result<String, String> {
        let status = self
            .rt
            .block_on(self.client.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))
            .map_err(|s| format!("ContainerStatus of {id}: {}", s.message()))?
            .into_inner()
            .status
            .ok_or_else(|| format!("ContainerStatus of {id}: no status"))?;
        Ok(ContainerState::try_from(status.state).map_or_else(
            |_| status.state.to_string(),
            |s| s.as_str_name().to_string(),
        ))
    }

    /// Waits (up to 30 s) until container `id` has exited.
    pub fn wait_exited(&mut self, id: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state(id)? != "CONTAINER_EXITED" {
            if Instant::now() > deadline {
                return Err(format!("{id} did not exit"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// The updates the kubelet sends with UpdateContainerResources: the CPU manager's (cpuset
/// `0`), then an in-place resize's (quota 50000 of period 100000, shares 512, memory 256 MiB).
pub fn kubelet_updates() -> [(&'static str, LinuxContainerResources); 2] {
    let cpuset = LinuxContainerResources {
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    let resize = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    [("cpuset", cpuset), ("resize", resize)]
}

/// Waits (up to 30 s) until the containerd at `socket` has finished cleaning up after dead
/// shims (it runs `containerd-shim-runc-v2 ... delete` per task, which runs the runtime's
/// `delete`).
pub fn wait_dead_shim_cleanup(socket: &Path) -> Result<(), String> {
    let socket = socket.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shims(|args| {
        flag(args, "-address") == Some(&socket) && args.last().is_some_and(|a| a == "delete")
    })
    .is_empty()
    {
        if Instant::now() > deadline {
            return Err("containerd's cleanup of dead shims hangs".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The pid of the containerd-shim that serves pod `pod` (its `-id` is the sandbox's).
pub fn shim_of(pod: &Pod) -> Result<i32, String> {
    shims(|args| flag(args, "-id") == Some(&pod.id))
        .first()
        .copied()
        .ok_or_else(|| format!("no shim for pod {}", pod.id))
}

/// The containerd shims whose arguments satisfy `matches` (read from /proc: nodes need not
/// have procps).
fn shims(matches: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
            (shim && matches(&args)).then_some(pid)
        })
        .collect()
}

/// The value after `name` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a String> {
    args.iter().skip_while(|a| *a != name).nth(1)
}
