//! `cargo xtask demo`: real containers through npu-container-runtime and runc on simulated
//! NPUs (fake device nodes whose major no driver owns), on this host's cgroup mode and on a
//! pure cgroup v2 host (a private mount namespace), showing what each container can open,
//! the live policy from the pinned maps, and what bpftool sees. Cleans up after itself.
use std::process::Command;

use npu_runtime::{node::cgroup::Layout, node::config::PATH_ENV, node::state};
use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    engines::Dockerd,
    have_tool,
    host::FakeHost,
    run,
    runc::{RuncContainer, open_verdict},
};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("npu-demo: run as root (containers, cgroups and BPF need it)");
        std::process::exit(1);
    }
    let layout = Layout::detect().expect("cgroup layout");
    println!("== npu-container-runtime demo ==");
    println!("host cgroup mode: {}", layout.name());
    if std::path::Path::new("/dev/davinci0").exists() {
        println!(
            "note: real NPUs are present; the demo still uses simulated ones so it never touches them"
        );
    }
    let host = FakeHost::new(4);
    println!(
        "simulated NPUs: davinci0-3 (char major {}), management nodes (major {}) under {}",
        host.chip_major,
        host.mgmt_major,
        host.dev_root.display()
    );
    println!("runtime config: {}\n", host.config_path.display());

    demo(Place::Host, &host, &format!("this host: {}", layout.name()));
    let ns = V2Namespace::new();
    demo(
        Place::V2(&ns),
        &host,
        "pure cgroup v2 (private mount namespace, cgroup2 at /sys/fs/cgroup)",
    );
    if have_tool("dockerd") && have_tool("docker") {
        docker(&host);
    } else {
        println!(
            "---- Docker: dockerd is not installed here, skipped (cargo xtask setup installs it) ----\n"
        );
    }
    println!(
        "\nall containers deleted; records left: {}",
        host.records().len()
    );
}

fn demo(place: Place<'_>, host: &FakeHost, title: &str) {
    println!("---- {title} ----");
    let shim = bin("npu-container-runtime");
    let start = |request: &str| {
        RuncContainer::start_with_env(place, host.dir.path(), &shim, &host.config_path, |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(format!("ASCEND_VISIBLE_DEVICES={request}").into());
        })
        .unwrap_or_else(|e| panic!("container with {request}: {e}"))
    };
    let containers = [("0", start("0")), ("1,2", start("1,2"))];
    for (request, c) in &containers {
        println!("container {} (ASCEND_VISIBLE_DEVICES={request}):", c.id);
        let (_, devs) = c.sh("ls /dev | grep -E 'davinci|devmm|hisi' | tr '\\n' ' '");
        println!("  /dev shows:   {}", devs.trim());
        let verdicts: Vec<String> = (0..host.chips)
            .map(|i| {
                let v = c.node_verdict(host.chip_major, i);
                let word = match v.as_str() {
                    "ENXIO" => "allowed",
                    "EPERM" => "DENIED",
                    other => other,
                };
                format!("davinci{i} {word}")
            })
            .collect();
        println!(
            "  mknod + open: {}   (allowed = ENXIO: no driver behind a fake node)",
            verdicts.join(", ")
        );
        let (_, ro) = c.sh("echo x > /usr/local/Ascend/driver/version.info 2>&1; cat /usr/local/Ascend/driver/version.info");
        println!("  driver files: {}", ro.trim().replace('\n', " | "));
        println!("  /dev/null:    {}", open_verdict(c, "/dev/null"));
    }

    print_policy(host);
    for (_, c) in &containers {
        let record = state::read(&host.config.state_dir, &c.id).ok().flatten();
        if let Some(dir) = record.and_then(|r| r.enforced.unified_dir) {
            let outside = npu_tests::cgroups::unified_mount()
                .join(dir.strip_prefix(place.unified_mount()).unwrap_or(&dir));
            println!("bpftool cgroup show {}:", outside.display());
            for line in run(Command::new("bpftool")
                .args(["cgroup", "show"])
                .arg(&outside))
            .lines()
            {
                println!("  {line}");
            }
        }
        if let Some(r) = state::read(&host.config.state_dir, &c.id).ok().flatten()
            && let Some(v1) = r.enforced.devices_v1_dir
        {
            let list = std::fs::read_to_string(v1.join("devices.list")).unwrap_or_default();
            let npu: Vec<&str> = list
                .lines()
                .filter(|l| l.contains(&format!(" {}:", host.chip_major)))
                .collect();
            println!("{} devices.list (NPU class): {}", c.id, npu.join(", "));
        }
    }
    drop(containers);
    println!();
}

/// What an operator sees: `npu-ctk policy show`.
fn print_policy(host: &FakeHost) {
    println!("npu-ctk policy show (pinned BPF maps joined with the runtime's records):");
    let out = run(Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["policy", "show"]));
    for line in out.lines() {
        println!("  {line}");
    }
}

/// Docker on this host, configured with `npu-ctk runtime configure --runtime=docker`.
fn docker(host: &FakeHost) {
    println!("---- Docker (dockerd on this host, runtime \"npu\" registered by npu-ctk) ----");
    let d = Dockerd::start(Place::Host, host);
    for npus in ["3", "0,2"] {
        let env = format!("ASCEND_VISIBLE_DEVICES={npus}");
        let verdicts: Vec<String> = d
            .verdicts(&[&env], &[], host.chip_major, host.chips)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "davinci{i} {}",
                    if v == "ENXIO" { "allowed" } else { "DENIED" }
                )
            })
            .collect();
        println!(
            "docker run --runtime=npu -e ASCEND_VISIBLE_DEVICES={npus}: {}",
            verdicts.join(", ")
        );
    }
    let (_, out) = d.output(&[
        "run",
        "--rm",
        "--runtime=npu",
        "-e",
        "ASCEND_VISIBLE_DEVICES=5",
        &d.image,
        "true",
    ]);
    println!(
        "docker run --runtime=npu -e ASCEND_VISIBLE_DEVICES=5 fails with:\n  {}",
        out.trim()
    );
    let (_, id) = d.output(&[
        "run",
        "-d",
        "--runtime=npu",
        "-e",
        "ASCEND_VISIBLE_DEVICES=1",
        &d.image,
        "sleep",
        "600",
    ]);
    println!(
        "running container {}:",
        &id.trim()[..12.min(id.trim().len())]
    );
    print_policy(host);
    drop(d);
    println!();
}
