//! The pod checks on one containerd: each drives pods over the CRI in the kubelet's order and
//! judges the NPU verdicts from inside the containers (ENXIO allowed, EPERM denied).
use std::{
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use npu_tests::{
    cri::{self, Client, ContainerSpec, Pod, PodSpec},
    engines::{matrix_script, parse_matrix},
    guest::expect,
    runc::expect_only,
};

use super::SOCKET;
use crate::node::{
    Plan, attached, log_mark, must, runtimes_run_since, write_config, write_config_with,
};

const CDI_KIND: &str = "ascend.com/npu";

/// Pod slices are numbered here rather than by `npu_tests::unique`: a `-` in a slice name is
/// a level of systemd's slice tree.
static PODS: AtomicU32 = AtomicU32::new(0);

/// The pods of one containerd, and what they are checked against.
pub struct Kube<'a> {
    c: &'a mut Client,
    plan: &'a Plan,
    name: &'a str,
    /// The first pod, its container asking by request and its neighbour asking by
    /// DeviceSpecs (kept through the checks).
    trainer: Option<(Pod, String, String)>,
}

/// The runtime's config restored to plain runc when a check that changed it ends, however it
/// ends.
struct RestoreConfig;

impl Drop for RestoreConfig {
    fn drop(&mut self) {
        let _ = write_config(&["runc"]);
    }
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

/// A container's record, which the runtime keeps while it lives.
fn record(id: &str) -> String {
    format!("/run/npu-container-runtime/{id}.json")
}

fn has_record(id: &str) -> bool {
    Path::new(&record(id)).exists()
}

impl<'a> Kube<'a> {
    pub fn new(c: &'a mut Client, plan: &'a Plan, name: &'a str) -> Self {
        Self {
            c,
            plan,
            name,
            trainer: None,
        }
    }

    /// A pod of `handler` in its own slice, named as the kubelet's systemd driver names it.
    fn pod(&mut self, handler: &str, privileged: bool) -> Result<Pod, String> {
        let n = PODS.fetch_add(1, Ordering::Relaxed);
        self.c.run_pod(&PodSpec {
            handler: handler.into(),
            privileged,
            cgroup_parent: format!("kubepods-besteffort-podnpu{}x{n}.slice", std::process::id()),
        })
    }

