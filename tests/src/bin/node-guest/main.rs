//! `node-guest`: the test run inside a Debian node booted under qemu with systemd as PID 1
//! (tests/tests/nodes.rs). The node image's `npu-guest.service` mounts the payload disk at
//! /opt/npu-test and runs this on every boot, once the engines are up; results go to the
//! second serial port (`npu_tests::guest`). The simulated NPUs are made here by mknod in the
//! node's own /dev, with the majors and chip count the host chose (`plan.json`).
//!
//! Boot 1: the engines with the release binaries in /usr/local/bin (Docker with the systemd
//! cgroup driver, Podman over crun where the node has it), then the .deb installed and two
//! restart-always containers left running, and a reboot. Boot 2: the package's units under
//! systemd (the node guard before the engines' first container), reload, upgrade, remove and
//! purge under running containers. Boot 3 (where the plan names newer packages): the shim over
//! the node's runc, its crun and each newer runc installed over the node's, and Kubernetes'
//! path (the CRI plugin with the systemd cgroup driver) on the node's containerd and on each
//! newer containerd installed over it.
//! `/var/lib/npu-test/phase` says which boot this is. A plan with `runc_suite` makes a node of
//! one boot that runs a current runc's own integration suite through the shim instead.
mod cri;
mod docker;
mod node;
mod package;
mod podman;
mod runc_suite;
mod runtimes;

use std::path::Path;

use npu_tests::guest::Results;

use node::{Plan, configure_docker, doctor, import_image, install_binaries, node_setup, sh};

const PHASE: &str = "/var/lib/npu-test/phase";

fn main() {
    let mut r = Results::open("/dev/ttyS1");
    let plan = Plan::read();
    let phase = std::fs::read_to_string(PHASE).unwrap_or_default();
    let last = match phase.trim() {
        _ if plan.runc_suite.is_some() => {
            runc_suite::runc_suite(&mut r, &plan);
            true
        }
        "" => {
            boot_one(&mut r, &plan);
            false
        }
        "2" => {
            package::boot_two(&mut r, &plan);
            !plan.boot_three()
        }
        _ => {
            runtimes::boot_three(&mut r, &plan);
            true
        }
    };
    if last {
        r.done();
        // Containers whose init ignores SIGTERM would hold the power-off for 90 s.
        let _ = sh("docker rm -f $(docker ps -aq); sync; systemctl poweroff");
    } else {
        let next = if phase.trim().is_empty() { "2" } else { "3" };
        std::fs::create_dir_all(Path::new(PHASE).parent().unwrap()).unwrap();
        std::fs::write(PHASE, next).unwrap();
        // Boot 1 leaves its two restart-always containers for boot 2 to find.
        if next == "3" {
            let _ = sh("docker rm -f $(docker ps -aq)");
        }
        let _ = sh("sync");
        r.line(serde_json::json!({"reboot": true}));
        // qemu runs with -no-reboot: the host boots the same disk again.
        let _ = sh("systemctl reboot");
    }
}

fn boot_one(r: &mut Results, plan: &Plan) {
    if !node_setup(r, plan) {
        return;
    }
    let configured = r.run("configure docker", || {
        install_binaries()?;
        let runtimes = configure_docker("npu-ctk", true)?;
        import_image("docker")?;
        if !runtimes.contains("/usr/local/bin/npu-container-runtime") {
            return Err(format!("docker knows no npu runtime: {runtimes}"));
        }
        Ok(runtimes)
    });
    if configured {
        docker::docker_suite(r, plan);
        if plan.podman {
            podman::podman_suite(r, plan);
        }
    }
    doctor(r, "doctor");
    package::install(r, plan);
}
