//! `cargo xtask bench`: what the runtime costs, always as a ratio to a baseline measured in
//! the same run, with A and B runs interleaved so machine noise hits both alike.
//!
//! 1. Start cost on the engine path: `create` + `start` (timed to `start`'s return), as
//!    Docker/containerd, Podman and CRI-O call it, and `delete` timed on its own; plain runc vs
//!    the shim with 2 NPUs and a 5-entry mount list, and the shim without a request; on pure
//!    cgroup v2 and on this host's v1. Two decomposition rows: runc with the shim's devices
//!    and rules but no hooks, and runc with do-nothing createRuntime and poststop hooks. Then
//!    the same variants through `runc run` (which also times the container's life, poststop
//!    and runc's own delete); two active device profiles against one (1c); a server-sized
//!    `/dev` against the small one (1d). The hook's own duration comes from its log line.
//! 2. Guard cost per device access: open+close of a non-guarded and of a granted NPU node from
//!    a container cgroup with runc's deny-by-default filter, without and with the guard.
//! 3. Scale: 100 containers started concurrently, shim vs plain runc; hook time with 10, 100
//!    and 1000 containers registered, under a node guard.
//! 4. Peak RSS of the shim and of the hook.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use npu_runtime::{
    enforce::guard::Guard,
    node::config::PATH_ENV,
    node::rules::{Access, DevType, Grant},
};
use npu_tests::{
    bin,
    cgroups::{Place, TestCgroup, V2Namespace, unified_mount},
    host::FakeHost,
    run,
    runc::{RuncContainer, write_bundle},
    unique,
};

const ROUNDS: usize = 200;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("npu-bench: run as root");
        std::process::exit(1);
    }
    let host = FakeHost::new(4);
    bench_mount_list(&host);
    // Timed runs log at the default level, as in production.
    set_log_level(&host, "info");
    println!("# npu-container-runtime benchmarks");
    println!(
        "machine: {} CPUs, kernel {}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run(Command::new("uname").arg("-r")).trim(),
        run(Command::new("runc").arg("--version"))
            .lines()
            .next()
            .unwrap_or_default()
    );
    let ns = V2Namespace::new();
    let variants = Variants::new(&host);
    let layouts = [
        (Place::V2(&ns), "cgroup v2"),
        (Place::Host, "host (cgroup v1)"),
    ];
    for (place, mode) in layouts {
        engine_path(place, mode, &host, &variants);
    }
    for (place, mode) in layouts {
        start_overhead(place, mode, &host, &variants);
    }
    // The same host with KunlunXin XPUs too: two active profiles.
    let mut mixed = FakeHost::new(4);
    mixed.add_family("xpu", 4, &["xpuctrl"], Some("kunlun"));
    bench_mount_list(&mixed);
    set_log_level(&mixed, "info");
    for (place, mode) in layouts {
        two_profiles(place, mode, [&host, &mixed], &variants);
    }
    // A server's /dev: 16 NPUs, their management nodes and 600 unrelated nodes and links.
    let server = FakeHost::new(16);
    server.add_unrelated(500, 100);
    bench_mount_list(&server);
    set_log_level(&server, "info");
    for (place, mode) in layouts {
        server_dev(place, mode, [&host, &server], &variants);
    }
    guard_cost(Place::V2(&ns), &host);
    scale(Place::V2(&ns), &host);
    memory(&host);
}

