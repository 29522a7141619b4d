//! `npu-ctk`: the operator's tool for npu-container-runtime.
use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser};
use npu_runtime::{
    error::Error as LibraryError,
    node::config::Config,
    operate::{
        cdi,
        cli::{
            CdiCommand, Cli, Command, DeviceCommand, GuardCommand, HookCommand, PolicyCommand,
            RuntimeCommand,
        },
        devices, doctor, engines,
        error::Error,
        gc, hooksd, live, manual, monitor, node_guard, policy, profiles,
    },
    start::shim,
};

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
        .map_err(|source| {
            LibraryError::Exec {
                path: "/proc/self/exe".into(),
                source,
            }
            .into()
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
                    profile,
                    vendor_class,
                    hook_path,
                },
        } => {
            let config = load_config()?;
            let hook = match hook_path {
                Some(p) => p,
                None => sibling(shim::HOOK_BINARY)?,
            };
            let spec = cdi::generate(
                &config,
                &profile,
                vendor_class.as_deref(),
                &hook,
                &shim::hook_env(),
            )?;
            match output {
                Some(path) => {
                    std::fs::write(&path, json(&spec) + "\n").map_err(|source| {
                        LibraryError::Stdio {
                            what: "write the CDI spec",
                            source,
                        }
                    })?;
                    print(format!("wrote {}", path.display()));
                }
                None => print(json(&spec)),
            }
        }
        Command::Device { command } => {
            let config = load_config()?;
            let (id, npu, profile, allow) = match command {
                DeviceCommand::Revoke {
                    container,
                    npu,
                    profile,
                } => (container, npu, profile, false),
                DeviceCommand::Restore {
                    container,
                    npu,
                    profile,
                } => (container, npu, profile, true),
            };
            let change = live::set_npu(&config, &id, &profile, npu, allow)?;
            let word = config
                .profiles()
                .into_iter()
                .find(|p| p.name == profile)
                .map_or_else(|| "NPU".into(), |p| p.device_word);
            print(change.report(&id, &word, npu, allow));
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
                containerd_config.as_deref(),
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
        Command::Profiles { json: as_json } => {
            let found = profiles::Listing::discover(&load_config()?)?;
            print(if as_json {
                json(&found.json())
            } else {
                found.table()
            });
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
        Command::Man { output } => {
            for path in manual::write(&output)? {
                print(format!("wrote {}", path.display()));
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
