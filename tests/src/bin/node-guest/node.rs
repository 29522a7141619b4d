//! The node under test: the host's plan, shell helpers, the simulated NPUs and driver, the
//! engines' configuration, and the verdicts seen from containers and cgroups.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use npu_tests::{
    engines::{matrix_script, parse_matrix},
    guest::Results,
};

/// Where the payload disk is mounted.
pub const PAYLOAD: &str = "/opt/npu-test";

pub const IMAGE: &str = "npu-busybox";
pub const DRIVER_VERSION: &str = "/usr/local/Ascend/driver/version.info";
const DRIVER_SCRIPT: &str = "/var/lib/npu-test/driver.sh";
const DRIVER_UNIT: &str = "/etc/systemd/system/npu-fake-driver.service";
/// Ordered as a driver loaded by systemd-modules-load or udev's coldplug: before
/// sysinit.target, so before every service (the node guard and the engines included).
const DRIVER_UNIT_TEXT: &str = "[Unit]
Description=Simulated NPU driver: its device nodes
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /var/lib/npu-test/driver.sh

[Install]
WantedBy=sysinit.target
";

/// What the host chose for this node.
pub struct Plan {
    pub chips: u32,
    pub major: u32,
    pub mgmt_major: u32,
    /// The request variable's NPUs.
    pub request: Vec<u32>,
    /// The NPU given by `--device`.
    pub device: u32,
    /// The NPU with a /dev/char link (as udev makes for a driver's node) and one without.
    pub linked: u32,
    pub unlinked: u32,
    pub podman: bool,
    /// Newer runc packages (file names under debs/) to check the shim over, in boot 3.
    pub runtimes: Vec<String>,
    /// Newer containerd packages (under debs/) to check the CRI path on, in boot 3.
    pub containerds: Vec<String>,
    /// A node that runs runc's own suite instead (one boot; tests/tests/node_runc_suite.rs).
    pub runc_suite: Option<RuncSuite>,
}

/// The runc package (under debs/) whose suite the payload carries, the suite's files, and
/// the minutes a way of them may take.
pub struct RuncSuite {
    pub deb: String,
    pub files: Vec<String>,
    pub minutes: u64,
}

impl Plan {
    pub fn read() -> Plan {
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
            runtimes: names(&v["runtimes"]),
            containerds: names(&v["containerds"]),
            runc_suite: v["runc_suite"]["deb"].as_str().map(|deb| RuncSuite {
                deb: deb.to_string(),
                files: names(&v["runc_suite"]["files"]),
                minutes: v["runc_suite"]["minutes"].as_u64().unwrap_or(40),
            }),
        }
    }

    /// Whether boot 3 has anything to do.
    pub fn boot_three(&self) -> bool {
        !self.runtimes.is_empty() || !self.containerds.is_empty()
    }

    pub fn list(npus: &[u32]) -> String {
        npus.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect()
}

