//! A node that runs a current runc's own integration suite (tests/tests/node_runc_suite.rs):
//! the newer runc package installed over the node's, its source tree from the payload, and the
//! suite run three ways with the systemd cgroup driver (`RUNC_USE_SYSTEMD`, so its systemd
//! tests run) on this pure v2 node with every controller. Each way's TAP output is a check's
//! detail; the host compares the ways.
use std::{path::Path, process::Command, time::Duration};

use npu_tests::{
    guest::Results,
    runc_suite::{MODES, missing_programs, run_bats},
};

use crate::node::{
    PAYLOAD, Plan, RUNTIME_LOG, RuncSuite, install_binaries, log_mark, must, node_setup,
};

/// Where the tree is copied (the payload is read-only; the suite writes beside its tests).
const TREE: &str = "/root/runc-suite";
/// A directory put first on the suite's PATH (see [`go_stub`]).
const STUB: &str = "/root/runc-suite-bin";

pub fn runc_suite(r: &mut Results, plan: &Plan) {
    let Some(suite) = &plan.runc_suite else {
        return;
    };
    if !node_setup(r, plan) {
        return;
    }
    let ready = r.run("runc's suite setup", || {
        install_binaries()?;
        must(&format!(
            "DEBIAN_FRONTEND=noninteractive dpkg -i {PAYLOAD}/debs/{} >/dev/null",
            suite.deb
        ))?;
        must(&format!(
            "rm -rf {TREE} && cp -a {PAYLOAD}/runc-suite {TREE}"
        ))?;
        // The suite runs its helpers from tests/cmd/_bin, where its Makefile builds them; the
        // package ships them in /usr/sbin.
        must(&format!(
            "mkdir -p {TREE}/tests/cmd/_bin && for h in recvtty sd-helper seccompagent \
             fs-idmap pidfd-kill remap-rootfs; do ln -s /usr/sbin/$h {TREE}/tests/cmd/_bin/$h \
             && test -x /usr/sbin/$h || exit 1; done"
        ))?;
        go_stub()?;
        must("runc --version | head -1")
    });
    if !ready {
        return;
    }
    let binaries = [
        "/usr/sbin/runc".to_string(),
        "/usr/local/bin/npu-container-runtime".to_string(),
        format!("{PAYLOAD}/npu-request-runc"),
    ];
    let mut prepared = 0;
    for (mode, runc) in MODES.iter().zip(binaries) {
        let mark = log_mark();
        r.run(&format!("runc's suite: {mode}"), || {
            run_way(
                &runc,
                suite,
                &format!("/root/{}.tap", mode.replace(' ', "")),
            )
        });
        if *mode == MODES[2] {
            prepared = npus_prepared_since(mark);
        }
    }
    // The request way's containers asked for an NPU: the hook must have given them one.
    r.run("runc's suite: NPU containers prepared", || {
        if prepared == 0 {
            return Err("the hook prepared no container with an NPU in the request way".into());
        }
        Ok(prepared.to_string())
    });
    r.run("runc's suite: nothing left", || {
        let records = must("ls /run/npu-container-runtime | grep -v '^node$' || true")?;
        let policy = must("npu-ctk policy show --json")?;
        let entries: serde_json::Value =
            serde_json::from_str(&policy).map_err(|e| format!("{e}: {policy}"))?;
        if !records.is_empty() || entries.as_array().is_none_or(|a| !a.is_empty()) {
            return Err(format!("records: {records:?}; policy: {policy}"));
        }
        Ok(String::new())
    });
}

/// How many containers the hook prepared with NPUs since the shim's log was `mark` bytes long.
fn npus_prepared_since(mark: u64) -> usize {
    let text = std::fs::read(RUNTIME_LOG).unwrap_or_default();
    let new = String::from_utf8_lossy(&text[(mark as usize).min(text.len())..]).into_owned();
    new.lines()
        .filter(|l| l.contains("NPU container prepared") && !l.contains("devices=[]"))
        .count()
}

/// One way: the suite with `runc` as `$RUNC`; the TAP output is the detail.
fn run_way(runc: &str, suite: &RuncSuite, log: &str) -> Result<String, String> {
    let files: Vec<String> = suite
        .files
        .iter()
        .map(|f| format!("tests/integration/{f}"))
        .collect();
    let mut bats = Command::new("script");
    bats.args(["-qec", &format!("bats -t {}", files.join(" ")), "/dev/null"])
        .current_dir(TREE)
        .env("RUNC", runc)
        .env("RUNC_USE_SYSTEMD", "yes")
        .env(
            "PATH",
            format!("{STUB}:{}", std::env::var("PATH").unwrap_or_default()),
        );
    let limit = Duration::from_secs(suite.minutes * 60);
    run_bats(bats, Path::new(log), limit)?;
    let text = std::fs::read_to_string(log).map_err(|e| format!("{log}: {e}"))?;
    let missing = missing_programs(&text);
    if !missing.is_empty() {
        return Err(format!(
            "the suite ran programs the node lacks: {missing:?} (add their packages to \
             xtask/src/nodes.rs)\n{text}"
        ));
    }
    Ok(text)
}

/// The suite's `get-images.sh` asks `go env GOARCH` for the image architecture; the node has
/// no Go, so a stub answers that one question with dpkg's architecture and refuses the rest.
fn go_stub() -> Result<(), String> {
    std::fs::create_dir_all(STUB).map_err(|e| format!("{STUB}: {e}"))?;
    let go = Path::new(STUB).join("go");
    std::fs::write(
        &go,
        "#!/bin/sh\n[ \"$*\" = \"env GOARCH\" ] && exec dpkg --print-architecture\n\
         echo \"go stub: only 'go env GOARCH' is answered\" >&2\nexit 1\n",
    )
    .map_err(|e| format!("{}: {e}", go.display()))?;
    must(&format!("chmod 755 {}", go.display())).map(drop)
}
