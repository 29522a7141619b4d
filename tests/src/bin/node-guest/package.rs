//! The .deb under systemd: installed (boot 1, before a reboot with two restart-always
//! containers running), then the node guard at boot, reload, the gc timer, upgrade, remove
//! and purge (boot 2).
use std::{path::Path, time::Duration};

use npu_tests::{
    guest::{Results, expect},
    runc::expect_only,
};

use crate::node::{
    DRIVER_VERSION, IMAGE, PAYLOAD, Plan, attached, cgroup_verdicts, configure_docker, diagnostics,
    doctor, exec_verdicts, must, sh, wait_for,
};

/// The package takes over from the release binaries; two restart-always containers are left
/// running for the reboot.
pub fn install(r: &mut Results, plan: &Plan) {
    let chips = plan.chips;
    r.run("package install", || {
        must("docker rm -f $(docker ps -aq) >/dev/null 2>&1; npu-ctk guard uninstall; true")?;
        must(
            "rm -f /usr/local/bin/npu-container-runtime /usr/local/bin/npu-container-hook \
             /usr/local/bin/npu-ctk && rm -rf /etc/npu-container-runtime",
        )?;
        let out = must(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg -i {PAYLOAD}/npu.deb 2>&1"
        ))?;
        expect(
            "enabled",
            must(
                "systemctl is-enabled npu-container-guard.service npu-container-gc.timer \
                 | tr '\\n' ' '",
            )?,
            "enabled enabled",
        )?;
        expect(
            "timer",
            sh("systemctl is-active npu-container-gc.timer").1,
            "active",
        )?;
        // Not started at install: it changes what running containers can open.
        expect(
            "guard after install",
            sh("systemctl is-active npu-container-guard.service").1,
            "inactive",
        )?;
        // Without live-restore, so the reboot stops the containers (they start again at
        // boot by their restart policy) rather than leaving systemd to kill their shims.
        configure_docker("/usr/bin/npu-ctk", false)?;
        if plan.podman {
            must("npu-ctk runtime configure --runtime=podman")?;
        }
        must(&format!("printf '/usr/local/Ascend/driver/lib64\\n{DRIVER_VERSION}\\n' >> /etc/npu-container-runtime/mounts.d/base.list"))?;
        // Left running over the reboot: one through the runtime with a request, and one
        // around it (plain runc, privileged, every node) that records its first open at
        // every start.
        let held = plan.request[0];
        must(&format!(
            "docker run -d --restart=always --name held --runtime=npu \
             -e ASCEND_VISIBLE_DEVICES={held} {IMAGE} sleep 100000"
        ))?;
        must(&format!(
            "docker run -d --restart=always --name around --runtime=runc --privileged {IMAGE} \
             sh -c 'cat /dev/davinci{held} </dev/null >/dev/null 2>/first; exec sleep 100000'"
        ))?;
        expect(
            "held before the reboot",
            exec_verdicts("docker", "held", plan)?,
            expect_only(&[held], chips),
        )?;
        // Unguarded now (the package does not start the guard): what makes boot 2's EPERM
        // the guard's doing.
        let first = must("docker exec around cat /first")?;
        if !first.contains("No such device or address") {
            return Err(format!("around's first open before the guard: {first:?}"));
        }
        Ok(out.lines().last().unwrap_or_default().to_string())
    });
}

