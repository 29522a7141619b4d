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
//! purge under running containers. Boot 3 (where the plan names newer runc packages): the shim
//! over the node's runc, its crun and each newer runc installed over the node's.
//! `/var/lib/npu-test/phase` says which boot this is.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use npu_tests::{
    engines::{matrix_script, parse_matrix},
    guest::{Results, expect},
    runc::expect_only,
};

const PAYLOAD: &str = "/opt/npu-test";
const PHASE: &str = "/var/lib/npu-test/phase";
const IMAGE: &str = "npu-busybox";
const DRIVER_VERSION: &str = "/usr/local/Ascend/driver/version.info";
const DRIVER_SCRIPT: &str = "/var/lib/npu-test/driver.sh";
const DRIVER_UNIT: &str = "/etc/systemd/system/npu-fake-driver.service";
const DRIVER_UNIT_TEXT: &str = "[Unit]
Description=Simulated NPU driver: its device nodes
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=sysinit.target docker.service containerd.service npu-container-guard.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /var/lib/npu-test/driver.sh

[Install]
WantedBy=sysinit.target
";

/// What the host chose for this node.
struct Plan {
    chips: u32,
    major: u32,
    mgmt_major: u32,
    /// The request variable's NPUs.
    request: Vec<u32>,
    /// The NPU given by `--device`.
    device: u32,
    /// The NPU with a /dev/char link (as udev makes for a driver's node) and one without.
    linked: u32,
    unlinked: u32,
    podman: bool,
    /// Newer runc packages (file names under debs/) to check the shim over, in boot 3.
    runtimes: Vec<String>,
}

