//! Kubernetes' path on the node (boot 3): the node's containerd with its CRI plugin as kubeadm
//! sets it up (`containerd config default` with `SystemdCgroup = true`), the `npu` handler
//! registered by `npu-ctk runtime configure`, and pods under kubepods.slice driven in the
//! kubelet's order by `npu_tests::cri`. Run on containerd 1.7 (config version 2) and again on
//! containerd 2.1 (version 3) installed over it.
use std::{
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use k8s_cri::v1::LinuxContainerResources;
use npu_tests::{
    cri::{self, Client, ContainerSpec, Pod, PodSpec},
    engines::{matrix_script, parse_matrix},
    guest::{Results, expect},
    runc::expect_only,
};

use crate::node::{Plan, attached, log_mark, must, runtimes_run_since, sh, write_config_with};

const SOCKET: &str = "/run/containerd/containerd.sock";
const STATE: &str = "/run/containerd";
const CONFIG: &str = "/etc/containerd/config.toml";
/// The pods' image (and the sandbox image): the node's busybox with a command that sleeps.
const POD_IMAGE: &str = "docker.io/library/npu-pod:latest";
const IMAGE_TAR: &str = "/var/lib/npu-test/pod-image.tar";
const CDI_SPEC: &str = "/etc/cdi/ascend.json";
const CDI_KIND: &str = "ascend.com/npu";

/// The CRI checks on containerd `name` (the node's, or a package installed over it): their
/// results are named "`name`: ...".
pub fn cri_suite(r: &mut Results, plan: &Plan, name: &str, deb: Option<&str>) {
    let mut client = None;
    r.run(&format!("{name}: setup"), || {
        let (c, detail) = setup(deb)?;
        client = Some(c);
        Ok(detail)
    });
    let Some(mut c) = client else {
        return;
    };
    let mut k = Kube {
        c: &mut c,
        plan,
        name,
        trainer: None,
    };
    r.run(&format!("{name}: requests and device plugin"), || {
        k.requests()
    });
    r.run(&format!("{name}: UpdateContainerResources"), || k.update());
    r.run(&format!("{name}: restart"), || k.restart());
    r.run(&format!("{name}: pods over crun"), || k.over_crun());
    r.run(&format!("{name}: privileged pod without a request"), || {
        k.privileged()
    });
    r.run(&format!("{name}: CDI"), || k.cdi());
    r.run(&format!("{name}: node guard on kubepods.slice"), || {
        k.guarded()
    });
    r.run(&format!("{name}: env_requests privileged"), || {
        k.env_requests()
    });
    r.run(&format!("{name}: killed shim"), || k.killed_shim());
    r.run(&format!("{name}: doctor"), cri_doctor);
    r.run(&format!("{name}: cleanup"), || k.cleanup());
}

/// Installs `deb` (over the node's containerd) if given, writes containerd's config as a
/// kubeadm node has it, registers the handler, restarts containerd and imports the image.
fn setup(deb: Option<&str>) -> Result<(Client, String), String> {
    if !Path::new(IMAGE_TAR).exists() {
        // Docker's image store is the node's other image source: save from it once.
        must(&format!(
            "tar -C /var/lib/npu-test/rootfs -c . | docker import --change 'CMD [\"sleep\", \
             \"100000\"]' --change 'ENV PATH=/bin' - npu-pod >/dev/null && \
             docker save -o {IMAGE_TAR} npu-pod"
        ))?;
    }
    if let Some(deb) = deb {
        // The node's config is replaced below; keep dpkg from asking about it.
        must(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold {}/debs/{deb} >/dev/null",
            crate::node::PAYLOAD
        ))?;
    }
    // kubeadm's instructions: the default config with the systemd cgroup driver; the sandbox
    // image is ours (no registry here), CDI on (1.7's default is off).
    must(&format!(
        "containerd config default | sed -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
         -e 's/enable_cdi = false/enable_cdi = true/' \
         -e 's|^\\( *sandbox_image = \\).*|\\1\"{POD_IMAGE}\"|' \
         -e \"s|^\\( *sandbox = \\).*|\\1'{POD_IMAGE}'|\" > {CONFIG}"
    ))?;
    write_config_with(&["runc"], "")?;
    must(&format!(
        "mkdir -p /etc/cdi && npu-ctk cdi generate --output {CDI_SPEC} && \
         npu-ctk runtime configure --runtime=containerd >/dev/null && \
         systemctl restart containerd"
    ))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = Client::connect(Path::new(SOCKET), Path::new(STATE), POD_IMAGE, deadline)?;
    must(&format!(
        "ctr -n k8s.io images import {IMAGE_TAR} >/dev/null"
    ))?;
    // The handler as containerd read it: our shim, with runc's options (the cgroup driver).
    let dump = must("containerd config dump")?;
    let handler = dump
        .split("runtimes.npu]")
        .nth(1)
        .and_then(|t| t.split("runtimes.runc]").next())
        .ok_or_else(|| format!("containerd has no npu handler:\n{dump}"))?;
    for want in [
        "/usr/local/bin/npu-container-runtime",
        "SystemdCgroup = true",
    ] {
        if !handler.contains(want) {
            return Err(format!("the npu handler lacks {want}:\n{handler}"));
        }
    }
    let version = must("containerd --version")?;
    let runc = must("runc --version | head -1")?;
    let config_version = must(&format!("grep -m1 '^version' {CONFIG}"))?;
    // The kubelet starts these at its start (the node guard attaches to the first).
    must("systemctl start kubepods.slice kubepods-besteffort.slice")?;
    Ok((client, format!("{version}; {config_version}; {runc}")))
}