/// Rewrites the `log_level` of the host's config file.
fn set_log_level(host: &FakeHost, level: &str) {
    let text = std::fs::read_to_string(&host.config_path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("log_level") {
                format!("log_level = \"{level}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&host.config_path, text).unwrap();
}

/// A 5-entry mount list named `bench`.
fn bench_mount_list(host: &FakeHost) {
    let root = host.dir.path().join("driver");
    let mut list = String::new();
    for i in 0..5 {
        let rel = format!("usr/local/Ascend/bench/file{i}");
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "x").unwrap();
        list.push_str(&format!("/{rel}\n"));
    }
    std::fs::write(host.config.mount_list_dir.join("bench.list"), list).unwrap();
}

struct Stats {
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
}

fn stats(samples: &[f64]) -> Stats {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    Stats {
        min: s[0],
        median: at(0.5),
        p99: at(0.99),
        max: s[s.len() - 1],
    }
}

fn row(name: &str, unit: &str, samples: &[f64], baseline: Option<f64>) -> f64 {
    let s = stats(samples);
    let ratio = baseline.map_or(String::new(), |b| format!("  ratio {:.3}", s.median / b));
    println!(
        "  {name:<50} min {:>9.2} median {:>9.2} max {:>9.2} {unit}{ratio}",
        s.min, s.median, s.max
    );
    s.median
}

/// A bundle running `args` with `env` in a busybox rootfs.
fn bundle(
    dir: &Path,
    args: &[&str],
    env: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> (PathBuf, Vec<u8>) {
    write_bundle(dir, &unique("bench-bundle"), args, |spec| {
        for e in env {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push((*e).into());
        }
        edit(spec);
    })
}

/// One foreground `runc run` of a fresh container from `bundle` (its pristine spec restored
/// first, as an engine writes a new one for every container); returns the wall time.
fn timed_run(
    place: Place<'_>,
    runtime: &Path,
    host: &FakeHost,
    bundle: &(PathBuf, Vec<u8>),
) -> Duration {
    std::fs::write(bundle.0.join("config.json"), &bundle.1).unwrap();
    let mut cmd = runtime_cmd(place, runtime, host);
    cmd.args(["run", "--bundle"])
        .arg(&bundle.0)
        .arg(unique("bench"));
    let started = Instant::now();
    let status = cmd.status().expect("runc run");
    let elapsed = started.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    elapsed
}

/// Hook durations (ms) logged since `from` bytes into the runtime log.
fn hook_durations(host: &FakeHost, from: usize, stage: &str) -> Vec<f64> {
    let log = std::fs::read_to_string(host.dir.path().join("runtime.log")).unwrap_or_default();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("hook finished") && l.contains(&format!("stage=\"{stage}\"")))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("elapsed_us="))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|us| us / 1000.0)
        .collect()
}

fn log_len(host: &FakeHost) -> usize {
    std::fs::metadata(host.dir.path().join("runtime.log")).map_or(0, |m| m.len() as usize)
}

/// A bundle directory and its pristine spec.
type Bundle = (PathBuf, Vec<u8>);

/// The bundles section 1 compares, each with its pristine spec.
struct Variants {
    plain: (PathBuf, Vec<u8>),
    npu: (PathBuf, Vec<u8>),
    devices_only: (PathBuf, Vec<u8>),
    nop_hooks: (PathBuf, Vec<u8>),
}

impl Variants {
    fn new(host: &FakeHost) -> Self {
        let dir = host.dir.path();
        let request = ["ASCEND_VISIBLE_DEVICES=0,1", "ASCEND_RUNTIME_MOUNTS=bench"];
        let plain = bundle(dir, &["true"], &[], |_| {});
        let npu = bundle(dir, &["true"], &request, |_| {});
        // The same devices and rules the shim writes, but no hooks: what runc itself spends on
        // the NPU devices, apart from our processes.
        let edited = run_with_input(
            Command::new(bin("npu-container-hook"))
                .env(PATH_ENV, &host.config_path)
                .arg("precreate"),
            &npu.1,
        );
        let devices_only = bundle(dir, &["true"], &request, |spec| {
            let full: serde_json::Value = serde_json::from_str(&edited).unwrap();
            spec["linux"]["devices"] = full["linux"]["devices"].clone();
            spec["linux"]["resources"]["devices"] = full["linux"]["resources"]["devices"].clone();
        });
        // Hooks that do nothing where ours run: what any hook costs, apart from our work.
        let nop = bin("nop-hook");
        let nop_hooks = bundle(dir, &["true"], &[], |spec| {
            let entry = serde_json::json!([{ "path": nop, "args": ["nop-hook"] }]);
            spec["hooks"] = serde_json::json!({ "createRuntime": entry, "poststop": entry });
        });
        Self {
            plain,
            npu,
            devices_only,
            nop_hooks,
        }
    }

