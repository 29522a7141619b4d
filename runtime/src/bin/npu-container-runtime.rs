//! `npu-container-runtime`: called by engines exactly like runc. On `create`/`run` it writes
//! the NPU grant into the bundle's spec, then execs the real runtime with the same argv.
// Release builds link musl (xtask), whose allocator maps and unmaps pages eagerly; dlmalloc
// keeps them for the process's short life: about 0.1 ms less per run.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use std::{ffi::OsString, os::unix::process::CommandExt, path::PathBuf, process::Command};

use npu_runtime::{
    error::Error, node::config::Config, node::logging, start::args::RuncArgs, start::shim,
};

const NAME: &str = "npu-container-runtime";

fn fail(e: &Error) -> ! {
    tracing::error!("{e}");
    eprintln!("{NAME}: {e}");
    std::process::exit(1)
}

/// Replaces this process with the runtime; returns only why that could not be done.
fn exec(runtime: &PathBuf, args: &[OsString]) -> Error {
    // Evaluated only when debug logging is on (`cargo xtask bench` reads it).
    tracing::debug!(vm_hwm_kib = logging::peak_rss_kib(), runtime = %runtime.display(), "exec runtime");
    let e = Command::new(runtime).args(args).exec();
    Error::Exec {
        path: runtime.clone(),
        source: e,
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let parsed = RuncArgs::parse(&text);
    // Log even a configuration error (with the defaults) where the engine looks for
    // runtime errors.
    let (config, config_error) = match Config::load() {
        Ok(c) => (c, None),
        Err(e) => (Config::default(), Some(e)),
    };
    let log = || logging::init(&config, NAME, parsed.engine_log());
    // Commands that are only handed on (start, state, kill, delete...) set up logging only
    // to report a failure: the subscriber is about a tenth of the shim's page faults, paid
    // twice per container start (create and start).
    let handed_on = !matches!(parsed.command.as_deref(), Some("create" | "run" | "update"))
        && !text.iter().any(|a| a == "--version" || a == "-v");
    if !handed_on {
        log();
    }
    let logged_fail = |e: &Error| -> ! {
        log();
        fail(e)
    };
    if let Some(e) = config_error {
        logged_fail(&e.into())
    }
    let runtime = shim::find_runtime(&config).unwrap_or_else(|e| logged_fail(&e));

    match parsed.command.as_deref() {
        None if text.iter().any(|a| a == "--version" || a == "-v") => {
            // The runtime's own lines first, intact (tools read the first line), then ours.
            let status = Command::new(&runtime)
                .args(&args)
                .status()
                .unwrap_or_else(|source| {
                    fail(&Error::Exec {
                        path: runtime.clone(),
                        source,
                    })
                });
            println!("{NAME} version {}", env!("CARGO_PKG_VERSION"));
            println!("guard program {}", npu_runtime::enforce::guard::version());
            println!("low-level runtime {}", runtime.display());
            std::process::exit(status.code().unwrap_or(1))
        }
        // A help request is the runtime's to answer: no bundle is involved.
        Some("create" | "run") if parsed.help => logged_fail(&exec(&runtime, &args)),
        Some("create" | "run") => {
            let bundle = parsed
                .bundle
                .clone()
                .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
            if let Err(e) = shim::prepare_bundle(&config, &bundle) {
                fail(&e)
            }
            logged_fail(&exec(&runtime, &args))
        }
        Some("update") => {
            let status = Command::new(&runtime)
                .args(&args)
                .status()
                .unwrap_or_else(|source| {
                    fail(&Error::Exec {
                        path: runtime.clone(),
                        source,
                    })
                });
            if status.success()
                && let Some(id) = &parsed.container_id
                && let Err(e) = shim::recheck(&config, id)
            {
                fail(&e)
            }
            std::process::exit(status.code().unwrap_or(1))
        }
        _ => logged_fail(&exec(&runtime, &args)),
    }
}
