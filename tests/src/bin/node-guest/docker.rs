//! Docker with the systemd cgroup driver, through the release binaries: the isolation
//! matrix, `/dev/char` links and `daemon-reload`, `docker update`, restarts, the node guard on
//! docker.slice and the monitor.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use npu_tests::{
    guest::{Results, expect},
    runc::expect_only,
};

use crate::node::{
    DRIVER_VERSION, IMAGE, Plan, attached, docker_cgroup_of, exec_verdicts, must, run_verdicts, sh,
    wait_for,
};

pub fn docker_suite(r: &mut Results, plan: &Plan) {
    let chips = plan.chips;
    let request = Plan::list(&plan.request);
    r.run("docker request", || {
        let flags = format!("--runtime=npu -e ASCEND_VISIBLE_DEVICES={request}");
        expect(
            &format!("NPUs {request}"),
            run_verdicts("docker", &flags, plan)?,
            expect_only(&plan.request, chips),
        )?;
        let out = must(&format!(
            "docker run --rm {flags} {IMAGE} sh -c 'cat {DRIVER_VERSION}; cat /dev/davinci_manager 2>&1; true'"
        ))?;
        if !(out.contains("Version=24.1.0") && out.contains("No such device or address")) {
            return Err(format!("driver file and management node: {out}"));
        }
        Ok(format!("{chips} NPUs of major {}: got exactly {request}, the driver mount and davinci_manager", plan.major))
    });
    r.run("docker privileged without a request", || {
        expect(
            "--privileged",
            run_verdicts("docker", "--runtime=npu --privileged", plan)?,
            expect_only(&[], chips),
        )?;
        Ok("none".into())
    });
    r.run("docker --device", || {
        let d = plan.device;
        expect(
            "--device",
            run_verdicts(
                "docker",
                &format!("--runtime=npu --device /dev/davinci{d}"),
                plan,
            )?,
            expect_only(&[d], chips),
        )?;
        Ok(format!("exactly {d}"))
    });

    // Two long-lived containers: one's NPU has a /dev/char link, the other's has none.
    let (linked, unlinked) = (plan.linked, plan.unlinked);
    let started = r.run("docker long-lived containers", || {
        for (name, npu) in [("linked", linked), ("unlinked", unlinked)] {
            must(&format!(
                "docker run -d --name {name} --runtime=npu -e ASCEND_VISIBLE_DEVICES={npu} \
                 {IMAGE} sleep 100000"
            ))?;
        }
        let cgroup = docker_cgroup_of("linked")?;
        if !cgroup.starts_with("/docker.slice/docker-") {
            return Err(format!("Docker's systemd driver put it in {cgroup}"));
        }
        let unit = cgroup.rsplit('/').next().unwrap_or_default();
        let allow = must(&format!("systemctl show -p DeviceAllow {unit}"))?;
        let wanted = format!("/dev/char/{}:{linked}", plan.major);
        if !allow.contains(&wanted) {
            return Err(format!("{unit} lacks {wanted}: {allow}"));
        }
        if !attached(&cgroup, "npu_dev_guard")? {
            return Err(format!("npu_dev_guard is not on {cgroup}"));
        }
        Ok(format!("{cgroup}: {allow}"))
    });
    let both = |when: &str| -> Result<(), String> {
        expect(
            &format!("linked NPU {linked} {when}"),
            exec_verdicts("docker", "linked", plan)?,
            expect_only(&[linked], chips),
        )?;
        expect(
            &format!("unlinked NPU {unlinked} {when}"),
            exec_verdicts("docker", "unlinked", plan)?,
            expect_only(&[unlinked], chips),
        )
    };
    if started {
        r.run("/dev/char links and daemon-reload", || {
            let link = |npu: u32| Path::new(&format!("/dev/char/{}:{npu}", plan.major)).exists();
            expect("links", (link(linked), link(unlinked)), (true, false))?;
            both("before")?;
            must("systemctl daemon-reload")?;
            both("after daemon-reload")?;
            Ok(format!(
                "NPU {linked} (link) and NPU {unlinked} (no link) kept after daemon-reload"
            ))
        });
        r.run("docker update", || {
            must("docker update --cpus 0.5 --memory 256m --memory-swap 512m linked")?;
            let cgroup = docker_cgroup_of("linked")?;
            let max = must(&format!("cat /sys/fs/cgroup{cgroup}/cpu.max"))?;
            if !max.starts_with("50000 ") {
                return Err(format!("cpu.max after update: {max}"));
            }
            both("after docker update")?;
            if !attached(&cgroup, "npu_dev_guard")? {
                return Err("npu_dev_guard gone after update".into());
            }
            must("systemctl daemon-reload")?;
            both("after update and daemon-reload")?;
            Ok(format!("cpu.max {max}; verdicts and guard kept"))
        });
        r.run("container restart", || {
            must("docker restart -t 1 unlinked")?;
            both("after a container restart")?;
            Ok("kept".into())
        });
        r.run("engine restart with live-restore", || {
            let pid = must("docker inspect -f '{{.State.Pid}}' linked")?;
            must("systemctl restart docker")?;
            wait_for("docker back", Duration::from_secs(60), || {
                sh("docker info >/dev/null").0
            })?;
            expect(
                "same process",
                must("docker inspect -f '{{.State.Pid}}' linked")?,
                &pid,
            )?;
            both("after systemctl restart docker")?;
            Ok(format!("pid {pid} kept running with its NPU"))
        });
    }

    r.run("node guard on docker.slice", || {
        expect(
            "plain runc, privileged, unguarded",
            run_verdicts("docker", "--runtime=runc --privileged", plan)?,
            expect_only(&(0..chips).collect::<Vec<_>>(), chips),
        )?;
        must("npu-ctk guard install --cgroup /docker.slice")?;
        expect(
            "plain runc, privileged, guarded",
            run_verdicts("docker", "--runtime=runc --privileged", plan)?,
            expect_only(&[], chips),
        )?;
        if started {
            both("under the node guard")?;
        }
        // Host services are outside the parent: one in system.slice still reaches the node.
        let host =
            must("systemd-run --wait --pipe -q sh -c 'cat /dev/davinci0 </dev/null 2>&1; true'")?;
        if !host.contains("No such device or address") {
            return Err(format!("a host service got: {host}"));
        }
        let failed = must("systemctl list-units --failed --no-legend --plain")?;
        if !failed.is_empty() {
            return Err(format!("failed units: {failed}"));
        }
        Ok("plain runc confined, host services untouched".into())
    });
    r.run(
        "monitor names a container started around the runtime",
        || {
            let mut monitor = Command::new("npu-ctk")
                .args(["monitor", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_secs(3));
            let id = must(&format!(
                "docker run -d --runtime=runc --privileged {IMAGE} sh -c \
             'cat /dev/davinci0 </dev/null >/dev/null 2>&1; sleep 100000'"
            ))?;
            std::thread::sleep(Duration::from_secs(3));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(monitor.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = monitor.wait();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut monitor.stdout.take().unwrap(), &mut out)
                .map_err(|e| e.to_string())?;
            must(&format!("docker rm -f {id}"))?;
            let event = out
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["through_runtime"] == false && e["npu"] == 0)
                .ok_or_else(|| format!("no denial of NPU 0 around the runtime:\n{out}"))?;
            let named = event["container"].as_str().unwrap_or_default();
            if !(id.starts_with(named) && !named.is_empty() && event["engine"] == "docker") {
                return Err(format!("want container {id} of docker: {event}"));
            }
            Ok(event.to_string())
        },
    );
    r.run("docker cleanup", || {
        must("docker rm -f linked unlinked >/dev/null")?;
        must("npu-ctk guard uninstall --cgroup /docker.slice")?;
        if attached("/docker.slice", "npu_dev_guard")? {
            return Err("a guard program is left on docker.slice".into());
        }
        let records = must("ls /run/npu-container-runtime | grep -v '^node$' || true")?;
        expect("records", records, "")?;
        let policy: serde_json::Value = serde_json::from_str(&must("npu-ctk policy show --json")?)
            .map_err(|e| e.to_string())?;
        expect("policy entries", policy.as_array().map(Vec::len), Some(0))?;
        Ok("no record, no grant, no guard".into())
    });
}
