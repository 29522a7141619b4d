//! The shim's view of a runc command line: enough to find the subcommand, the bundle and the
//! log settings, while the line itself is handed to the real runtime unchanged.
//!
//! runc (urfave/cli) accepts `-flag` and `--flag`, values as `--flag value` or `--flag=value`,
//! global flags before the subcommand and subcommand flags before the container id.
use std::path::PathBuf;

use crate::node::logging::EngineLog;

/// runc global flags that take a value.
const GLOBAL_VALUE_FLAGS: &[&str] = &["log", "log-format", "root", "criu", "rootless"];
/// `create`/`run` flags that take a value.
const CREATE_VALUE_FLAGS: &[&str] = &["bundle", "b", "console-socket", "pid-file", "preserve-fds"];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuncArgs {
    /// The subcommand (`create`, `run`, `update`, ...), if any.
    pub command: Option<String>,
    /// Index of the subcommand in argv (without argv\[0\]).
    pub command_index: Option<usize>,
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
    pub debug: bool,
    pub root: Option<PathBuf>,
    /// `--bundle`/`-b` of create/run (the runtime defaults it to the working directory).
    pub bundle: Option<PathBuf>,
    /// First positional argument after the subcommand: the container id.
    pub container_id: Option<String>,
    /// `-h`/`--help` after `create`/`run`: the runtime answers it, no bundle involved.
    pub help: bool,
    /// `-d`/`--detach` of `run`: the container outlives the command (and is deleted later).
    pub detach: bool,
}

/// Splits `-x`, `--x`, `--x=v` into (name, inline value); `None` for non-flags.
fn flag(arg: &str) -> Option<(&str, Option<&str>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() {
        return None;
    }
    Some(match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    })
}

impl RuncArgs {
    /// Parses argv without argv\[0\]. Never fails: what it does not understand is left to the
    /// runtime, which reports it.
    pub fn parse(args: &[String]) -> Self {
        let mut out = Self::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let Some((name, inline)) = flag(arg) else {
                out.command = Some(arg.clone());
                out.command_index = Some(i);
                i += 1;
                break;
            };
            let takes_value = GLOBAL_VALUE_FLAGS.contains(&name);
            let value = match (takes_value, inline) {
                (true, Some(v)) => Some(v.to_string()),
                (true, None) => {
                    i += 1;
                    args.get(i).cloned()
                }
                (false, _) => None,
            };
            match name {
                "log" => out.log = value.map(PathBuf::from),
                "log-format" => out.log_format = value,
                "root" => out.root = value.map(PathBuf::from),
                "debug" => out.debug = inline.is_none_or(|v| v != "false"),
                _ => {}
            }
            i += 1;
        }
        if matches!(out.command.as_deref(), Some("create" | "run")) {
            while i < args.len() {
                let arg = &args[i];
                if arg == "--" {
                    out.container_id = args.get(i + 1).cloned();
                    break;
                }
                match flag(arg) {
                    Some((name, inline)) if CREATE_VALUE_FLAGS.contains(&name) => {
                        let value = match inline {
                            Some(v) => Some(v.to_string()),
                            None => {
                                i += 1;
                                args.get(i).cloned()
                            }
                        };
                        if name == "bundle" || name == "b" {
                            out.bundle = value.map(PathBuf::from);
                        }
                    }
                    Some(("h" | "help", _)) => out.help = true,
                    Some(("d" | "detach", inline)) => {
                        out.detach = inline.is_none_or(|v| v != "false");
                    }
                    Some(_) => {}
                    None => {
                        if out.container_id.is_none() {
                            out.container_id = Some(arg.clone());
                        }
                    }
                }
                i += 1;
            }
        } else if out.command.is_some()
            && let Some(last) = args.get(i..).and_then(<[String]>::last)
            && flag(last).is_none()
        {
            // Other commands (`update`, `delete`, ...) end with the container id.
            out.container_id = Some(last.clone());
        }
        out
    }

    pub fn json_logs(&self) -> bool {
        self.log_format.as_deref() == Some("json")
    }

    /// The log file the engine named (`--log`), with its format and level.
    pub fn engine_log(&self) -> Option<EngineLog<'_>> {
        self.log.as_deref().map(|file| EngineLog {
            file,
            json: self.json_logs(),
            debug: self.debug,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> RuncArgs {
        RuncArgs::parse(
            &line
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn docker_style_create() {
        let a = parse(
            "--root /var/run/docker/runtime-runc/moby --log /run/x/log.json --log-format json \
             create --bundle /run/b/abc --pid-file /run/b/abc/init.pid abc",
        );
        assert_eq!(a.command.as_deref(), Some("create"));
        assert_eq!(a.command_index, Some(6));
        assert_eq!(a.root, Some("/var/run/docker/runtime-runc/moby".into()));
        assert_eq!(a.log, Some("/run/x/log.json".into()));
        assert!(a.json_logs());
        assert_eq!(a.bundle, Some("/run/b/abc".into()));
        assert_eq!(a.container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn equals_forms_single_dash_and_short_bundle() {
        let a = parse("-debug --log=/l --systemd-cgroup run -d -b=/bun --console-socket /s id1");
        assert!(a.debug);
        assert_eq!(a.log, Some("/l".into()));
        assert_eq!(a.command.as_deref(), Some("run"));
        assert_eq!(a.bundle, Some("/bun".into()));
        assert_eq!(a.container_id.as_deref(), Some("id1"));

        let a = parse("create -b /x --no-pivot id2");
        assert_eq!(a.bundle, Some("/x".into()));
        assert_eq!(a.container_id.as_deref(), Some("id2"));

        let a = parse("create --bundle=/y -- id3");
        assert_eq!(a.bundle, Some("/y".into()));
        assert_eq!(a.container_id.as_deref(), Some("id3"));
    }

    #[test]
    fn help_requests() {
        for line in [
            "create -h",
            "create --help",
            "run -h",
            "--root /r run --help x",
        ] {
            assert!(parse(line).help, "{line}");
        }
        assert!(!parse("run -d --bundle /b id").help);
    }

    #[test]
    fn detached_runs() {
        assert!(parse("run -d --bundle /b id").detach);
        assert!(parse("--root /r run --detach=true id").detach);
        assert!(!parse("run --detach=false id").detach);
        assert!(!parse("run --bundle /b id").detach);
        // A container id that looks like nothing runc knows is not a flag.
        assert!(!parse("run -b /b d").detach);
    }

    #[test]
    fn defaults_and_other_commands() {
        let a = parse("create id");
        assert_eq!(a.bundle, None);
        assert_eq!(a.container_id.as_deref(), Some("id"));
        let a = parse("--root /r update --cpus 2 id");
        assert_eq!(a.command.as_deref(), Some("update"));
        assert_eq!(a.container_id.as_deref(), Some("id"));
        assert_eq!(
            parse("update --resources - id9").container_id.as_deref(),
            Some("id9")
        );
        assert_eq!(parse("state").container_id, None);
        let a = parse("--version");
        assert_eq!(a.command, None);
        let a = parse("--log");
        assert_eq!(a.log, None);
        assert!(parse("").command.is_none());
        assert!(!parse("--debug=false state x").debug);
    }
}