    /// (runtime, bundle) per variant, in the order of the rows: the baseline first.
    fn list<'a>(
        &'a self,
        shim: &'a Path,
        runc: &'a Path,
    ) -> [(&'a Path, &'a (PathBuf, Vec<u8>)); 5] {
        [
            (runc, &self.plain),
            (shim, &self.npu),
            (shim, &self.plain),
            (runc, &self.devices_only),
            (runc, &self.nop_hooks),
        ]
    }
}

/// Runs `variants` for `ROUNDS` rounds, one after the other in each round with the order
/// rotated (so no variant always follows another's teardown); `measure` returns one sample
/// per figure. Returns samples[figure][variant].
fn interleaved<T: Copy>(
    variants: &[T],
    figures: usize,
    mut measure: impl FnMut(T) -> Vec<f64>,
) -> Vec<Vec<Vec<f64>>> {
    let mut samples = vec![vec![Vec::new(); variants.len()]; figures];
    for round in 0..ROUNDS {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            for (f, value) in measure(variants[i]).into_iter().enumerate() {
                samples[f][i].push(value);
            }
        }
    }
    samples
}

/// The median of per-round ratios of variant `i` to the baseline (variant 0): every round
/// runs each variant once, back to back, so this also cancels the machine's slower drifts,
/// which the ratio of medians still carries.
fn paired(samples: &[Vec<f64>], i: usize) -> f64 {
    paired_to(samples, i, 0)
}

/// The median of per-round ratios of variant `i` to variant `base`.
fn paired_to(samples: &[Vec<f64>], i: usize, base: usize) -> f64 {
    let ratios: Vec<f64> = samples[i]
        .iter()
        .zip(&samples[base])
        .map(|(b, a)| b / a)
        .collect();
    stats(&ratios).median
}

/// Rows for the five variants of [`Variants::list`], with their paired ratios.
fn variant_rows(samples: &[Vec<f64>], names: [&str; 5]) {
    let base = row(names[0], "ms", &samples[0], None);
    for (i, name) in names.iter().enumerate().skip(1) {
        row(name, "ms", &samples[i], Some(base));
    }
    println!(
        "  median of per-round ratios: 2 NPUs {:.3}, no request {:.3}, no hooks {:.3}, do-nothing hooks {:.3}",
        paired(samples, 1),
        paired(samples, 2),
        paired(samples, 3),
        paired(samples, 4)
    );
}

fn hook_summary(host: &FakeHost, log_from: usize) {
    for stage in ["create-runtime", "poststop"] {
        let hooks = hook_durations(host, log_from, stage);
        // Behind the shim no poststop runs: only `runc run` (1b) has one.
        if hooks.is_empty() {
            continue;
        }
        let s = stats(&hooks);
        println!(
            "  hook {stage}, in-process (n={}): median {:.2} ms, p99 {:.2} ms",
            hooks.len(),
            s.median,
            s.p99
        );
    }
}

