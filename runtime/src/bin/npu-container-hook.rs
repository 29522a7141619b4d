//! `npu-container-hook STAGE`: the OCI hook. `create-runtime` (also accepted as `prestart`)
//! prepares an NPU container, `poststop` cleans up (and always exits 0), `precreate` edits a
//! spec for Podman (spec on stdin, edited spec on stdout).
// Release builds link musl (xtask), whose allocator maps and unmaps pages eagerly; dlmalloc
// keeps them for the process's short life: about 0.1 ms less per run.
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

use std::io::{Read, Write};

use npu_runtime::{
    error::Error, node::config::Config, node::logging, start::hook, start::spec::MAX_SPEC_BYTES,
};

const NAME: &str = "npu-container-hook";

fn read_stdin() -> Result<Vec<u8>, Error> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut input)
        .map_err(|source| Error::Stdio {
            what: "read standard input",
            source,
        })?;
    if input.len() as u64 > MAX_SPEC_BYTES {
        return Err(Error::BadState(format!(
            "more than {MAX_SPEC_BYTES} bytes on stdin"
        )));
    }
    Ok(input)
}

fn run(stage: &str) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let config = Config::load()?;
    logging::init(&config, NAME, None);
    let result = run_stage(stage, &config);
    // `cargo xtask bench` reads these lines for the hook's own duration and peak memory.
    let elapsed_us = started.elapsed().as_micros() as u64;
    match &result {
        Ok(Some(prepared)) => prepared.log(stage, elapsed_us),
        _ => tracing::info!(stage, elapsed_us, ok = result.is_ok(), "hook finished"),
    }
    tracing::debug!(stage, vm_hwm_kib = logging::peak_rss_kib(), "hook memory");
    result.map(drop)
}

/// Runs `stage`; what `create-runtime` prepared, if anything, for the log line.
fn run_stage(stage: &str, config: &Config) -> Result<Option<hook::Prepared>, Error> {
    match stage {
        "create-runtime" | "prestart" => {
            // Host facts first: gathering them overlaps the runtime's delay in writing the state.
            let view = hook::HostView::gather(config);
            let state = hook::parse_state(&read_stdin()?)?;
            hook::create_runtime(config, view, &state)
        }
        "poststop" => {
            let state = hook::parse_state(&read_stdin()?)?;
            hook::poststop(config, &state).map(|()| None)
        }
        "precreate" => {
            let out = hook::precreate(config, &read_stdin()?)?;
            std::io::stdout()
                .write_all(&out)
                .map(|()| None)
                .map_err(|source| Error::Stdio {
                    what: "write the spec to standard output",
                    source,
                })
        }
        _ => unreachable!("checked in main"),
    }
}

fn main() {
    let stage = std::env::args().nth(1).unwrap_or_default();
    if !hook::STAGES.iter().any(|(name, _)| *name == stage) {
        let stages: Vec<&str> = hook::STAGES.iter().map(|(name, _)| *name).collect();
        eprintln!(
            "usage: {NAME} {} (OCI state or spec on stdin)",
            stages.join("|")
        );
        std::process::exit(2);
    }
    if let Err(e) = run(&stage) {
        tracing::error!("{stage}: {e}");
        eprintln!("{NAME} {stage}: {e}");
        // Cleanup must never fail a container's deletion.
        std::process::exit(if stage == "poststop" { 0 } else { 1 });
    }
}