/// After the reboot.
pub fn boot_two(r: &mut Results, plan: &Plan) {
    let chips = plan.chips;
    let held = plan.request[0];
    r.run("node guard at boot", || {
        wait_for("held and around running", Duration::from_secs(120), || {
            sh("docker inspect -f '{{.State.Running}}' held around").1 == "true\ntrue"
        })
        .map_err(|e| format!("{e}:\n{}", diagnostics()))?;
        expect(
            "guard unit",
            sh("systemctl is-active npu-container-guard.service").1,
            "active",
        )?;
        let show = |unit: &str, prop: &str| -> Result<u64, String> {
            must(&format!("systemctl show -p {prop} --value {unit}"))?
                .parse()
                .map_err(|e| format!("{unit} {prop}: {e}"))
        };
        let guarded = show("npu-container-guard.service", "ExecMainExitTimestampMonotonic")?;
        let docker = show("docker.service", "ExecMainStartTimestampMonotonic")?;
        // The container around the runtime tried its NPU as it started at boot.
        let first = must("docker exec around cat /first")?;
        if guarded == 0 || guarded > docker || !first.contains("Operation not permitted") {
            return Err(format!(
                "the guard finished at {guarded} us, dockerd started at {docker} us; the \
                 container around the runtime, at its first open at boot: {first:?}"
            ));
        }
        expect(
            "held after the reboot",
            exec_verdicts("docker", "held", plan)?,
            expect_only(&[held], chips),
        )?;
        Ok(format!("guard done at {guarded} us, dockerd started at {docker} us; around denied at its first open"))
    });
    doctor(r, "doctor with the node guard");
    r.run("gc timer", || {
        let next =
            must("systemctl show -p NextElapseUSecMonotonic --value npu-container-gc.timer")?;
        if next.is_empty() || next == "0" || next == "infinity" {
            return Err(format!("the timer is not scheduled: {next}"));
        }
        must("systemctl start npu-container-gc.service")?;
        expect(
            "result",
            must("systemctl show -p Result --value npu-container-gc.service")?,
            "success",
        )?;
        Ok(format!("next elapse {next}; a run succeeded"))
    });
    r.run("guard reload", || {
        must("mkdir -p /sys/fs/cgroup/docker")?;
        must("systemctl reload npu-container-guard.service")?;
        let status = must("npu-ctk guard status")?;
        let ok = attached("/docker", "npu_dev_guard")?;
        let _ = must("npu-ctk guard uninstall --cgroup /docker; rmdir /sys/fs/cgroup/docker");
        if !ok {
            return Err(format!("/docker not guarded after reload:\n{status}"));
        }
        Ok(status)
    });
    r.run("package upgrade", || {
        must(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg -i {PAYLOAD}/npu-upgrade.deb"
        ))?;
        expect(
            "guard unit",
            sh("systemctl is-active npu-container-guard.service").1,
            "active",
        )?;
        let status = must("npu-ctk guard status")?;
        if !status
            .lines()
            .any(|l| l.starts_with("/docker.slice ") && l.contains("current"))
        {
            return Err(format!(
                "docker.slice not guarded by the upgrade's build:\n{status}"
            ));
        }
        expect(
            "held",
            exec_verdicts("docker", "held", plan)?,
            expect_only(&[held], chips),
        )?;
        let first = must(&format!(
            "docker exec around sh -c 'cat /dev/davinci{held} </dev/null 2>&1; true'"
        ))?;
        if !first.contains("Operation not permitted") {
            return Err(format!("around after the upgrade: {first}"));
        }
        Ok(status)
    });
    r.run("package remove", || {
        must("DEBIAN_FRONTEND=noninteractive dpkg -r npu-container-runtime")?;
        if attached("/docker.slice", "npu_dev_guard")? {
            return Err("the node guard is left on docker.slice".into());
        }
        // Its own program stays: the container keeps its NPU and nothing more.
        expect(
            "held after remove",
            cgroup_verdicts("held", plan)?,
            expect_only(&[held], chips),
        )?;
        Ok("guard detached; held keeps exactly its NPU".into())
    });
    r.run("package purge", || {
        must("DEBIAN_FRONTEND=noninteractive dpkg -P npu-container-runtime")?;
        for gone in [
            "/etc/npu-container-runtime",
            "/run/npu-container-runtime",
            "/sys/fs/bpf/npu-container-runtime",
        ] {
            if Path::new(gone).exists() {
                return Err(format!("{gone} is left after purge"));
            }
        }
        Ok("configuration, state and pins removed".into())
    });
}
