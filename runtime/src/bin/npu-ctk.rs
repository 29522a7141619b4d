//! `npu-ctk`: the operator's tool for npu-container-runtime.
use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use npu_runtime::{config::Config, devices::HostDevices, error::Error, gc, policy};

#[derive(Parser)]
#[command(
    name = "npu-ctk",
    version,
    about = "Operate npu-container-runtime: list NPUs, show the live device policy, clean up",
    long_about = "Operate npu-container-runtime.\n\nThe configuration is read from \
        /etc/npu-container-runtime/config.toml, or the file named by \
        NPU_CONTAINER_RUNTIME_CONFIG (or --config)."
)]
struct Cli {
    /// Configuration file (default: $NPU_CONTAINER_RUNTIME_CONFIG, then
    /// /etc/npu-container-runtime/config.toml)
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the NPUs and management devices found under dev_root, with major:minor
    Devices {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The live device policy
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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

fn load_config(path: Option<PathBuf>) -> Result<Config, Error> {
    Ok(match path {
        Some(p) => Config::from_file(&p)?,
        None => Config::load()?,
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
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "npu-ctk",
                &mut std::io::stdout(),
            );
        }
        Command::Devices { json: as_json } => {
            let config = load_config(cli.config)?;
            let host = HostDevices::discover(&config)?;
            let mut rows: Vec<(String, &npu_runtime::devices::DeviceNode)> = Vec::new();
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
            let config = load_config(cli.config)?;
            let mut entries = policy::collect(&config)?;
            if let Some(id) = &container {
                entries.retain(|e| e.id.as_deref() == Some(id));
                if entries.is_empty() {
                    return Err(Error::BadState(format!("no NPU container {id:?} is known")));
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
                    for cg in &e.cgroups {
                        print(format!("{:<24} cgroup {}", "", cg.display()));
                    }
                }
            }
        }
        Command::Gc { json: as_json } => {
            let config = load_config(cli.config)?;
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
