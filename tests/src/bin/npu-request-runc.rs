//! `npu-request-runc`: the shim, with an NPU request added to every container it creates.
//! Called exactly as runc is (runc's own suite calls it as `$RUNC`); on `create` and `run` it
//! adds `ASCEND_VISIBLE_DEVICES=0` to the bundle's `config.json` when the container asks for
//! nothing, then execs `npu-container-runtime` (next to this binary) with the same argv. The
//! conformance suite runs runc's tests through it on a simulated NPU host.
use std::os::unix::process::CommandExt;

use npu_runtime::start::{args::RuncArgs, request::VISIBLE_DEVICES};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = RuncArgs::parse(&args);
    if matches!(parsed.command.as_deref(), Some("create" | "run")) && !parsed.help {
        let bundle = parsed
            .bundle
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
        let path = bundle.join("config.json");
        // No readable spec: the runtime reports that itself.
        if let Ok(text) = std::fs::read(&path)
            && let Ok(mut spec) = serde_json::from_slice::<serde_json::Value>(&text)
            && let Some(env) = spec
                .pointer_mut("/process/env")
                .and_then(serde_json::Value::as_array_mut)
        {
            let asks = env
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.starts_with(VISIBLE_DEVICES)));
            if !asks {
                env.push(format!("{VISIBLE_DEVICES}=0").into());
                std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap())
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            }
        }
    }
    let shim = std::env::current_exe()
        .expect("current_exe")
        .with_file_name("npu-container-runtime");
    let err = std::process::Command::new(&shim).args(&args).exec();
    eprintln!("npu-request-runc: cannot run {}: {err}", shim.display());
    std::process::exit(127);
}