/// Runs `script` with sh; (success, stdout and stderr).
pub fn sh(script: &str) -> (bool, String) {
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
pub fn must(script: &str) -> Result<String, String> {
    match sh(script) {
        (true, text) => Ok(text),
        (false, text) => Err(format!("`{script}` failed: {text}")),
    }
}

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
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
pub fn run_verdicts(engine: &str, flags: &str, plan: &Plan) -> Result<Vec<String>, String> {
    let script = matrix_script(plan.major, plan.chips);
    let text = must(&format!(
        "{engine} run --rm {flags} {IMAGE} sh -c '{script}'"
    ))?;
    Ok(parse_matrix(&text, plan.chips))
}

/// The chip verdicts inside running container `id`.
pub fn exec_verdicts(engine: &str, id: &str, plan: &Plan) -> Result<Vec<String>, String> {
    let script = matrix_script(plan.major, plan.chips);
    let text = must(&format!("{engine} exec {id} sh -c '{script}'"))?;
    Ok(parse_matrix(&text, plan.chips))
}

/// The chip verdicts of a process joined to container `id`'s cgroup, opening the node's own
/// /dev (for containers the engine can no longer exec into).
pub fn cgroup_verdicts(id: &str, plan: &Plan) -> Result<Vec<String>, String> {
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
pub fn docker_cgroup_of(id: &str) -> Result<String, String> {
    let pid = must(&format!("docker inspect -f '{{{{.State.Pid}}}}' {id}"))?;
    // The unified hierarchy's line (`0::PATH`): the only one on a pure v2 node.
    must(&format!("grep '^0::' /proc/{pid}/cgroup | cut -d: -f3"))
}

/// Whether `bpftool cgroup show` on `cgroup` lists a program named `name`.
pub fn attached(cgroup: &str, name: &str) -> Result<bool, String> {
    let out = must(&format!("bpftool cgroup show /sys/fs/cgroup{cgroup}"))?;
    Ok(out.lines().any(|l| l.split_whitespace().any(|w| w == name)))
}

/// The simulated NPUs, the driver's files and the node facts.
pub fn node_setup(r: &mut Results, plan: &Plan) -> bool {
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
pub fn install_binaries() -> Result<(), String> {
    must(&format!(
        "install -m 755 {PAYLOAD}/npu-container-runtime {PAYLOAD}/npu-container-hook \
         {PAYLOAD}/npu-ctk /usr/local/bin/ && mkdir -p /etc/npu-container-runtime/mounts.d && \
         printf '/usr/local/Ascend/driver/lib64\\n{DRIVER_VERSION}\\n' \
         > /etc/npu-container-runtime/mounts.d/base.list"
    ))?;
    write_config(&["runc"])
}

/// Registers "npu" with Docker, gives Docker its own parent (docker.slice, as README advises)
/// and live-restore (or not), and restarts it.
pub fn configure_docker(ctk: &str, live_restore: bool) -> Result<String, String> {
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
pub fn import_image(engine: &str) -> Result<(), String> {
    must(&format!(
        "set -e; d=/var/lib/npu-test/rootfs; if [ ! -d $d ]; then mkdir -p $d/bin $d/tmp $d/dev \
         $d/proc $d/sys $d/etc; cp /bin/busybox $d/bin/; for a in sh cat mknod seq rm sleep echo \
         touch ls grep; do ln -sf busybox $d/bin/$a; done; fi; \
         tar -C $d -c . | {engine} import - {IMAGE} >/dev/null"
    ))
    .map(drop)
}

/// `npu-ctk doctor`: fails on a failure; its warnings are the detail (the host judges them).
pub fn doctor(r: &mut Results, name: &str) {
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
pub fn diagnostics() -> String {
    sh(
        "docker ps -a --format '{{.Names}} {{.Status}}'; journalctl -b --no-pager -q \
        -u docker -u npu-container-guard | tail -n 40",
    )
    .1
}

/// Writes the runtime's config: debug logs, and the low-level runtimes to use.
pub fn write_config(runtimes: &[&str]) -> Result<(), String> {
    write_config_with(runtimes, "")
}

/// [`write_config`] with `extra` lines.
pub fn write_config_with(runtimes: &[&str], extra: &str) -> Result<(), String> {
    let list: Vec<String> = runtimes.iter().map(|r| format!("{r:?}")).collect();
    std::fs::write(
        "/etc/npu-container-runtime/config.toml",
        format!(
            "log_level = \"debug\"\nlog_file = \"{RUNTIME_LOG}\"\nruntimes = [{}]\n{extra}",
            list.join(", ")
        ),
    )
    .map_err(|e| format!("config.toml: {e}"))
}

/// The shim's log (debug level: it names the low-level runtime it runs).
pub const RUNTIME_LOG: &str = "/var/log/npu-container-runtime.log";

/// The low-level runtimes the shim ran since the log was `mark` bytes long (from its
/// `runtime=` fields).
pub fn runtimes_run_since(mark: u64) -> Result<Vec<String>, String> {
    let text = std::fs::read(RUNTIME_LOG).map_err(|e| format!("{RUNTIME_LOG}: {e}"))?;
    let new = String::from_utf8_lossy(&text[(mark as usize).min(text.len())..]).into_owned();
    let mut seen: Vec<String> = new
        .lines()
        .filter(|l| l.contains("run runtime") || l.contains("exec runtime"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("runtime="))
                .map(|r| r.trim_matches('"').to_string())
        })
        .collect();
    seen.sort();
    seen.dedup();
    Ok(seen)
}

/// The log's length now, for [`runtimes_run_since`].
pub fn log_mark() -> u64 {
    std::fs::metadata(RUNTIME_LOG).map_or(0, |m| m.len())
}
