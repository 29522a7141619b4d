//! `vm-runc`: runc as this VM can run it, for privileged containers. The VM's root lacks
//! CAP_SYS_RESOURCE (DESIGN 6), so runc cannot give a privileged container every capability;
//! on `create` and `run` this drops that one capability from the bundle's spec, then execs
//! `runc` with the same argv. It sits below the shim (the shim's `runtimes`), so the shim
//! decides on the spec the engine wrote, privileged in full.
use std::os::unix::process::CommandExt;

use npu_runtime::start::args::RuncArgs;

const MISSING: &str = "CAP_SYS_RESOURCE";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = RuncArgs::parse(&args);
    if matches!(parsed.command.as_deref(), Some("create" | "run")) && !parsed.help {
        let bundle = parsed
            .bundle
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
        let path = bundle.join("config.json");
        // No readable spec: runc reports that itself.
        if let Ok(text) = std::fs::read(&path)
            && let Ok(mut spec) = serde_json::from_slice::<serde_json::Value>(&text)
            && let Some(caps) = spec
                .pointer_mut("/process/capabilities")
                .and_then(serde_json::Value::as_object_mut)
        {
            for set in caps
                .values_mut()
                .filter_map(serde_json::Value::as_array_mut)
            {
                set.retain(|c| c.as_str() != Some(MISSING));
            }
            std::fs::write(&path, serde_json::to_vec(&spec).unwrap())
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
    }
    let err = std::process::Command::new("runc").args(&args).exec();
    eprintln!("vm-runc: cannot run runc: {err}");
    std::process::exit(127);
}
