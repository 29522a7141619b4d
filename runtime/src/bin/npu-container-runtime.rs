//! `npu-container-runtime`: called by engines exactly like runc. On `create`/`run` it writes
//! the NPU grant into the bundle's spec, then runs the real runtime with the same argv; after
//! `delete` it removes the container's grants and record. Other commands exec the runtime.
// Release builds link musl (xtask), whose allocator maps and unmaps pages eagerly; dlmalloc
// keeps them for the process's short life: about 0.1 ms less per run.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, ExitStatus},
};

use npu_runtime::{
    error::Error, node::config::Config, node::logging, start::args::RuncArgs,
    start::names::Treatment, start::shim, start::spec::Cleanup,
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

/// Runs the runtime as a child and waits for it. `tied`: it dies with us (as it would had we
/// exec'd it), so an engine that kills the command it started on a timeout kills the runtime.
fn spawn(runtime: &PathBuf, args: &[OsString], tied: bool) -> Result<ExitStatus, Error> {
    tracing::debug!(vm_hwm_kib = logging::peak_rss_kib(), runtime = %runtime.display(), "run runtime");
    let mut cmd = Command::new(runtime);
    cmd.args(args);
    if tied {
        let parent = nix::unistd::getpid();
        // SAFETY: runs in the forked child before exec; prctl and getppid are
        // async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // We died before the tie was made: do not run untied.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("the shim is gone"));
                }
                Ok(())
            });
        }
    }
    cmd.status().map_err(|source| Error::Exec {
        path: runtime.clone(),
        source,
    })
}

/// Ends this process as the runtime ended: with its exit code, or killed by the same signal
/// (what engines see from an exec'd runtime), or 128 + that signal if it cannot kill us.
fn exit_like(status: ExitStatus) -> ! {
    use nix::sys::signal::{SigHandler, Signal, raise, signal};
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        std::process::exit(code)
    }
    let number = status.signal().unwrap_or(1);
    if let Ok(sig) = Signal::try_from(number) {
        // SAFETY: the default disposition installs no handler of ours; nothing runs after
        // this but the raise and, if the signal does not end us, the exit below.
        unsafe {
            let _ = signal(sig, SigHandler::SigDfl);
        }
        let _ = raise(sig);
    }
    std::process::exit(128 + number)
}

/// Removes the container's grants and record after the runtime's `delete` (or a failed
/// `create`). It never changes the runtime's exit code: a failure is logged, and `npu-ctk
/// gc` removes what is left.
fn clean_up(config: &Config, parsed: &RuncArgs, log: impl Fn()) {
    let Some(id) = &parsed.container_id else {
        return;
    };
    if let Err(e) = shim::cleanup(config, id) {
        log();
        tracing::warn!(id, "cleanup left for npu-ctk gc: {e}");
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
            exit_like(status)
        }
        // A help request is the runtime's to answer: no bundle is involved.
        Some("create" | "run") if parsed.help => logged_fail(&exec(&runtime, &args)),
        Some(command @ ("create" | "run")) => {
            let bundle = parsed
                .bundle
                .clone()
                .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
            // A foreground `run` ends with the runtime deleting the container itself, and it
            // is the runtime that must hold the terminal and relay signals: exec it, and let
            // our poststop hook clean up. Everything else is deleted through us later.
            let foreground = command == "run" && !parsed.detach;
            let cleanup = if foreground {
                Cleanup::PoststopHook
            } else {
                Cleanup::Shim
            };
            let treatment =
                shim::prepare_bundle(&config, &bundle, cleanup).unwrap_or_else(|e| fail(&e));
            // A container left alone has no hook of ours: nothing to clean up after it.
            // Socket activation (`LISTEN_PID` set by conmon) names the runtime's own pid,
            // which only an exec keeps: a failed create is then left to gc.
            if foreground
                || treatment == Treatment::PassThrough
                || std::env::var_os("LISTEN_PID").is_some()
            {
                logged_fail(&exec(&runtime, &args))
            }
            let status = spawn(&runtime, &args, true).unwrap_or_else(|e| logged_fail(&e));
            // A failed create may have passed our hook (a later step failed): the runtime
            // removed the cgroup, so its grants and record go now rather than at the next gc.
            if !status.success() {
                clean_up(&config, &parsed, log);
            }
            exit_like(status)
        }
        // Most deleted containers have no record of ours (they were left alone): one failed
        // lstat, then the runtime in our place.
        Some("delete")
            if parsed
                .container_id
                .as_deref()
                .is_some_and(|id| shim::has_record(&config, id)) =>
        {
            // Not tied to our life: a runtime's delete left half done is worse than one that
            // finishes after we were killed (gc then removes the record).
            let status = spawn(&runtime, &args, false).unwrap_or_else(|e| logged_fail(&e));
            clean_up(&config, &parsed, log);
            exit_like(status)
        }
        Some("update") => {
            let status = spawn(&runtime, &args, false).unwrap_or_else(|e| fail(&e));
            if status.success()
                && let Some(id) = &parsed.container_id
                && let Err(e) = shim::recheck(&config, id)
            {
                fail(&e)
            }
            exit_like(status)
        }
        _ => logged_fail(&exec(&runtime, &args)),
    }
}
