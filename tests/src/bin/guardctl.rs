//! Test driver for the isolation library, run as its own short-lived process (so tests can
//! show that enforcement outlives the process that applied it, and run it inside a private
//! mount namespace).
//!
//! ```text
//! guardctl enforce PID NPUS     enforces on the cgroups of PID (per the host's layout),
//!                               prints the Enforced record as JSON
//! guardctl enforce-v2 DIR NPUS  the v2 guard alone, on the cgroup2 directory DIR
//! guardctl release NPUS JSON    releases an Enforced record
//! guardctl policy               prints the live policy of this build's guard as JSON
//! ```
//! The configuration comes from NPU_CONTAINER_RUNTIME_CONFIG; NPUS is `1,2` or `-` for none.
use std::os::unix::fs::MetadataExt;

use npu_runtime::{
    enforce::guard::Guard,
    enforce::isolation,
    node::cgroup::{ContainerCgroups, Layout, UnifiedCgroup},
    node::config::Config,
    node::devices::HostDevices,
    node::state::Enforced,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("guardctl: {e}");
        std::process::exit(1);
    }
}

fn npus(arg: &str) -> Vec<u32> {
    if arg == "-" {
        return Vec::new();
    }
    arg.split(',')
        .map(|n| n.parse().expect("NPU index"))
        .collect()
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::load()?;
    let host = HostDevices::discover(&config)?;
    // NPU indices name Ascend chips.
    let ascend = host.family("ascend").ok_or("no ascend profile")?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["enforce", pid, list] => {
            let grants = ascend.grants_for(&npus(list))?;
            let layout = Layout::detect()?;
            let done = isolation::enforce(&config, &layout, pid.parse()?, &host, &grants)?;
            println!("{}", serde_json::to_string(&done)?);
        }
        ["enforce-v2", dir, list] => {
            let grants = ascend.grants_for(&npus(list))?;
            let cgroups = ContainerCgroups {
                unified: Some(UnifiedCgroup {
                    dir: dir.into(),
                    id: std::fs::metadata(dir)?.ino(),
                }),
                devices_v1: None,
            };
            let done = isolation::enforce_cgroups(&config, &cgroups, &host, &grants, None)?;
            println!("{}", serde_json::to_string(&done)?);
        }
        ["release", list, json] => {
            let grants = ascend.grants_for(&npus(list))?;
            let done: Enforced = serde_json::from_str(json)?;
            isolation::release(&config, &done, &grants)?;
        }
        ["policy"] => {
            let guard = Guard::ensure(&config)?;
            let policy: Vec<_> = guard
                .maps
                .policy()?
                .into_iter()
                .map(|p| {
                    serde_json::json!({
                        "cgroup_id": p.cgroup_id,
                        "allowed": p.allowed,
                        "denied": p.denied,
                        "grants": p.grants.iter()
                            .map(|g| format!("{} {}:{} {}", g.dev_type.letter(), g.major, g.minor, g.access))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(policy));
        }
        _ => return Err(format!("usage: see the source; got {args:?}").into()),
    }
    Ok(())
}