    fn expect_npus(&mut self, what: &str, id: &str, npus: &[u32]) -> Result<(), String> {
        let (major, chips) = (self.plan.major, self.plan.chips);
        let out = self.c.exec(id, &matrix_script(major, chips))?;
        expect(
            &format!("{}: {what}", self.name),
            parse_matrix(&out, chips),
            expect_only(npus, chips),
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

    /// One pod of the handler: a request by the variable and a device plugin's DeviceSpecs
    /// side by side; the sandbox passed through; the systemd driver's cgroups.
    pub fn requests(&mut self) -> Result<String, String> {
        let plan = self.plan;
        let request = Plan::list(&plan.request);
        let pod = self.pod("npu", false)?;
        let a = self.c.start_container(
            &pod,
            &ContainerSpec {
                name: "trainer".into(),
                env: env(&request),
                ..Default::default()
            },
        )?;
        let b = self.c.start_container(
            &pod,
            &ContainerSpec {
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
        self.trainer = Some((pod, a.clone(), b.clone()));
        self.expect_npus(&format!("NPUs {request} by request"), &a, &plan.request)?;
        let d = plan.device;
        self.expect_npus(&format!("NPU {d} by DeviceSpecs"), &b, &[d])?;
        let out = self
            .c
            .exec(&b, "cat /dev/davinci_manager </dev/null >/dev/null")?;
        if !out.contains("No such device or address") {
            return Err(format!("the plugin's management node did not open: {out}"));
        }
        // The pause container goes through the shim untouched: no hook, no device, no record.
        let (pod, ..) = self.trainer.as_ref().unwrap();
        let sandbox = self.c.spec_of(&pod.id)?.to_string();
        if sandbox.contains("npu-container-hook") || has_record(&pod.id) {
            return Err(format!("the sandbox was changed: {sandbox}"));
        }
        let spec = self.c.spec_of(&a)?;
        let path = spec["linux"]["cgroupsPath"].as_str().unwrap_or_default();
        if !path.starts_with("kubepods-besteffort-pod") || !path.contains(":cri-containerd:") {
            return Err(format!("not the systemd driver's cgroupsPath: {path}"));
        }
        let cgroup = self.cgroup_of(&a)?;
        Ok(format!("{a} in {cgroup}"))
    }

    fn trainer(&self) -> Result<String, String> {
        self.trainer
            .as_ref()
            .map(|(_, id, _)| id.clone())
            .ok_or_else(|| "no trainer container (an earlier check failed)".to_string())
    }

    /// UpdateContainerResources as the CPU manager calls it (cpuset), then as an in-place
    /// resize does (quota, shares, memory): the controllers take the values, and the
    /// verdicts and the guard program stay.
    pub fn update(&mut self) -> Result<String, String> {
        let id = self.trainer()?;
        let cgroup = self.cgroup_of(&id)?;
        // What each update must leave in the container's cgroup.
        let written: [&[(&str, &str)]; 2] = [
            &[("cpuset.cpus", "0")],
            &[("cpu.max", "50000 100000"), ("memory.max", "268435456")],
        ];
        let mut seen = Vec::new();
        for ((what, resources), files) in cri::kubelet_updates().into_iter().zip(written) {
            self.c
                .update(&id, resources)
                .map_err(|e| format!("UpdateContainerResources ({what}): {e}"))?;
            for (file, want) in files {
                let value = must(&format!("cat /sys/fs/cgroup{cgroup}/{file}"))?;
                expect(&format!("{file} after {what}"), value.as_str(), *want)?;
                seen.push(format!("{file}={value}"));
            }
            let request = self.plan.request.clone();
            self.expect_npus(&format!("NPUs after {what}"), &id, &request)?;
            if !attached(&cgroup, "npu_dev_guard")? {
                return Err(format!("npu_dev_guard gone from {cgroup} after {what}"));
            }
        }
        Ok(seen.join(" "))
    }

    /// The trainer killed from outside: the kubelet starts it again in the same pod (attempt
    /// 1); the new one gets its NPUs, the old one's record goes.
    pub fn restart(&mut self) -> Result<String, String> {
        let id = self.trainer()?;
        if !has_record(&id) {
            return Err(format!("{} missing while it runs", record(&id)));
        }
        must(&format!("ctr -n k8s.io task kill -s SIGKILL {id}"))?;
        self.c.wait_exited(&id)?;
        if has_record(&id) {
            return Err(format!("{} left after the crash", record(&id)));
        }
        // On failure the pod stays with the client, for the cleanup to remove.
        let (pod, _, neighbour) = self.trainer.take().unwrap();
        let again = self.c.start_container(
            &pod,
            &ContainerSpec {
                name: "trainer".into(),
                env: env(&Plan::list(&self.plan.request)),
                attempt: 1,
                ..Default::default()
            },
        )?;
        self.trainer = Some((pod, again.clone(), neighbour));
        let request = self.plan.request.clone();
        self.expect_npus("NPUs after a restart", &again, &request)?;
        Ok(again)
    }

    /// The handler with crun as the shim's low-level runtime (its log says which ran).
    pub fn over_crun(&mut self) -> Result<String, String> {
        let _restore = RestoreConfig;
        write_config(&["crun"])?;
        let mark = log_mark();
        let pod = self.pod("npu", false)?;
        let d = self.plan.device;
        let id = self.c.start_container(
            &pod,
            &ContainerSpec {
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
    }

    /// A privileged pod of the handler without a request opens no NPU.
    pub fn privileged(&mut self) -> Result<String, String> {
        let pod = self.pod("npu", true)?;
        let id = self.c.start_container(
            &pod,
            &ContainerSpec {
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
    /// exactly the NPU named, the management node and the driver's files.
    pub fn cdi(&mut self) -> Result<String, String> {
        let plan = self.plan;
        let (one, other) = (plan.device, plan.linked);
        let pod = self.pod("npu", false)?;
        let field = self.c.start_container(
            &pod,
            &ContainerSpec {
                cdi_devices: vec![format!("{CDI_KIND}={one}")],
                ..Default::default()
            },
        )?;
        let annotated = self.c.start_container(
            &pod,
            &ContainerSpec {
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
                "cat /dev/davinci_manager </dev/null >/dev/null; \
                 cat /usr/local/Ascend/driver/version.info",
            )?;
            if !(out.contains("No such device or address") && out.contains("Version=")) {
                return Err(format!(
                    "{id}: davinci_manager or the driver's version.info is missing: {out}"
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
    pub fn guarded(&mut self) -> Result<String, String> {
        let plan = self.plan;
        let all: Vec<u32> = (0..plan.chips).collect();
        let handed = ContainerSpec {
            devices: device_specs(&all),
            ..Default::default()
        };
        let before = self.pod("runc", false)?;
        let early = self.c.start_container(&before, &handed)?;
        self.expect_npus("a runc pod, no guard", &early, &all)?;
        must("npu-ctk guard install --cgroup /kubepods.slice")?;
        self.expect_npus("a runc pod started before the guard", &early, &[])?;
        let pod = self.pod("runc", false)?;
        let late = self.c.start_container(&pod, &handed)?;
        self.expect_npus("a runc pod under the guard", &late, &[])?;
        let d = plan.device;
        let cdi = self.c.start_container(
            &pod,
            &ContainerSpec {
                cdi_devices: vec![format!("{CDI_KIND}={d}")],
                ..Default::default()
            },
        )?;
        self.expect_npus(&format!("a runc pod's CDI NPU {d}"), &cdi, &[d])?;
        if let Ok(trainer) = self.trainer() {
            let request = plan.request.clone();
            self.expect_npus("the trainer under the guard", &trainer, &request)?;
        }
        self.c.remove_pod(&before)?;
        self.c.remove_pod(&pod)?;
        must("bpftool cgroup show /sys/fs/cgroup/kubepods.slice")
    }

    /// `env_requests = "privileged"`: a pod's own variable is no authority, a device
    /// plugin's DeviceSpecs and a privileged pod's variable are.
    pub fn env_requests(&mut self) -> Result<String, String> {
        let _restore = RestoreConfig;
        write_config_with(&["runc"], "env_requests = \"privileged\"\n")?;
        let plan = self.plan;
        let request = Plan::list(&plan.request);
        let pod = self.pod("npu", false)?;
        let forged = self.c.start_container(
            &pod,
            &ContainerSpec {
                env: env(&request),
                ..Default::default()
            },
        )?;
        self.expect_npus("a pod's own variable", &forged, &[])?;
        let handed = self.c.start_container(
            &pod,
            &ContainerSpec {
                env: env(&request),
                devices: device_specs(&[plan.device]),
                ..Default::default()
            },
        )?;
        self.expect_npus("DeviceSpecs", &handed, &[plan.device])?;
        let admin = self.pod("npu", true)?;
        let trusted = self.c.start_container(
            &admin,
            &ContainerSpec {
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
    }

    /// The trainer's pod's containerd-shim killed: containerd cleans up after it; `npu-ctk
    /// gc` then leaves no record of the pod's containers (the detail says how many it had to
    /// remove).
    pub fn killed_shim(&mut self) -> Result<String, String> {
        self.trainer()?;
        let (pod, a, b) = self.trainer.take().unwrap();
        for id in [&a, &b] {
            if !has_record(id) {
                return Err(format!("{} missing while it runs", record(id)));
            }
        }
        let shim = cri::shim_of(&pod)?;
        must(&format!("kill -KILL {shim}"))?;
        self.c.wait_exited(&a)?;
        self.c.wait_exited(&b)?;
        cri::wait_dead_shim_cleanup(Path::new(SOCKET))?;
        let gc = must("npu-ctk gc")?;
        let left: Vec<String> = [&a, &b]
            .into_iter()
            .filter(|id| has_record(id))
            .map(|id| record(id))
            .collect();
        self.c.remove_pod(&pod)?;
        if !left.is_empty() {
            return Err(format!("left after gc: {left:?}; gc said: {gc}"));
        }
        Ok(gc.lines().next().unwrap_or_default().to_string())
    }

    /// Every pod removed: no record, policy entry or container cgroup left; the node guard
    /// uninstalled (whatever failed before).
    pub fn cleanup(&mut self) -> Result<String, String> {
        let removed = self.c.remove_all();
        let uninstalled = must("npu-ctk guard uninstall --cgroup /kubepods.slice");
        removed?;
        uninstalled?;
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
        if attached("/kubepods.slice", "npu_dev_guard")? {
            return Err("the node guard is still on kubepods.slice".into());
        }
        Ok(String::new())
    }
}
