//! Boot 3: the shim over each low-level runtime, through Docker, and the CRI path on each
//! containerd.
use npu_tests::{
    guest::{Results, expect},
    runc::expect_only,
};

use crate::cri;
use crate::node::{
    IMAGE, PAYLOAD, Plan, attached, configure_docker, docker_cgroup_of, exec_verdicts,
    import_image, install_binaries, log_mark, must, run_verdicts, runtimes_run_since, write_config,
};

/// The shim over each low-level runtime, through Docker: the node's runc and crun, then each
/// newer runc package installed over the node's. On each: a request gets exactly its NPUs,
/// `--privileged` none, a broad device rule naming no NPU none, `docker update` keeps the
/// verdicts and the guard program, and a delete leaves no record or grant.
pub fn boot_three(r: &mut Results, plan: &Plan) {
    let ready = r.run("runtimes setup", || {
        install_binaries()?;
        configure_docker("npu-ctk", false)?;
        // The engines registered with these binaries again (boot 2 purged the package's), so
        // doctor finds the node as an operator leaves it.
        if plan.podman {
            must("npu-ctk runtime configure --runtime=podman >/dev/null")?;
        }
        // Boot 2's containers, which Docker could not delete without the package's binaries,
        // started again at this boot.
        must("docker rm -f held around >/dev/null 2>&1; true")?;
        import_image("docker")?;
        must("runc --version | head -1")
    });
    if !ready {
        return;
    }
    r.run("runtime: runc", || runtime_checks(plan, "runc"));
    r.run("runtime: crun", || runtime_checks(plan, "crun"));
    // Kubernetes' path on the node as installed (its runc 1.1), then on each newer containerd
    // once the newer runc packages are in.
    cri::cri_suite(r, plan, "CRI on containerd", None);
    for deb in &plan.runtimes {
        let name = deb.trim_end_matches(".deb");
        r.run(&format!("runtime: {name}"), || {
            must(&format!(
                "DEBIAN_FRONTEND=noninteractive dpkg -i {PAYLOAD}/debs/{deb} >/dev/null"
            ))?;
            runtime_checks(plan, "runc")
        });
    }
    for deb in &plan.containerds {
        let name = format!("CRI on {}", deb.trim_end_matches(".deb"));
        cri::cri_suite(r, plan, &name, Some(deb));
    }
}

/// The checks with `runtime` as the config's one low-level runtime, which must be the one the
/// shim runs (its debug log names the path).
fn runtime_checks(plan: &Plan, runtime: &str) -> Result<String, String> {
    write_config(&[runtime])?;
    let mark = log_mark();
    let chips = plan.chips;
    let version = must(&format!("{runtime} --version | head -1"))?;
    let request = Plan::list(&plan.request);
    expect(
        &format!("{version}: NPUs {request}"),
        run_verdicts(
            "docker",
            &format!("--runtime=npu -e ASCEND_VISIBLE_DEVICES={request}"),
            plan,
        )?,
        expect_only(&plan.request, chips),
    )?;
    expect(
        &format!("{version}: --privileged"),
        run_verdicts("docker", "--runtime=npu --privileged", plan)?,
        expect_only(&[], chips),
    )?;
    expect(
        &format!("{version}: a rule for every NPU, no request"),
        run_verdicts(
            "docker",
            &format!(
                "--runtime=npu --device-cgroup-rule='c {}:* rwm'",
                plan.major
            ),
            plan,
        )?,
        expect_only(&[], chips),
    )?;
    let d = plan.device;
    must(&format!(
        "docker run -d --name updated --runtime=npu -e ASCEND_VISIBLE_DEVICES={d} {IMAGE} \
         sleep 100000"
    ))?;
    let updated = (|| {
        must("docker update --cpus 0.5 --memory 256m --memory-swap 512m updated")?;
        expect(
            &format!("{version}: NPU {d} after docker update"),
            exec_verdicts("docker", "updated", plan)?,
            expect_only(&[d], chips),
        )?;
        let cgroup = docker_cgroup_of("updated")?;
        if !attached(&cgroup, "npu_dev_guard")? {
            return Err(format!(
                "{version}: npu_dev_guard gone from {cgroup} after update"
            ));
        }
        Ok(())
    })();
    must("docker rm -f updated >/dev/null")?;
    updated?;
    let records = must("ls /run/npu-container-runtime | grep -v '^node$' || true")?;
    expect(&format!("{version}: records after delete"), records, "")?;
    let policy: serde_json::Value =
        serde_json::from_str(&must("npu-ctk policy show --json")?).map_err(|e| e.to_string())?;
    expect(
        &format!("{version}: policy entries after delete"),
        policy.as_array().map(Vec::len),
        Some(0),
    )?;
    let ran = runtimes_run_since(mark)?;
    if !(ran.len() == 1 && ran[0].ends_with(&format!("/{runtime}"))) {
        return Err(format!(
            "{version}: the shim ran {ran:?}, want {runtime} alone"
        ));
    }
    Ok(format!("{version} ({})", ran[0]))
}