impl Plan {
    fn read() -> Plan {
        let text = std::fs::read_to_string(format!("{PAYLOAD}/plan.json")).expect("plan.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("plan.json is JSON");
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("plan: {k}")) as u32;
        Plan {
            chips: n("chips"),
            major: n("major"),
            mgmt_major: n("mgmt_major"),
            request: v["request"]
                .as_array()
                .expect("plan: request")
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect(),
            device: n("device"),
            linked: n("linked"),
            unlinked: n("unlinked"),
            podman: v["podman"] == true,
            runtimes: v["runtimes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn list(npus: &[u32]) -> String {
        npus.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs `script` with sh; (success, stdout and stderr).
fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_string())
}

/// [`sh`] that must succeed.
fn must(script: &str) -> Result<String, String> {
    match sh(script) {
        (true, text) => Ok(text),
        (false, text) => Err(format!("`{script}` failed: {text}")),
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The chip verdicts of a new container `docker run --rm FLAGS IMAGE` (ENXIO allowed, EPERM
/// denied), from mknod + open inside it.
fn run_verdicts(engine: &str, flags: &str, plan: &Plan) -> Result<Vec<String>, String> {
    let script = matrix_script(plan.major, plan.chips);
    let text = must(&format!(
        "{engine} run --rm {flags} {IMAGE} sh -c '{script}'"
    ))?;
    Ok(parse_matrix(&text, plan.chips))
}

/// The chip verdicts inside running container `id`.
fn exec_verdicts(engine: &str, id: &str, plan: &Plan) -> Result<Vec<String>, String> {
    let script = matrix_script(plan.major, plan.chips);
    let text = must(&format!("{engine} exec {id} sh -c '{script}'"))?;
    Ok(parse_matrix(&text, plan.chips))
}

/// The chip verdicts of a process joined to container `id`'s cgroup, opening the node's own
/// /dev (for containers the engine can no longer exec into).
fn cgroup_verdicts(id: &str, plan: &Plan) -> Result<Vec<String>, String> {
    let cgroup = docker_cgroup_of(id)?;
    let ops: Vec<String> = (0..plan.chips)
        .map(|i| format!("read:/dev/davinci{i}"))
        .collect();
    let text = must(&format!(
        "{PAYLOAD}/devprobe --join /sys/fs/cgroup{cgroup} {}",
        ops.join(" ")
    ))?;
    Ok(text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        .collect())
}

/// The cgroup (v2 path) of running container `id`'s init.
fn docker_cgroup_of(id: &str) -> Result<String, String> {
    let pid = must(&format!("docker inspect -f '{{{{.State.Pid}}}}' {id}"))?;
    must(&format!("cut -d: -f3 /proc/{pid}/cgroup | head -1"))
}

/// Whether `bpftool cgroup show` on `cgroup` lists a program named `name`.
fn attached(cgroup: &str, name: &str) -> Result<bool, String> {
    let out = must(&format!("bpftool cgroup show /sys/fs/cgroup{cgroup}"))?;
    Ok(out.lines().any(|l| l.split_whitespace().any(|w| w == name)))
}

fn main() {
    let mut r = Results::open("/dev/ttyS1");
    let plan = Plan::read();
    let phase = std::fs::read_to_string(PHASE).unwrap_or_default();
    let last = match phase.trim() {
        "" => {
            boot_one(&mut r, &plan);
            false
        }
        "2" => {
            boot_two(&mut r, &plan);
            plan.runtimes.is_empty()
        }
        _ => {
            boot_three(&mut r, &plan);
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
        let _ = sh("docker rm -f $(docker ps -aq); sync");
        r.line(serde_json::json!({"reboot": true}));
        // qemu runs with -no-reboot: the host boots the same disk again.
        let _ = sh("systemctl reboot");
    }
}

/// The simulated NPUs, the driver's files and the node facts.
fn node_setup(r: &mut Results, plan: &Plan) -> bool {
    r.run("node", || {
        let mut facts = serde_json::Map::new();
        for (key, cmd) in [
            ("distribution", ". /etc/os-release && echo $PRETTY_NAME"),
            ("kernel", "uname -r"),
            ("systemd", "systemctl --version | head -1"),
            ("docker", "docker version --format '{{.Server.Version}}'"),
            (
                "docker_cgroup",
                "docker info --format '{{.CgroupDriver}} cgroup v{{.CgroupVersion}}'",
            ),
            ("containerd", "containerd --version"),
            ("runc", "runc --version | head -1"),
            ("podman", "podman --version 2>/dev/null || true"),
            ("crun", "crun --version 2>/dev/null | head -1 || true"),
            ("controllers", "cat /sys/fs/cgroup/cgroup.controllers"),
            ("pid1", "cat /proc/1/comm"),
        ] {
            facts.insert(key.into(), must(cmd)?.into());
        }
        // The nodes vanish with /dev at a reboot, as a driver's do: a unit makes them at
        // every boot before the engines start, as the driver's module load would.
        let mut cmds = vec!["set -e".to_string()];
        for i in 0..plan.chips {
            cmds.push(format!("mknod -m 666 /dev/davinci{i} c {} {i}", plan.major));
        }
        for (minor, name) in ["davinci_manager", "devmm_svm", "hisi_hdc"]
            .iter()
            .enumerate()
        {
            cmds.push(format!(
                "mknod -m 666 /dev/{name} c {} {minor}",
                plan.mgmt_major
            ));
        }
        // udev makes /dev/char/M:m for a registered driver's nodes; mknod'd ones have none.
        cmds.push(format!(
            "ln -sf ../davinci{} /dev/char/{}:{}",
            plan.linked, plan.major, plan.linked
        ));
        std::fs::create_dir_all("/var/lib/npu-test").map_err(|e| e.to_string())?;
        std::fs::write(DRIVER_SCRIPT, cmds.join("\n") + "\n").map_err(|e| e.to_string())?;
        std::fs::write(DRIVER_UNIT, DRIVER_UNIT_TEXT).map_err(|e| e.to_string())?;
        must("systemctl daemon-reload && systemctl enable --now npu-fake-driver.service")?;
        must(&format!(
            "mkdir -p /usr/local/Ascend/driver/lib64 && \
             echo 'fake driver library' > /usr/local/Ascend/driver/lib64/libascend_hal.so && \
             echo Version=24.1.0 > {DRIVER_VERSION}"
        ))?;
        let registered = must("cat /proc/devices")?;
        for major in [plan.major, plan.mgmt_major] {
            if registered
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&major.to_string()))
            {
                return Err(format!("major {major} is a driver's here:\n{registered}"));
            }
        }
        Ok(serde_json::Value::Object(facts).to_string())
    })
}

/// The release binaries in /usr/local/bin with a config and a mount list.
fn install_binaries() -> Result<(), String> {
    must(&format!(
        "install -m 755 {PAYLOAD}/npu-container-runtime {PAYLOAD}/npu-container-hook \
         {PAYLOAD}/npu-ctk /usr/local/bin/ && mkdir -p /etc/npu-container-runtime/mounts.d && \
         printf '/usr/local/Ascend/driver/lib64\\n{DRIVER_VERSION}\\n' \
         > /etc/npu-container-runtime/mounts.d/base.list && \
         printf 'log_level = \"info\"\\n' > /etc/npu-container-runtime/config.toml"
    ))
    .map(drop)
}

/// Registers "npu" with Docker, gives Docker its own parent (docker.slice, as README advises)
/// and live-restore (or not), and restarts it.
fn configure_docker(ctk: &str, live_restore: bool) -> Result<String, String> {
    must(&format!("{ctk} runtime configure --runtime=docker"))?;
    let path = "/etc/docker/daemon.json";
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    json["cgroup-parent"] = "docker.slice".into();
    json["live-restore"] = live_restore.into();
    std::fs::write(path, json.to_string()).map_err(|e| e.to_string())?;
    must("systemctl restart docker")?;
    must("docker info --format '{{range $k, $v := .Runtimes}}{{$k}}={{$v.Path}} {{end}}'")
}

/// A busybox image imported from a root of the node's busybox-static.
fn import_image(engine: &str) -> Result<(), String> {
    must(&format!(
        "set -e; d=/var/lib/npu-test/rootfs; if [ ! -d $d ]; then mkdir -p $d/bin $d/tmp $d/dev \
         $d/proc $d/sys $d/etc; cp /bin/busybox $d/bin/; for a in sh cat mknod seq rm sleep echo \
         touch ls grep; do ln -sf busybox $d/bin/$a; done; fi; \
         tar -C $d -c . | {engine} import - {IMAGE} >/dev/null"
    ))
    .map(drop)
}

/// `npu-ctk doctor`: fails on a failure; its warnings are the detail (the host judges them).
fn doctor(r: &mut Results, name: &str) {
    r.run(name, || {
        let (ok, out) = sh("npu-ctk doctor");
        let noted: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("[warn]") || l.starts_with("[FAIL]"))
            .collect();
        if ok { Ok(noted.join("\n")) } else { Err(out) }
    });
}

/// What Docker and systemd said, for a failed check.
fn diagnostics() -> String {
    sh(
        "docker ps -a --format '{{.Names}} {{.Status}}'; journalctl -b --no-pager -q \
        -u docker -u npu-container-guard | tail -n 40",
    )
    .1
}

fn boot_one(r: &mut Results, plan: &Plan) {
    if !node_setup(r, plan) {
        return;
    }
    let chips = plan.chips;
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
        docker_suite(r, plan);
        if plan.podman {
            podman_suite(r, plan);
        }
    }
    doctor(r, "doctor");
    // The package takes over from the release binaries.
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
        Ok(out.lines().last().unwrap_or_default().to_string())
    });
}

