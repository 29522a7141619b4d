//! `npu-ctk monitor`: denials as they happen, resolved to container and NPU; nothing for
//! allowed accesses; agrees with the counters; survives a program upgrade; stops on Ctrl-C.
use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::{Place, each_cgroup_mode},
    host::FakeHost,
    require_root, require_tools, run,
    runc::{RuncContainer, start_npu},
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

/// Makes `/tmp/nN` in the container's rootfs from the host (the guard refuses mknod inside),
/// then opens it from inside `times` times.
fn open_npu(c: &RuncContainer<'_>, host: &FakeHost, npu: u32, times: usize) {
    let node = c.bundle.join(format!("rootfs/tmp/n{npu}"));
    let _ = std::fs::remove_file(&node);
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(host.chip_major.into(), npu.into()),
    )
    .unwrap();
    for _ in 0..times {
        let (ok, out) = c.sh(&format!("cat /tmp/n{npu} </dev/null >/dev/null"));
        assert!(!ok && out.contains("Operation not permitted"), "{out}");
    }
}

/// The guard's denied counter for container `id`, as `npu-ctk policy show` reports it.
fn denied(host: &FakeHost, id: &str) -> u64 {
    let policy: serde_json::Value = serde_json::from_str(&run(Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["policy", "show", "--json"])))
    .unwrap();
    let entry = policy
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned();
    entry
        .and_then(|e| e["denied"].as_u64())
        .unwrap_or_else(|| panic!("no counter for {id}: {policy}"))
}

fn monitor_case(place: Place<'_>, mode: &str) {
    let host = FakeHost::new(3);
    let a = start_npu(place, &host, "1").expect("a");
    let mut monitor = Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["monitor", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(monitor.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("following 1 program version"),
        "{mode}: {line}"
    );

    // Allowed accesses print nothing; three denied opens of NPU 0 print three lines.
    let (_, out) = a.sh("cat /dev/davinci1 </dev/null; cat /dev/davinci_manager </dev/null");
    assert!(out.contains("No such device or address"), "{mode}: {out}");
    open_npu(&a, &host, 0, 3);
    assert_eq!(denied(&host, &a.id), 3, "{mode}: A's counter");

    // A program upgrade: the pins of this build move aside, the next container loads afresh.
    let versions = npu_runtime::enforce::guard::versions(&host.config.bpf_dir).unwrap();
    std::fs::rename(
        host.config.bpf_dir.join(&versions[0]),
        host.config.bpf_dir.join("0-old"),
    )
    .unwrap();
    let b = start_npu(place, &host, "0").expect("b");
    std::thread::sleep(Duration::from_millis(1500)); // the monitor rescans every second
    open_npu(&b, &host, 2, 1);

    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = monitor.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: monitor did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{mode}: monitor exit {status}");
    let mut out = String::new();
    monitor
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |c: &RuncContainer<'_>| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["container"] == c.id.as_str())
            .collect()
    };
    let ea = of(&a);
    assert_eq!(ea.len(), 3, "{mode}: exactly three denials for A:\n{out}");
    for e in &ea {
        assert_eq!(e["npu"], 0, "{mode}: {e}");
        assert_eq!(e["access"], "r", "{mode}: {e}");
        assert_eq!(e["comm"], "cat", "{mode}: {e}");
        assert_eq!(e["device"], "davinci0", "{mode}: {e}");
    }
    let eb = of(&b);
    assert_eq!(
        eb.len(),
        1,
        "{mode}: B's denial through the new program:\n{out}"
    );
    assert_eq!(eb[0]["npu"], 2);
    assert_eq!(events.len(), 4, "{mode}: nothing else:\n{out}");

    // The counters agree with what the monitor saw.
    assert_eq!(denied(&host, &b.id), 1, "{mode}");
}

#[test]
fn monitor_reports_exactly_the_denials() {
    if can_run() {
        each_cgroup_mode(monitor_case);
    }
}

/// `--verbose` adds the guard programs' own log lines (aya-log, written on the deny path only):
/// one per denial, naming the device and the container's cgroup; allowed accesses log nothing.
#[test]
fn verbose_adds_the_guards_log_lines() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    let a = start_npu(Place::Host, &host, "1").expect("a");
    let (lines, out) = npu_tests::monitor_events(Place::Host, &host, &["--verbose"], || {
        let (_, out) = a.sh("cat /dev/davinci1 </dev/null");
        assert!(out.contains("No such device or address"), "{out}");
        open_npu(&a, &host, 0, 2);
    });
    let logs: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("log").is_some()).collect();
    let cgroup_id = lines
        .iter()
        .find(|l| l["container"] == a.id.as_str())
        .and_then(|l| l["cgroup_id"].as_u64())
        .unwrap_or_else(|| panic!("no denial for {}:\n{out}", a.id));
    assert_eq!(logs.len(), 2, "one log line per denial:\n{out}");
    for l in logs {
        let text = l["log"].as_str().unwrap();
        assert!(
            text.contains(&format!("denied {}:0", host.chip_major))
                && text.contains(&cgroup_id.to_string()),
            "{l}"
        );
        assert_eq!(l["level"], "warn", "{l}");
    }
}