static PODS: AtomicU32 = AtomicU32::new(0);

/// The pods of one containerd, and what they are checked against.
struct Kube<'a> {
    c: &'a mut Client,
    plan: &'a Plan,
    name: &'a str,
    /// The first pod and its container asking by request (kept through the checks).
    trainer: Option<(Pod, String)>,
}

fn env(npus: &str) -> Vec<(String, String)> {
    vec![("ASCEND_VISIBLE_DEVICES".into(), npus.into())]
}

/// A device plugin's DeviceSpecs for NPUs `indices`, with Ascend's permissions.
fn device_specs(indices: &[u32]) -> Vec<(String, String, String)> {
    indices
        .iter()
        .map(|i| {
            let path = format!("/dev/davinci{i}");
            (path.clone(), path, "rwm".into())
        })
        .collect()
}

impl Kube<'_> {
    /// A pod of `handler` in its own slice, named as the kubelet's systemd driver names it.
    fn pod(&mut self, handler: &str, privileged: bool) -> Result<Pod, String> {
        let n = PODS.fetch_add(1, Ordering::Relaxed);
        self.c.run_pod(&PodSpec {
            handler: handler.into(),
            privileged,
            cgroup_parent: format!("kubepods-besteffort-podnpu{}x{n}.slice", std::process::id()),
        })
    }

    fn verdicts(&mut self, id: &str) -> Vec<String> {
        let out = self
            .c
            .exec(id, &matrix_script(self.plan.major, self.plan.chips));
        parse_matrix(&out, self.plan.chips)
    }

    fn expect_npus(&mut self, what: &str, id: &str, npus: &[u32]) -> Result<(), String> {
        let got = self.verdicts(id);
        expect(
            &format!("{}: {what}", self.name),
            got,
            expect_only(npus, self.plan.chips),
        )
    }

    /// The v2 cgroup of container `id` (a `cri-containerd-ID.scope` under kubepods.slice).
    fn cgroup_of(&self, id: &str) -> Result<String, String> {
        let found = must(&format!(
            "find /sys/fs/cgroup/kubepods.slice -type d -name 'cri-containerd-{id}.scope'"
        ))?;
        found
            .lines()
            .next()
            .map(|p| p.trim_start_matches("/sys/fs/cgroup").to_string())
            .ok_or_else(|| format!("no cgroup for {id} under kubepods.slice"))
    }

    fn running(&mut self, pod: &Pod, spec: ContainerSpec) -> Result<String, String> {
        self.c.start_container(pod, &spec)
    }

    /// Two pods of the handler: requests by the variable and by a device plugin's
    /// DeviceSpecs, two containers in one pod; the sandbox passed through.
    fn requests(&mut self) -> Result<String, String> {
        let plan = self.plan;
        let request = Plan::list(&plan.request);
        let pod = self.pod("npu", false)?;
        let a = self.running(
            &pod,
            ContainerSpec {
                name: "trainer".into(),
                env: env(&request),
                ..Default::default()
            },
        )?;
        let b = self.running(
            &pod,
            ContainerSpec {
                devices: [
                    device_specs(&[plan.device]),
                    vec![(
                        "/dev/davinci_manager".into(),
                        "/dev/davinci_manager".into(),
                        "rwm".into(),
                    )],
                ]
                .concat(),
                ..Default::default()
            },
        )?;
        self.expect_npus(&format!("NPUs {request} by request"), &a, &plan.request)?;
        self.expect_npus(
            &format!("NPU {} by DeviceSpecs", plan.device),
            &b,
            &[plan.device],
        )?;
        let out = self
            .c
            .exec(&b, "cat /dev/davinci_manager </dev/null >/dev/null");
        if !out.contains("No such device or address") {
            return Err(format!("the plugin's management node did not open: {out}"));
        }
        let sandbox = self.c.spec_of(&pod.id)?;
        let text = sandbox.to_string();
        if text.contains("npu-container-hook") || text.contains("/dev/davinci") {
            return Err(format!("the sandbox was changed: {text}"));
        }
        let spec = self.c.spec_of(&a)?;
        let path = spec["linux"]["cgroupsPath"].as_str().unwrap_or_default();
        if !path.starts_with("kubepods-besteffort-pod") || !path.contains(":cri-containerd:") {
            return Err(format!("not the systemd driver's cgroupsPath: {path}"));
        }
        let cgroup = self.cgroup_of(&a)?;
        self.trainer = Some((pod, a.clone()));
        Ok(format!("{a} in {cgroup}"))
    }

    fn trainer(&self) -> Result<String, String> {
        self.trainer
            .as_ref()
            .map(|(_, id)| id.clone())
            .ok_or_else(|| "no container: the requests check failed".to_string())
    }

    /// UpdateContainerResources as the CPU manager calls it (cpuset), then as an in-place
    /// resize does (quota, shares, memory): the controllers take the values and the verdicts
    /// and the guard program stay.
    fn update(&mut self) -> Result<String, String> {
        let id = self.trainer()?;
        let cgroup = self.cgroup_of(&id)?;
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
        let mut seen = Vec::new();
        for (what, resources, file, want) in [
            ("cpuset", cpuset, "cpuset.cpus", "0"),
            ("resize", resize.clone(), "cpu.max", "50000 100000"),
            ("resize", resize, "memory.max", "268435456"),
        ] {
            self.c
                .update(&id, resources)
                .map_err(|e| format!("UpdateContainerResources ({what}): {e}"))?;
            let value = must(&format!("cat /sys/fs/cgroup{cgroup}/{file}"))?;
            expect(&format!("{file} after {what}"), value.as_str(), want)?;
            let request = self.plan.request.clone();
            self.expect_npus(&format!("NPUs after {what}"), &id, &request)?;
            if !attached(&cgroup, "npu_dev_guard")? {
                return Err(format!("npu_dev_guard gone from {cgroup} after {what}"));
            }
            seen.push(format!("{file}={value}"));
        }
        Ok(seen.join(" "))
    }

    /// The trainer killed from outside: the kubelet starts it again in the same pod (attempt
    /// 1); the new one gets its NPUs, the old one leaves no record.
    fn restart(&mut self) -> Result<String, String> {
        let id = self.trainer()?;
        must(&format!("ctr -n k8s.io task kill -s SIGKILL {id}"))?;
        self.c.wait_exited(&id)?;
        if Path::new(&record(&id)).exists() {
            return Err(format!("{} left after the crash", record(&id)));
        }
        let (pod, _) = self.trainer.take().unwrap();
        let again = self.running(
            &pod,
            ContainerSpec {
                name: "trainer".into(),
                env: env(&Plan::list(&self.plan.request)),
                attempt: 1,
                ..Default::default()
            },
        )?;
        let request = self.plan.request.clone();
        self.trainer = Some((pod, again.clone()));
        self.expect_npus("NPUs after a restart", &again, &request)?;
        Ok(again)
    }

    /// The handler with crun as the shim's low-level runtime (its log says which ran).
    fn over_crun(&mut self) -> Result<String, String> {
        write_config_with(&["crun"], "")?;
        let mark = log_mark();
        let checked = (|| {
            let pod = self.pod("npu", false)?;
            let d = self.plan.device;
            let id = self.running(
                &pod,
                ContainerSpec {
                    env: env(&d.to_string()),
                    ..Default::default()
                },
            )?;
            self.expect_npus(&format!("NPU {d} over crun"), &id, &[d])?;
            self.c.remove_pod(&pod)?;
            let ran = runtimes_run_since(mark)?;
            if !(ran.len() == 1 && ran[0].ends_with("/crun")) {
                return Err(format!("the shim ran {ran:?}, want crun alone"));
            }
            must("crun --version | head -1")
        })();
        write_config_with(&["runc"], "")?;
        checked
    }

    /// A privileged pod of the handler without a request opens no NPU.
    fn privileged(&mut self) -> Result<String, String> {
        let pod = self.pod("npu", true)?;
        let id = self.running(
            &pod,
            ContainerSpec {
                privileged: true,
                ..Default::default()
            },
        )?;
        let spec = self.c.spec_of(&id)?;
        self.expect_npus("a privileged container", &id, &[])?;
        self.c.remove_pod(&pod)?;
        Ok(format!(
            "device rules {}",
            spec.pointer("/linux/resources/devices")
                .map_or("none".into(), |d| d.to_string())
        ))
    }

    /// CDI through the CRI plugin: the `CDIDevices` field and the annotation form each give
    /// exactly the NPU named, its management nodes and the driver's files.
    fn cdi(&mut self) -> Result<String, String> {
        let plan = self.plan;
        let (one, other) = (plan.device, plan.linked);
        let pod = self.pod("npu", false)?;
        let field = self.running(
            &pod,
            ContainerSpec {
                cdi_devices: vec![format!("{CDI_KIND}={one}")],
                ..Default::default()
            },
        )?;
        let annotated = self.running(
            &pod,
            ContainerSpec {
                annotations: vec![("cdi.k8s.io/npu-test".into(), format!("{CDI_KIND}={other}"))],
                ..Default::default()
            },
        )?;
        self.expect_npus(&format!("CDIDevices {CDI_KIND}={one}"), &field, &[one])?;
        self.expect_npus(
            &format!("annotation {CDI_KIND}={other}"),
            &annotated,
            &[other],
        )?;
        for id in [&field, &annotated] {
            let out = self.c.exec(
                id,
                "cat /dev/davinci_manager </dev/null >/dev/null;                  cat /usr/local/Ascend/driver/version.info",
            );
            if !(out.contains("No such device or address") && out.contains("Version=")) {
                return Err(format!(
                    "{id}: the management node or the driver's files are missing: {out}"
                ));
            }
        }
        self.c.remove_pod(&pod)?;
        Ok(format!("{CDI_KIND}={one} and ={other}"))
    }

    /// Pods of the plain runc handler: before the node guard they open what they are handed;
    /// under `npu-ctk guard install --cgroup /kubepods.slice` none (the one already running
    /// too), but a CDI device still (the CDI spec's hook registers it), while the handler's
    /// pods keep theirs.
    fn guarded(&mut self) -> Result<String, String> {
        let plan = self.plan;
        let all: Vec<u32> = (0..plan.chips).collect();
        let handed = ContainerSpec {
            devices: device_specs(&all),
            ..Default::default()
        };
        let before = self.pod("runc", false)?;
        let early = self.running(&before, handed.clone())?;
        self.expect_npus("a runc pod, no guard", &early, &all)?;
        must("npu-ctk guard install --cgroup /kubepods.slice")?;
        self.expect_npus("a runc pod started before the guard", &early, &[])?;
        let pod = self.pod("runc", false)?;
        let late = self.running(&pod, handed)?;
        self.expect_npus("a runc pod under the guard", &late, &[])?;
        let d = plan.device;
        let cdi = self.running(
            &pod,
            ContainerSpec {
                cdi_devices: vec![format!("{CDI_KIND}={d}")],
                ..Default::default()
            },
        )?;
        self.expect_npus(&format!("a runc pod's CDI NPU {d}"), &cdi, &[d])?;
        let trainer = self.trainer()?;
        let request = plan.request.clone();
        self.expect_npus("the trainer under the guard", &trainer, &request)?;
        self.c.remove_pod(&before)?;
        self.c.remove_pod(&pod)?;
        must("bpftool cgroup show /sys/fs/cgroup/kubepods.slice")
    }

    /// `env_requests = "privileged"`: a pod's own variable is no authority, a device
    /// plugin's DeviceSpecs and a privileged pod's variable are.
    fn env_requests(&mut self) -> Result<String, String> {
        write_config_with(&["runc"], "env_requests = \"privileged\"\n")?;
        let checked = (|| {
            let plan = self.plan;
            let request = Plan::list(&plan.request);
            let pod = self.pod("npu", false)?;
            let forged = self.running(
                &pod,
                ContainerSpec {
                    env: env(&request),
                    ..Default::default()
                },
            )?;
            self.expect_npus("a pod's own variable", &forged, &[])?;
            let handed = self.running(
                &pod,
                ContainerSpec {
                    env: env(&request),
                    devices: device_specs(&[plan.device]),
                    ..Default::default()
                },
            )?;
            self.expect_npus("DeviceSpecs", &handed, &[plan.device])?;
            let admin = self.pod("npu", true)?;
            let trusted = self.running(
                &admin,
                ContainerSpec {
                    env: env(&request),
                    privileged: true,
                    ..Default::default()
                },
            )?;
            self.expect_npus("a privileged pod's variable", &trusted, &plan.request)?;
            let refused = must("npu-ctk policy show | grep -m1 refused")?;
            self.c.remove_pod(&pod)?;
            self.c.remove_pod(&admin)?;
            Ok(refused)
        })();
        write_config_with(&["runc"], "")?;
        checked
    }

    /// The trainer's pod's containerd-shim killed: containerd cleans up the tasks; `npu-ctk
    /// gc` then finds nothing of them left.
    fn killed_shim(&mut self) -> Result<String, String> {
        let id = self.trainer()?;
        let (pod, _) = self.trainer.as_ref().unwrap();
        let shim = cri::shim_of(pod)?;
        must(&format!("kill -KILL {shim}"))?;
        self.c.wait_exited(&id)?;
        cri::wait_dead_shim_cleanup(Path::new(SOCKET))?;
        let gc = must("npu-ctk gc")?;
        if Path::new(&record(&id)).exists() {
            return Err(format!("{} left after gc: {gc}", record(&id)));
        }
        let (pod, _) = self.trainer.take().unwrap();
        self.c.remove_pod(&pod)?;
        Ok(gc)
    }

    /// Every pod removed: no record, policy entry, container cgroup or guard left.
    fn cleanup(&mut self) -> Result<String, String> {
        self.c.remove_all()?;
        let records = must("ls /run/npu-container-runtime | grep -v '^node$' || true")?;
        expect("records after the pods", records, "")?;
        let policy: serde_json::Value = serde_json::from_str(&must("npu-ctk policy show --json")?)
            .map_err(|e| e.to_string())?;
        expect(
            "policy entries after the pods",
            policy.as_array().map(Vec::len),
            Some(0),
        )?;
        let scopes = must("find /sys/fs/cgroup/kubepods.slice -name 'cri-containerd-*'")?;
        expect("container cgroups after the pods", scopes, "")?;
        must("npu-ctk guard uninstall --cgroup /kubepods.slice")?;
        if attached("/kubepods.slice", "npu_dev_guard")? {
            return Err("the node guard is still on kubepods.slice".into());
        }
        Ok(String::new())
    }
}

/// A container's record, which the runtime keeps while it lives.
fn record(id: &str) -> String {
    format!("/run/npu-container-runtime/{id}.json")
}

/// `npu-ctk doctor` on the Kubernetes node: the handler recognised; the warnings are the
/// detail (the host judges them).
fn cri_doctor() -> Result<String, String> {
    let (ok, out) = sh("npu-ctk doctor");
    if !ok || !out.contains("[ ok ] CRI handler: \"npu\" runs") {
        return Err(out);
    }
    let noted: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("[warn]") || l.starts_with("[FAIL]"))
        .collect();
    Ok(noted.join("\n"))
}
