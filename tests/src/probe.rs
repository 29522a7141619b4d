//! Device verdicts from a process in given cgroups: `devprobe` reports the errno of each read,
//! write and mknod (ENXIO: allowed, no driver; EPERM: denied), and the expected matrix.
use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bin,
    cgroups::{Place, TestCgroup},
    host::FakeHost,
    run,
};

/// One probe verdict: operation, path, `OK` or errno name.
pub type Verdict = (String, String, String);

/// Runs `devprobe` at `place` after joining `cgroups` (paths as seen from `place`).
pub fn probe(place: Place<'_>, cgroups: &[PathBuf], ops: &[String]) -> Vec<Verdict> {
    let mut cmd = place.command(bin("devprobe"));
    for cg in cgroups {
        cmd.arg("--join").arg(cg);
    }
    cmd.args(ops);
    run(&mut cmd)
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, ' ');
            (
                p.next().unwrap_or_default().to_string(),
                p.next().unwrap_or_default().to_string(),
                p.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A process parked in `cgroups` (paths as seen from `place`), like a container's init.
pub struct Holder {
    child: Child,
}

impl Holder {
    pub fn start(place: Place<'_>, cgroups: &[PathBuf], host_view: &TestCgroup) -> Self {
        let mut cmd = place.command(bin("devprobe"));
        for cg in cgroups {
            cmd.arg("--join").arg(cg);
        }
        let child = cmd
            .args(["exec", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn holder");
        let pid = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !host_view.read("cgroup.procs").lines().any(|l| l == pid) {
            assert!(Instant::now() < deadline, "holder never joined its cgroup");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ops that read, write and mknod `node` (mknod into `scratch`).
pub fn rwm_ops(node: &Path, major: u32, minor: u32, scratch: &Path) -> Vec<String> {
    let name = node.file_name().unwrap().to_string_lossy();
    vec![
        format!("read:{}", node.display()),
        format!("write:{}", node.display()),
        format!(
            "mknod:{}:{major}:{minor}",
            scratch.join(format!("{name}-m")).display()
        ),
    ]
}

/// Ops over every fake node plus a few host devices.
pub fn all_ops(host: &FakeHost) -> Vec<String> {
    let mut ops = Vec::new();
    for i in 0..host.chips {
        ops.extend(rwm_ops(&host.chip(i), host.chip_major, i, &host.scratch));
    }
    for (minor, name) in ["davinci_manager", "devmm_svm", "hisi_hdc"]
        .iter()
        .enumerate()
    {
        ops.extend(rwm_ops(
            &host.node(name),
            host.mgmt_major,
            minor as u32,
            &host.scratch,
        ));
    }
    ops.extend(rwm_ops(
        &host.node("other0"),
        host.other_major,
        0,
        &host.scratch,
    ));
    ops.push("read:/dev/null".into());
    ops
}

pub fn verdict<'a>(v: &'a [Verdict], op: &str, path_end: &str) -> &'a str {
    v.iter()
        .find(|(o, p, _)| o == op && p.ends_with(path_end))
        .map(|(_, _, r)| r.as_str())
        .unwrap_or_else(|| panic!("no {op} verdict for {path_end} in {v:?}"))
}

/// What a process may do with one NPU-class node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Open reaches the (missing) driver: ENXIO; mknod OK.
    Granted,
    /// A registered container's node it was not granted: EPERM for everything.
    Denied,
    /// No container owns the process (under a node guard): mknod OK, read and write EPERM.
    Unowned,
}

fn check_nodes(host: &FakeHost, v: &[Verdict], expect: impl Fn(&str) -> Expect, ctx: &str) {
    let check = |name: &str| {
        let (open, mk) = match expect(name) {
            Expect::Granted => ("ENXIO", "OK"),
            Expect::Denied => ("EPERM", "EPERM"),
            Expect::Unowned => ("EPERM", "OK"),
        };
        assert_eq!(
            verdict(v, "read", &format!("/{name}")),
            open,
            "{ctx}: read {name}"
        );
        assert_eq!(
            verdict(v, "write", &format!("/{name}")),
            open,
            "{ctx}: write {name}"
        );
        assert_eq!(
            verdict(v, "mknod", &format!("/{name}-m")),
            mk,
            "{ctx}: mknod {name}"
        );
    };
    for i in 0..host.chips {
        check(&format!("davinci{i}"));
    }
    for name in ["davinci_manager", "devmm_svm", "hisi_hdc"] {
        check(name);
    }
    assert_eq!(
        verdict(v, "read", "/other0"),
        "ENXIO",
        "{ctx}: non-guarded node"
    );
    assert_eq!(
        verdict(v, "mknod", "/other0-m"),
        "OK",
        "{ctx}: non-guarded mknod"
    );
    assert_eq!(verdict(v, "read", "/dev/null"), "OK", "{ctx}: /dev/null");
}

/// Granted nodes: ENXIO on open (allowed, no driver), mknod OK; other guarded nodes: EPERM
/// for everything; non-guarded devices untouched.
pub fn assert_matrix(host: &FakeHost, v: &[Verdict], granted: &[u32], management: bool, ctx: &str) {
    let expect = |name: &str| {
        let ok = match name
            .strip_prefix("davinci")
            .and_then(|i| i.parse::<u32>().ok())
        {
            Some(i) => granted.contains(&i),
            None => management,
        };
        if ok { Expect::Granted } else { Expect::Denied }
    };
    check_nodes(host, v, expect, ctx);
}

/// A process no container owns, under the guard: it may mknod an NPU-class node but never
/// read or write one; non-guarded devices untouched.
pub fn assert_unowned(host: &FakeHost, v: &[Verdict], ctx: &str) {
    check_nodes(host, v, |_| Expect::Unowned, ctx);
}

/// Runs the `guardctl` helper at `place` with the fake host's config.
pub fn guardctl(place: Place<'_>, host: &FakeHost, args: &[&str]) -> String {
    run(place
        .command(bin("guardctl"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .args(args))
}
