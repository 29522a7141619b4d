//! Podman 5 (systemd cgroup manager) in its three modes: runtime mode with crun as the shim's
//! low-level runtime, hooks.d, and CDI.
use npu_tests::{
    guest::{Results, expect},
    runc::expect_only,
};

use crate::node::{
    Plan, import_image, log_mark, must, run_verdicts, runtimes_run_since, write_config,
};

pub fn podman_suite(r: &mut Results, plan: &Plan) {
    let chips = plan.chips;
    let podman = "podman";
    // Podman 5 no longer gives CAP_MKNOD by default; the verdict script makes its nodes.
    let flags = "--network none --cap-add MKNOD";
    let ready = r.run("configure podman", || {
        write_config(&["crun"])?;
        must("npu-ctk runtime configure --runtime=podman")?;
        import_image(podman).map(|()| {
            must("podman info --format '{{.Host.CgroupManager}} {{.Host.CgroupsVersion}}'")
                .unwrap_or_default()
        })
    });
    if !ready {
        return;
    }
    let request = Plan::list(&plan.request);
    r.run("podman runtime mode over crun", || {
        let mark = log_mark();
        expect(
            &format!("NPUs {request}"),
            run_verdicts(
                podman,
                &format!("{flags} --runtime npu -e ASCEND_VISIBLE_DEVICES={request}"),
                plan,
            )?,
            expect_only(&plan.request, chips),
        )?;
        expect(
            "--privileged",
            run_verdicts(podman, &format!("{flags} --runtime npu --privileged"), plan)?,
            expect_only(&[], chips),
        )?;
        let ran = runtimes_run_since(mark)?;
        if !(ran.len() == 1 && ran[0].ends_with("/crun")) {
            return Err(format!("the shim ran {ran:?}, want crun alone"));
        }
        Ok(format!(
            "exactly {request}; privileged none; the shim ran {ran:?}"
        ))
    });
    r.run("podman hooks.d", || {
        let dir = "/usr/share/containers/oci/hooks.d";
        must(&format!("npu-ctk hook install --hooks-dir {dir}"))?;
        let d = plan.device;
        let got = run_verdicts(
            podman,
            &format!("{flags} -e ASCEND_VISIBLE_DEVICES={d}"),
            plan,
        );
        must(&format!("rm -f {dir}/npu-*.json"))?;
        expect(&format!("NPU {d}"), got?, expect_only(&[d], chips))?;
        Ok(format!("exactly {d} through the hooks alone"))
    });
    r.run("podman CDI", || {
        must("mkdir -p /etc/cdi && npu-ctk cdi generate --output /etc/cdi/ascend.json")?;
        let d = plan.linked;
        let got = run_verdicts(
            podman,
            &format!("{flags} --device ascend.com/npu={d}"),
            plan,
        );
        let _ = std::fs::remove_file("/etc/cdi/ascend.json");
        expect(
            &format!("ascend.com/npu={d}"),
            got?,
            expect_only(&[d], chips),
        )?;
        Ok(format!("exactly {d}"))
    });
    let _ = write_config(&["runc"]);
}