/// `runtime ARGS` at `place` with the host's config and a private runc root, quiet.
fn runtime_cmd(place: Place<'_>, runtime: &Path, host: &FakeHost) -> Command {
    let mut cmd = place.command(runtime);
    cmd.env(PATH_ENV, &host.config_path)
        .arg("--root")
        .arg(host.dir.path().join("runc-root"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The engine path for one fresh container from `bundle` (its pristine spec restored first):
/// `create` then `start`, timed to `start`'s return; then, once the container has exited,
/// `delete` (the shim's cleanup, or a bundle's poststop hooks, run there), timed on its own.
/// Returns both, in ms.
fn timed_engine_path(
    place: Place<'_>,
    runtime: &Path,
    host: &FakeHost,
    bundle: &(PathBuf, Vec<u8>),
) -> Vec<f64> {
    std::fs::write(bundle.0.join("config.json"), &bundle.1).unwrap();
    let id = unique("bench");
    let ok = |mut cmd: Command| assert!(cmd.status().is_ok_and(|s| s.success()), "{cmd:?} failed");
    let mut create = runtime_cmd(place, runtime, host);
    create.args(["create", "--bundle"]).arg(&bundle.0).arg(&id);
    let mut start = runtime_cmd(place, runtime, host);
    start.args(["start", &id]);
    let started = Instant::now();
    ok(create);
    ok(start);
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    // Not timed: wait for `true` to exit, asking plain runc.
    loop {
        let out = place
            .command("runc")
            .arg("--root")
            .arg(host.dir.path().join("runc-root"))
            .args(["state", &id])
            .output()
            .expect("runc state");
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if state["status"] == "stopped" {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut delete = runtime_cmd(place, runtime, host);
    delete.args(["delete", &id]);
    let deleted = Instant::now();
    ok(delete);
    vec![start_ms, deleted.elapsed().as_secs_f64() * 1e3]
}

fn engine_path(place: Place<'_>, mode: &str, host: &FakeHost, variants: &Variants) {
    println!(
        "\n## 1. engine path: `create` + `start` of busybox `true`, then `delete`, {mode}, {ROUNDS} rounds, order rotated"
    );
    let shim = bin("npu-container-runtime");
    let runc = PathBuf::from(run(Command::new("sh").args(["-c", "command -v runc"])).trim());
    let list = variants.list(&shim, &runc);
    // Warm up caches and load the guard once (that happens once per build on a host).
    for (runtime, b) in &list[..2] {
        timed_engine_path(place, runtime, host, b);
    }
    let log_from = log_len(host);
    let samples = interleaved(&list, 2, |(runtime, b)| {
        timed_engine_path(place, runtime, host, b)
    });
    println!("  create + start, to start's return:");
    variant_rows(
        &samples[0],
        [
            "plain runc",
            "shim, 2 NPUs + 5 mounts (target <= 1.08)",
            "shim, no request (target <= 1.02)",
            "plain runc, same NPU devices and rules, no hooks",
            "plain runc + do-nothing createRuntime hook",
        ],
    );
    println!("  delete of the exited container:");
    variant_rows(
        &samples[1],
        [
            "plain runc",
            "shim, 2 NPUs (the shim cleans up, no poststop; target <= 1.05)",
            "shim, no request",
            "plain runc, same NPU devices and rules, no hooks",
            "plain runc + do-nothing poststop hook",
        ],
    );
    hook_summary(host, log_from);
}

/// Two active device profiles against one: the same bundles through the shim on the
/// Ascend-only host and on the host with Kunlun XPUs as well (the shim and the hook then
/// discover and confine both families).
fn two_profiles(
    place: Place<'_>,
    mode: &str,
    [single, mixed]: [&FakeHost; 2],
    variants: &Variants,
) {
    println!(
        "\n## 1c. two active profiles (Ascend + Kunlun) against one: `create` + `start`, {mode}, {ROUNDS} rounds, order rotated"
    );
    let shim = bin("npu-container-runtime");
    let runc = PathBuf::from(run(Command::new("sh").args(["-c", "command -v runc"])).trim());
    let list: [(&Path, &Bundle, &FakeHost); 5] = [
        (&runc, &variants.plain, single),
        (&shim, &variants.npu, single),
        (&shim, &variants.npu, mixed),
        (&shim, &variants.plain, single),
        (&shim, &variants.plain, mixed),
    ];
    for (runtime, b, host) in &list[1..] {
        timed_engine_path(place, runtime, host, b);
    }
    let samples = interleaved(&list, 1, |(runtime, b, host)| {
        vec![timed_engine_path(place, runtime, host, b)[0]]
    });
    let samples = &samples[0];
    let base = row("plain runc", "ms", &samples[0], None);
    for (i, name) in [
        "shim, 2 NPUs + 5 mounts, one profile active",
        "shim, 2 NPUs + 5 mounts, two profiles active",
        "shim, no request, one profile active",
        "shim, no request, two profiles active",
    ]
    .iter()
    .enumerate()
    {
        row(name, "ms", &samples[i + 1], Some(base));
    }
    println!(
        "  median of per-round ratios, two profiles / one (target <= 1.00 within noise): 2 NPUs {:.3}, no request {:.3}",
        paired_to(samples, 2, 1),
        paired_to(samples, 4, 3)
    );
}

/// The same bundles on the small fake host and on one with a server's `/dev` (16 NPUs and
/// 600 other entries): what the runtime costs a container must not grow with `/dev`.
fn server_dev(place: Place<'_>, mode: &str, [small, server]: [&FakeHost; 2], variants: &Variants) {
    println!(
        "\n## 1d. a server's /dev (16 NPUs, 600 other nodes and links) against the small one: `create` + `start`, {mode}, {ROUNDS} rounds, order rotated"
    );
    let shim = bin("npu-container-runtime");
    let runc = PathBuf::from(run(Command::new("sh").args(["-c", "command -v runc"])).trim());
    let list: [(&Path, &Bundle, &FakeHost); 5] = [
        (&runc, &variants.plain, small),
        (&shim, &variants.npu, small),
        (&shim, &variants.npu, server),
        (&shim, &variants.plain, small),
        (&shim, &variants.plain, server),
    ];
    for (runtime, b, host) in &list[1..] {
        timed_engine_path(place, runtime, host, b);
    }
    let from = [log_len(small), log_len(server)];
    let samples = interleaved(&list, 1, |(runtime, b, host)| {
        vec![timed_engine_path(place, runtime, host, b)[0]]
    });
    let samples = &samples[0];
    let base = row("plain runc", "ms", &samples[0], None);
    for (i, name) in [
        "shim, 2 NPUs + 5 mounts, small /dev",
        "shim, 2 NPUs + 5 mounts, server /dev",
        "shim, no request, small /dev",
        "shim, no request, server /dev",
    ]
    .iter()
    .enumerate()
    {
        row(name, "ms", &samples[i + 1], Some(base));
    }
    println!(
        "  median of per-round ratios to plain runc: 2 NPUs {:.3} small, {:.3} server (target <= 1.08); no request {:.3} small, {:.3} server",
        paired(samples, 1),
        paired(samples, 2),
        paired(samples, 3),
        paired(samples, 4)
    );
    println!(
        "  server / small /dev (target <= 1.00 within noise): 2 NPUs {:.3}, no request {:.3}",
        paired_to(samples, 2, 1),
        paired_to(samples, 4, 3)
    );
    let small_hook = stats(&hook_durations(small, from[0], "create-runtime")).median;
    let server_hook = stats(&hook_durations(server, from[1], "create-runtime")).median;
    println!(
        "  hook create-runtime in-process median: {small_hook:.2} ms small, {server_hook:.2} ms server /dev (target <= 1.0 ms)"
    );
}

fn start_overhead(place: Place<'_>, mode: &str, host: &FakeHost, variants: &Variants) {
    println!(
        "\n## 1b. `runc run` of busybox `true` (start, life, poststop, delete), {mode}, {ROUNDS} rounds, order rotated"
    );
    let shim = bin("npu-container-runtime");
    let runc = PathBuf::from(run(Command::new("sh").args(["-c", "command -v runc"])).trim());
    let list = variants.list(&shim, &runc);
    let log_from = log_len(host);
    let samples = interleaved(&list, 1, |(runtime, b)| {
        vec![timed_run(place, runtime, host, b).as_secs_f64() * 1e3]
    });
    variant_rows(
        &samples[0],
        [
            "plain runc",
            "shim, 2 NPUs + 5 mounts",
            "shim, no request",
            "plain runc, same NPU devices and rules, no hooks",
            "plain runc + do-nothing createRuntime and poststop hooks",
        ],
    );
    hook_summary(host, log_from);
}

fn run_with_input(cmd: &mut Command, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn guard_cost(place: Place<'_>, host: &FakeHost) {
    println!(
        "\n## 2. guard cost per device access (open+close), cgroup v2, runc's deny-by-default filter"
    );
    let dir = host.dir.path();
    let m = host.chip_major;
    let allow_npu1 = |spec: &mut serde_json::Value| {
        spec["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"allow": true, "type": "c", "major": m, "minor": 1, "access": "rwm"}));
    };
    // A: runc's filter only (the grant written as the shim would, no guard). B: the shim.
    let a = RuncContainer::start(place, dir, "runc".as_ref(), allow_npu1).expect("A");
    let b = RuncContainer::start_with_env(
        place,
        dir,
        &bin("npu-container-runtime"),
        &host.config_path,
        |s| {
            s["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push("ASCEND_VISIBLE_DEVICES=1".into());
        },
    )
    .expect("B");
    let inside = place.unified_mount();
    let cg = |c: &RuncContainer<'_>| inside.join(c.unified_path().trim_start_matches('/'));
    let chip = host.chip(1);
    let targets = [
        ("non-guarded (/dev/null)", PathBuf::from("/dev/null")),
        ("granted NPU node", chip),
    ];
    const N: u32 = 200_000;
    for (name, path) in targets {
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..9 {
            for (c, out) in [(&a, &mut ta), (&b, &mut tb)] {
                let text = run(place
                    .command(bin("devprobe"))
                    .arg("--join")
                    .arg(cg(c))
                    .arg(format!("loop:{}:{N}", path.display())));
                let ns: f64 = text.split_whitespace().last().unwrap().parse().unwrap();
                out.push(ns);
            }
        }
        println!("  {name}:");
        let base = row("runc filter only", "ns/op", &ta, None);
        row(
            "runc filter + npu_dev_guard (target <= 1.05)",
            "ns/op",
            &tb,
            Some(base),
        );
    }
}

fn scale(place: Place<'_>, host: &FakeHost) {
    println!("\n## 3. scale, cgroup v2");
    let dir = host.dir.path();
    let shim = bin("npu-container-runtime");
    let sleeper = |env: &'static [&'static str]| bundle(dir, &["sleep", "600"], env, |_| {});
    let plain = sleeper(&[]);
    let npu = sleeper(&["ASCEND_VISIBLE_DEVICES=0,1", "ASCEND_RUNTIME_MOUNTS=bench"]);
    let root = host.dir.path().join("scale-root");
    // The N-registered rows start their containers under a parent with the node guard.
    let guarded = TestCgroup::new(&unified_mount(), &unique("npu-bench-guarded"));
    let parent = format!("/{}", guarded.rel);
    let start_under = |runtime: &Path,
                       b: &(PathBuf, Vec<u8>),
                       n: usize,
                       parent: Option<&str>|
     -> (Duration, Vec<String>) {
        let ids: Vec<String> = (0..n).map(|_| unique("scale")).collect();
        // Each container gets its own copy of the pristine bundle, as engines do.
        let bundles: Vec<PathBuf> = ids
            .iter()
            .map(|id| {
                let d = dir.join(format!("{id}-bundle"));
                std::fs::create_dir_all(&d).unwrap();
                let mut spec: serde_json::Value = serde_json::from_slice(&b.1).unwrap();
                spec["root"]["path"] = b.0.join("rootfs").display().to_string().into();
                spec["root"]["readonly"] = true.into();
                if let Some(parent) = parent {
                    spec["linux"]["cgroupsPath"] = format!("{parent}/{id}").into();
                }
                std::fs::write(d.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
                d
            })
            .collect();
        let started = Instant::now();
        let children: Vec<_> = ids
            .iter()
            .zip(&bundles)
            .map(|(id, d)| {
                place
                    .command(runtime)
                    .env(PATH_ENV, &host.config_path)
                    .arg("--root")
                    .arg(&root)
                    .args(["run", "-d", "--bundle"])
                    .arg(d)
                    .arg(id)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "a concurrent start failed");
        }
        (started.elapsed(), ids)
    };
    let start_many =
        |runtime: &Path, b: &(PathBuf, Vec<u8>), n: usize| start_under(runtime, b, n, None);
    let delete_all = |ids: &[String]| {
        for id in ids {
            let _ = place
                .command("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "-f", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    };
    let log_from = log_len(host);
    let (t_plain, ids) = start_many("runc".as_ref(), &plain, 100);
    delete_all(&ids);
    let (t_shim, ids) = start_many(&shim, &npu, 100);
    let hooks = hook_durations(host, log_from, "create-runtime");
    delete_all(&ids);
    println!(
        "  100 concurrent starts: plain runc {:.2} s, shim with NPUs {:.2} s, ratio {:.3}",
        t_plain.as_secs_f64(),
        t_shim.as_secs_f64(),
        t_shim.as_secs_f64() / t_plain.as_secs_f64()
    );
    let s = stats(&hooks);
    println!(
        "  hook under that load (n={}): median {:.2} ms, p99 {:.2} ms",
        hooks.len(),
        s.median,
        s.p99
    );

    // Hook time as the number of registered containers grows: fill the maps with containers
    // that look like live ones (ids no real cgroup has), then start a few real ones, under a
    // parent the node guard is attached to.
    run(place
        .command(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["guard", "install", "--cgroup", &parent]));
    println!(
        "  hook time with N containers registered (25 sequential starts each, under a node guard):"
    );
    let mut guard = Guard::ensure(&host.config).expect("guard");
    let grants: Vec<Grant> = (0..5)
        .map(|minor| Grant {
            dev_type: DevType::Char,
            major: host.chip_major,
            minor,
            access: Access::ALL,
        })
        .collect();
    let mut registered = 0u64;
    let mut medians = Vec::new();
    for target in [10u64, 100, 1000] {
        while registered < target {
            guard
                .maps
                .register((1 << 40) + registered, &grants)
                .expect("register");
            registered += 1;
        }
        let from = log_len(host);
        let (_, ids) = start_under(&shim, &npu, 1, Some(&parent));
        delete_all(&ids);
        let mut more = Vec::new();
        for _ in 0..24 {
            let (_, ids) = start_under(&shim, &npu, 1, Some(&parent));
            more.extend(ids);
        }
        delete_all(&more);
        let hooks = hook_durations(host, from, "create-runtime");
        let median = stats(&hooks).median;
        println!(
            "    {target:>5} registered: hook median {median:.2} ms (n={})",
            hooks.len()
        );
        medians.push(median);
    }
    println!(
        "    ratio 1000 vs 10 registered: {:.3} (flat is ~1)",
        medians[2] / medians[0]
    );
    for id in 0..registered {
        guard
            .maps
            .unregister((1 << 40) + id, &grants)
            .expect("unregister");
    }
    run(place
        .command(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["guard", "uninstall", "--cgroup", &parent]));
    drop(guarded);
}

/// The largest `vm_hwm_kib` of log lines containing `marker` since `from`.
fn logged_peak_kib(host: &FakeHost, from: usize, marker: &str) -> u64 {
    let log = std::fs::read_to_string(host.dir.path().join("runtime.log")).unwrap_or_default();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("vm_hwm_kib="))
                .and_then(|v| v.parse().ok())
        })
        .max()
        .unwrap_or(0)
}

/// Peak RSS as each binary reports it (`VmHWM` of its own address space): measuring from the
/// parent would count memory a forked child inherits from the benchmark itself.
fn memory(host: &FakeHost) {
    println!("\n## 4. peak RSS, as reported by each process (target: each under 10 MiB)");
    // Each binary reports its peak in a debug line.
    set_log_level(host, "debug");
    let from = log_len(host);
    let npu = bundle(
        host.dir.path(),
        &["true"],
        &["ASCEND_VISIBLE_DEVICES=0,1", "ASCEND_RUNTIME_MOUNTS=bench"],
        |_| {},
    );
    for _ in 0..5 {
        timed_run(Place::Host, &bin("npu-container-runtime"), host, &npu);
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  shim (create, 2 NPUs + 5 mounts, at exec): {:.1} MiB",
        mib(logged_peak_kib(host, from, "exec runtime"))
    );
    println!(
        "  hook create-runtime: {:.1} MiB, poststop: {:.1} MiB",
        mib(logged_peak_kib(host, from, "stage=\"create-runtime\"")),
        mib(logged_peak_kib(host, from, "stage=\"poststop\""))
    );
}
