//! `npu-ctk`: the operator's tool for npu-container-runtime.
use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use npu_runtime::{
    error::Error,
    node::config::Config,
    operate::{
        cdi, devices, doctor,
        engines::{self, Engine},
        gc, hooksd, live, monitor, node_guard, policy,
    },
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
        /// containerd's config, for the CRI checks (the handler the kubelet's pods use)
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/etc/containerd/config.toml"
        )]
        containerd_config: PathBuf,
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
        /// Also print the guard programs' own log lines (aya-log)
        #[arg(long)]
        verbose: bool,
    },
    /// The node guard: attach the device guard to container parent cgroups, so containers
    /// started around the runtime open no NPU
    Guard {
        #[command(subcommand)]
        command: GuardCommand,
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
enum GuardCommand {
    /// Attach this build's guard to each parent (replacing older builds' without a window)
    Install {
        /// A parent cgroup, relative to the cgroup v2 root (e.g. /kubepods.slice); default:
        /// the config's guarded_parents that exist
        #[arg(long = "cgroup", value_name = "PATH")]
        cgroups: Vec<String>,
    },
    /// Detach exactly our guard from each parent
    Uninstall {
        /// A parent cgroup; default: every recorded and configured one
        #[arg(long = "cgroup", value_name = "PATH")]
        cgroups: Vec<String>,
    },
    /// Each guarded or configured parent, the guard version attached, whether it is current
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
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
            print(outcome.report(add, args.dry_run));
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
            let spec = cdi::generate(&config, &vendor_class, &hook, &shim::hook_env())?;
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
            print(live::set_npu(&config, &id, npu, allow)?.report(&id, npu, allow));
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
            for path in hooksd::install(&hooks_dir, &hook, &shim::hook_env())? {
                print(format!("wrote {}", path.display()));
            }
        }
        Command::Doctor {
            json: as_json,
            containerd_config,
        } => {
            // An untrusted config file is one of the checks, not the end of them.
            let config = Config::load_untrusted()?;
            let checks = doctor::run(
                &config,
                &sibling("npu-container-runtime")?,
                &containerd_config,
            );
            print(if as_json {
                json(&checks)
            } else {
                doctor::report(&checks)
            });
            let failed = doctor::failures(&checks);
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
            let listing = devices::Listing::discover(&load_config()?)?;
            print(if as_json {
                json(&listing.json())
            } else {
                listing.table()
            });
        }
        Command::Policy {
            command:
                PolicyCommand::Show {
                    container,
                    json: as_json,
                },
        } => {
            let entries = policy::show(&load_config()?, container.as_deref())?;
            print(if as_json {
                json(&entries)
            } else {
                policy::table(&entries)
            });
        }
        Command::Monitor {
            json: as_json,
            verbose,
        } => {
            let config = load_config()?;
            monitor::run(&config, as_json, verbose, &mut std::io::stdout())?;
        }
        Command::Guard { command } => {
            let config = load_config()?;
            let reports = match command {
                GuardCommand::Install { cgroups } => node_guard::install(&config, &cgroups)?,
                GuardCommand::Uninstall { cgroups } => node_guard::uninstall(&config, &cgroups)?,
                GuardCommand::Status { json: as_json } => {
                    let parents = node_guard::status(&config)?;
                    print(if as_json {
                        json(&parents)
                    } else {
                        node_guard::status_report(&parents)
                    });
                    return Ok(());
                }
            };
            print(node_guard::report(&reports));
            let failed: Vec<String> = reports
                .iter()
                .filter(|r| r.failed())
                .map(|r| r.path.clone())
                .collect();
            if !failed.is_empty() {
                return Err(Error::GuardFailed(failed));
            }
        }
        Command::Gc { json: as_json } => {
            let report = gc::run(&load_config()?)?;
            print(if as_json {
                json(&report)
            } else {
                report.text()
            });
        }
    }
    Ok(())
}