fn docker_suite(r: &mut Results, plan: &Plan) {
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

fn podman_suite(r: &mut Results, plan: &Plan) {
    let chips = plan.chips;
    let podman = "podman";
    // Podman 5 no longer gives CAP_MKNOD by default; the verdict script makes its nodes.
    let flags = "--network none --cap-add MKNOD";
    let ready = r.run("configure podman", || {
        must("printf 'log_level = \"info\"\\nruntimes = [\"crun\"]\\n' > /etc/npu-container-runtime/config.toml")?;
        must("npu-ctk runtime configure --runtime=podman")?;
        import_image(podman)
    .map(|()| must("podman info --format '{{.Host.CgroupManager}} {{.Host.CgroupsVersion}}'").unwrap_or_default())
    });
    if !ready {
        return;
    }
    let request = Plan::list(&plan.request);
    r.run("podman runtime mode over crun", || {
        expect(
            &format!("NPUs {request}"),
            run_verdicts(podman, &format!("{flags} --runtime npu -e ASCEND_VISIBLE_DEVICES={request}"), plan)?,
            expect_only(&plan.request, chips),
        )?;
        expect(
            "--privileged",
            run_verdicts(podman, &format!("{flags} --runtime npu --privileged"), plan)?,
            expect_only(&[], chips),
        )?;
        let log = must("grep -c crun /var/log/npu-container-runtime.log 2>/dev/null || journalctl -q --no-pager -t npu-container-runtime | grep -c crun || true")?;
        Ok(format!("exactly {request}; privileged none; crun named in the log: {log}"))
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
    let _ = must("printf 'log_level = \"info\"\\n' > /etc/npu-container-runtime/config.toml");
}

fn boot_two(r: &mut Results, plan: &Plan) {
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

/// The shim over each low-level runtime, through Docker: the node's runc and crun, then each
/// newer runc package installed over the node's. On each: a request gets exactly its NPUs,
/// `--privileged` none, a broad device rule naming no NPU none, `docker update` keeps the
/// verdicts and the guard program, and a delete leaves no record or grant.
fn boot_three(r: &mut Results, plan: &Plan) {
    let ready = r.run("runtimes setup", || {
        install_binaries()?;
        configure_docker("npu-ctk", false)?;
        // Boot 2's containers, which Docker could not delete without the package's binaries,
        // started again at this boot.
        must("docker rm -f held around >/dev/null 2>&1; true")?;
        import_image("docker")?;
        must("runc --version | head -1")
    });
    if !ready {
        return;
    }
    let config = |runtime: &str| {
        must(&format!(
            "printf 'log_level = \"info\"\\nruntimes = [\"{runtime}\"]\\n' \
             > /etc/npu-container-runtime/config.toml"
        ))
    };
    r.run("runtime: runc", || {
        config("runc")?;
        runtime_checks(plan, "runc --version | head -1")
    });
    r.run("runtime: crun", || {
        config("crun")?;
        let out = runtime_checks(plan, "crun --version | head -1");
        config("runc")?;
        out
    });
    for deb in &plan.runtimes {
        let name = deb.trim_end_matches(".deb");
        r.run(&format!("runtime: {name}"), || {
            must(&format!(
                "DEBIAN_FRONTEND=noninteractive dpkg -i {PAYLOAD}/debs/{deb} >/dev/null"
            ))?;
            runtime_checks(plan, "runc --version | head -1")
        });
    }
}

fn runtime_checks(plan: &Plan, version: &str) -> Result<String, String> {
    let chips = plan.chips;
    let version = must(version)?;
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
    Ok(version)
}
