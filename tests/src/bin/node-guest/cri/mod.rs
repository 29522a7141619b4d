//! Kubernetes' path on the node (boot 3): the node's containerd with its CRI plugin as kubeadm
//! sets it up (`containerd config default` with `SystemdCgroup = true`), the `npu` handler
//! registered by `npu-ctk runtime configure`, and pods under kubepods.slice driven in the
//! kubelet's order by `npu_tests::cri` (the checks: `pods`). Run on containerd 1.7 (config
//! version 2) and again on containerd 2.1 (version 3) installed over it.
mod pods;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use npu_tests::{cri::Client, guest::Results};

use crate::node::{PAYLOAD, Plan, must, sh, write_config};
use pods::Kube;

const SOCKET: &str = "/run/containerd/containerd.sock";
const STATE: &str = "/run/containerd";
const CONFIG: &str = "/etc/containerd/config.toml";
/// The pods' image (and the sandbox image): the node's busybox with a command that sleeps.
const POD_IMAGE: &str = "docker.io/library/npu-pod:latest";
const IMAGE_TAR: &str = "/var/lib/npu-test/pod-image.tar";
const CDI_SPEC: &str = "/etc/cdi/ascend.json";

/// The CRI checks on containerd `name` (the node's, or the package `deb` installed over it):
/// their results are named "`name`: ...".
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
    let mut k = Kube::new(&mut c, plan, name);
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
    r.run(&format!("{name}: doctor"), doctor);
    r.run(&format!("{name}: cleanup"), || k.cleanup());
}

/// Installs `deb` (over the node's containerd) if given, writes containerd's config as a
/// kubeadm node has it, registers the handler, restarts containerd, imports the image and
/// clears what an earlier run left (pods, the node guard on kubepods.slice).
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
            "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold {PAYLOAD}/debs/{deb} \
             >/dev/null"
        ))?;
    }
    let config_version = containerd_config()?;
    let version = must("containerd --version")?;
    // A stale or wrong package would check 1.7 twice under 2.1's name.
    let want = if deb.is_some() {
        ("version = 3", "containerd/v2 2.")
    } else {
        ("version = 2", "containerd 1.")
    };
    if config_version != want.0 || !version.contains(want.1) {
        return Err(format!(
            "want {} and {}: {version}; {config_version}",
            want.1, want.0
        ));
    }
    write_config(&["runc"])?;
    must(&format!(
        "mkdir -p /etc/cdi && npu-ctk cdi generate --output {CDI_SPEC} && \
         npu-ctk runtime configure --runtime=containerd >/dev/null && \
         systemctl restart containerd"
    ))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = Client::connect(Path::new(SOCKET), Path::new(STATE), POD_IMAGE, deadline)?;
    let left = client.remove_listed()?;
    // Absent unless an earlier run failed before uninstalling it.
    let _ = sh("npu-ctk guard uninstall --cgroup /kubepods.slice");
    must(&format!(
        "ctr -n k8s.io images import {IMAGE_TAR} >/dev/null"
    ))?;
    handler_as_read()?;
    let runc = must("runc --version | head -1")?;
    // The kubelet starts these at its start (the node guard attaches to the first).
    must("systemctl start kubepods.slice kubepods-besteffort.slice")?;
    Ok((
        client,
        format!("{version}; {config_version}; {runc}; {left} pod(s) left before"),
    ))
}

/// Writes containerd's default config with the systemd cgroup driver, CDI on (1.7's default
/// is off) and our sandbox image (no registry here); returns its `version` line.
fn containerd_config() -> Result<String, String> {
    let default = must("containerd config default")?;
    let mut edited = Vec::new();
    let (mut systemd, mut sandbox) = (false, false);
    for line in default.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let key = line.trim_start().split(" = ").next().unwrap_or_default();
        edited.push(match key {
            "SystemdCgroup" => {
                systemd = true;
                format!("{indent}SystemdCgroup = true")
            }
            "enable_cdi" => format!("{indent}enable_cdi = true"),
            // 1.x: sandbox_image; 2.x: pinned_images' sandbox.
            "sandbox_image" | "sandbox" => {
                sandbox = true;
                format!("{indent}{key} = {POD_IMAGE:?}")
            }
            _ => line.to_string(),
        });
    }
    if !(systemd && sandbox) {
        return Err(format!(
            "containerd's default config has no SystemdCgroup or sandbox image:\n{default}"
        ));
    }
    std::fs::write(CONFIG, edited.join("\n") + "\n").map_err(|e| format!("{CONFIG}: {e}"))?;
    let version = default
        .lines()
        .find(|l| l.starts_with("version"))
        .ok_or("containerd's default config has no version")?;
    Ok(version.trim().to_string())
}

/// The handler as containerd read it (`config dump`): our shim, with runc's options (the
/// cgroup driver) copied in.
fn handler_as_read() -> Result<(), String> {
    let dump = must("containerd config dump")?;
    let mut lines = dump
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("runtimes.npu]"));
    let header = lines
        .next()
        .ok_or_else(|| format!("containerd has no npu handler:\n{dump}"))?;
    // The handler's table and its options table, up to the next other table.
    let table: Vec<&str> = lines
        .take_while(|l| !l.trim_start().starts_with('[') || l.contains("runtimes.npu.options]"))
        .collect();
    let text = table.join("\n");
    for want in [
        "/usr/local/bin/npu-container-runtime",
        "SystemdCgroup = true",
    ] {
        if !text.contains(want) {
            return Err(format!("the npu handler lacks {want}:\n{header}\n{text}"));
        }
    }
    Ok(())
}

/// `npu-ctk doctor` on the Kubernetes node: the handler recognised; the warnings are the
/// detail (the host judges them).
fn doctor() -> Result<String, String> {
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
