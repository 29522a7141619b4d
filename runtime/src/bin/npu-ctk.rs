//! `npu-ctk`: the operator's tool for npu-container-runtime.
use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use npu_runtime::{
    error::Error,
    node::config::Config,
    node::devices::HostDevices,
    operate::cdi,
    operate::doctor,
    operate::engines::{self, Engine},
    operate::gc,
    operate::hooksd,
    operate::live,
    operate::monitor,
    operate::policy,
    start::shim,
};

#[derive(Parser)]
#[command(
    name = "npu-ctk",
    version,
    about = "Operate npu-container-runtime: list NPUs, show the live device policy, clean up",
    long_about = "Operate npu-container-runtime.\n\nThe runtime's configuration is read from \
        /etc/npu-container-runtime/config.toml, or the file named by \
        NPU_CONTAINER_RUNTIME_CONFIG."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register npu-container-runtime with a container engine (or remove it)
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
    /// Install the OCI hooks.d files for Podman / CRI-O hook-only mode
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
    /// Check this host: cgroup mode, bpffs, pinned program, devices, mount lists, binaries,
    /// engines. Exits non-zero if a check fails
    Doctor {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List the NPUs and management devices found under dev_root, with major:minor
    Devices {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Container Device Interface specs
    Cdi {
        #[command(subcommand)]
        command: CdiCommand,
    },
    /// Take an NPU away from a running container, or give it back, without a restart
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The live device policy
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print every denied access to a guarded device as it happens, resolved to container and
    /// NPU, until Ctrl-C
    Monitor {
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove grants, records and pins of containers whose cgroup is gone
    Gc {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct EngineArgs {
    /// The engine to configure
    #[arg(long, value_enum)]
    runtime: Engine,
    /// The engine's configuration file (CRI-O: its drop-in directory); default: the engine's
    /// standard location
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Path of npu-container-runtime to register (default: next to npu-ctk)
    #[arg(long, value_name = "PATH")]
    runtime_path: Option<PathBuf>,
    /// Show the change as a diff without writing anything
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Add the "npu" runtime (backup, atomic write; a second run changes nothing)
    Configure {
        #[command(flatten)]
        engine: EngineArgs,
        /// Also make "npu" the engine's default runtime
        #[arg(long)]
        set_as_default: bool,
    },
    /// Remove only what configure added
    Unconfigure {
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Subcommand)]
enum HookCommand {
    /// Write precreate, createRuntime and poststop hook files into a hooks.d directory
    Install {
        /// The hooks directory (e.g. /usr/share/containers/oci/hooks.d)
        #[arg(long, value_name = "DIR")]
        hooks_dir: PathBuf,
        /// Path of npu-container-hook (default: next to npu-ctk)
        #[arg(long, value_name = "PATH")]
        hook_path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CdiCommand {
    /// Write a CDI spec for this host's NPUs (one device per index, and "all")
    Generate {
        /// Where to write it (default: standard output); e.g. /etc/cdi/ascend.json
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The CDI kind
        #[arg(long, default_value = cdi::DEFAULT_KIND)]
        vendor_class: String,
        /// Path of npu-container-hook (default: next to npu-ctk)
        #[arg(long, value_name = "PATH")]
        hook_path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Deny the container NPU N from its next open or mknod on (file descriptors it already
    /// holds stay open: no device cgroup can revoke those)
    Revoke { container: String, npu: u32 },
    /// Give back an NPU the container was originally granted
    Restore { container: String, npu: u32 },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Every NPU container (or one) with its cgroup, granted devices and verdict counters,
    /// read from the pinned BPF maps and the runtime's records
    Show {
        /// Only this container id
        container: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("npu-ctk: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config() -> Result<Config, Error> {
    Ok(Config::load()?)
}

/// The environment our hook runs with when an engine starts it from a hooks.d or CDI file:
/// a PATH, and this configuration file if one is named.
fn hook_env() -> Vec<String> {
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    if let Some(cfg) = std::env::var_os(npu_runtime::node::config::PATH_ENV) {
        env.push(format!(
            "{}={}",
            npu_runtime::node::config::PATH_ENV,
            cfg.to_string_lossy()
        ));
    }
    env
}

/// A binary installed next to npu-ctk.
fn sibling(name: &str) -> Result<PathBuf, Error> {
    std::env::current_exe()
        .map(|exe| exe.with_file_name(name))
        .map_err(|source| Error::Exec {
            path: "/proc/self/exe".into(),
            source,
        })
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("serializable")
}

fn run(cli: Cli) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let mut print = |text: String| {
        // A closed pipe (`npu-ctk ... | head`) is not an error worth reporting.
        let _ = writeln!(out, "{text}");
    };
    match cli.command {
        Command::Runtime { command } => {
            let (args, set_as_default, add) = match command {
                RuntimeCommand::Configure {
                    engine,
                    set_as_default,
                } => (engine, set_as_default, true),
                RuntimeCommand::Unconfigure { engine } => (engine, false, false),
            };
            let config = args
                .config
                .unwrap_or_else(|| args.runtime.default_config().into());
            let runtime_path = match args.runtime_path {
                Some(p) => p,
                None => sibling("npu-container-runtime")?,
            };
            let outcome = engines::apply(
                &engines::Request {
                    engine: args.runtime,
                    config: &config,
                    runtime_path: &runtime_path,
                    set_as_default,
                    dry_run: args.dry_run,
                },
                add,
            )?;
            let path = outcome.path.display();
            if !outcome.changed {
                print(format!(
                    "{path}: already {}; no change",
                    if add {
                        "configured"
                    } else {
                        "without the npu runtime"
                    }
                ));
            } else if args.dry_run {
                print(format!(
                    "{path}: would change (dry run, nothing written):\n{}",
                    outcome.diff
                ));
            } else {
                print(format!("{path}: updated"));
                if let Some(b) = outcome.backup {
                    print(format!("previous version kept in {}", b.display()));
                }
                print("restart the engine (or reload its configuration) to apply".into());
            }
        }
        Command::Cdi {
            command:
                CdiCommand::Generate {
                    output,
                    vendor_class,
                    hook_path,
                },
        } => {
            let config = load_config()?;
            let hook = match hook_path {
                Some(p) => p,
                None => sibling(shim::HOOK_BINARY)?,
            };
            let spec = cdi::generate(&config, &vendor_class, &hook, &hook_env())?;
            match output {
                Some(path) => {
                    std::fs::write(&path, json(&spec) + "\n").map_err(|source| Error::Stdio {
                        what: "write the CDI spec",
                        source,
                    })?;
                    print(format!("wrote {}", path.display()));
                }
                None => print(json(&spec)),
            }
        }
        Command::Device { command } => {
            let config = load_config()?;
            let (id, npu, allow) = match command {
                DeviceCommand::Revoke { container, npu } => (container, npu, false),
                DeviceCommand::Restore { container, npu } => (container, npu, true),
            };
            let verb = if allow { "restored" } else { "revoked" };
            match live::set_npu(&config, &id, npu, allow)? {
                live::Change::Done(grant) => {
                    print(format!("NPU {npu} ({grant}) {verb} for {id}"));
                    if !allow {
                        print(
                            "effective for the next open or mknod; file descriptors the \
                             container already holds stay open"
                                .into(),
                        );
                    }
                }
                live::Change::Unchanged(grant) => print(format!(
                    "NPU {npu} ({grant}) already {verb} for {id}; no change"
                )),
            }
        }
        Command::Hook {
            command:
                HookCommand::Install {
                    hooks_dir,
                    hook_path,
                },
        } => {
            let hook = match hook_path {
                Some(p) => p,
                None => sibling(shim::HOOK_BINARY)?,
            };
            for path in hooksd::install(&hooks_dir, &hook, &hook_env())? {
                print(format!("wrote {}", path.display()));
            }
        }
        Command::Doctor { json: as_json } => {
            let config = load_config()?;
            let checks = doctor::run(&config, &sibling("npu-container-runtime")?);
            if as_json {
                print(json(&checks));
            } else {
                for c in &checks {
                    let tag = match c.verdict {
                        doctor::Verdict::Ok => "[ ok ]",
                        doctor::Verdict::Warn => "[warn]",
                        doctor::Verdict::Fail => "[FAIL]",
                    };
                    let fix = if c.fix.is_empty() {
                        String::new()
                    } else {
                        format!("\n       fix: {}", c.fix)
                    };
                    print(format!("{tag} {}: {}{fix}", c.name, c.detail));
                }
            }
            let failed = checks
                .iter()
                .filter(|c| c.verdict == doctor::Verdict::Fail)
                .count();
            if failed > 0 {
                return Err(Error::ChecksFailed(failed));
            }
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "npu-ctk",
                &mut std::io::stdout(),
            );
        }
        Command::Devices { json: as_json } => {
            let config = load_config()?;
            let host = HostDevices::discover(&config)?;
            let mut rows: Vec<(String, &npu_runtime::node::devices::DeviceNode)> = Vec::new();
            rows.extend(host.chips.iter().map(|(i, n)| (format!("npu {i}"), n)));
            rows.extend(
                host.virtual_chips
                    .iter()
                    .map(|(i, n)| (format!("virtual npu {i}"), n)),
            );
            rows.extend(
                host.management
                    .iter()
                    .map(|n| ("management".to_string(), n)),
            );
            if as_json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(role, n)| {
                        serde_json::json!({"role": role, "path": n.path, "type": n.dev_type.letter().to_string(),
                            "major": n.major, "minor": n.minor})
                    })
                    .collect();
                print(json(&serde_json::json!({
                    "devices": list,
                    "missing_management": host.missing_management,
                })));
            } else {
                print(format!(
                    "{:<16} {:<28} {:<4} MAJOR:MINOR",
                    "ROLE", "PATH", "TYPE"
                ));
                for (role, n) in &rows {
                    print(format!(
                        "{role:<16} {:<28} {:<4} {}:{}",
                        n.path.display(),
                        n.dev_type.letter(),
                        n.major,
                        n.minor
                    ));
                }
                for missing in &host.missing_management {
                    print(format!(
                        "{:<16} {:<28} MISSING",
                        "management",
                        missing.display()
                    ));
                }
                if rows.is_empty() {
                    print(format!(
                        "no NPU devices under {}",
                        config.dev_root.display()
                    ));
                }
            }
        }
        Command::Policy {
            command:
                PolicyCommand::Show {
                    container,
                    json: as_json,
                },
        } => {
            let config = load_config()?;
            let mut entries = policy::collect(&config)?;
            if let Some(id) = &container {
                entries.retain(|e| e.id.as_deref() == Some(id));
                if entries.is_empty() {
                    return Err(Error::UnknownContainer(id.clone()));
                }
            }
            if as_json {
                print(json(&entries));
            } else {
                print(format!(
                    "{:<24} {:>10} {:>9} {:>9}  GRANTS",
                    "CONTAINER", "CGROUP-ID", "ALLOWED", "DENIED"
                ));
                let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                for e in &entries {
                    let grants: Vec<String> = e.grants.iter().map(ToString::to_string).collect();
                    print(format!(
                        "{:<24} {:>10} {:>9} {:>9}  {}",
                        e.id.as_deref().unwrap_or("(unknown: run gc)"),
                        num(e.cgroup_id),
                        num(e.allowed),
                        num(e.denied),
                        grants.join(", ")
                    ));
                    if !e.revoked.is_empty() {
                        let revoked: Vec<String> =
                            e.revoked.iter().map(ToString::to_string).collect();
                        print(format!("{:<24} revoked {}", "", revoked.join(", ")));
                    }
                    for cg in &e.cgroups {
                        print(format!("{:<24} cgroup {}", "", cg.display()));
                    }
                }
            }
        }
        Command::Monitor { json: as_json } => {
            let config = load_config()?;
            monitor::run(&config, as_json, &mut std::io::stdout())?;
        }
        Command::Gc { json: as_json } => {
            let config = load_config()?;
            let report = gc::run(&config)?;
            if as_json {
                print(json(&report));
            } else {
                print(format!(
                    "removed {} record(s), {} map entr(y/ies), {} old program version(s)",
                    report.records.len(),
                    report.map_entries.len(),
                    report.versions.len()
                ));
                for id in &report.records {
                    print(format!("  record {id}"));
                }
                for (v, id) in &report.map_entries {
                    print(format!("  cgroup {id} in program {v}"));
                }
                for v in &report.versions {
                    print(format!("  program version {v}"));
                }
                for p in &report.problems {
                    print(format!("  left as is: {p}"));
                }
            }
        }
    }
    Ok(())
}
