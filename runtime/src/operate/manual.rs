//! `npu-ctk man`: the man pages of the three commands, rendered from their clap definitions
//! (clap_mangen) at package time. npu-ctk gets one page per command (`npu-ctk-guard-install.1`,
//! as git does); the shim and the hook, which parse their own command lines (runc's and an OCI
//! stage), are described by clap commands made for their pages.
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, CommandFactory, builder::PossibleValue};

use crate::{
    node::config::{DEFAULT_PATH, PATH_ENV},
    operate::cli::Cli,
    start::{hook, request, shim},
};

#[derive(Debug, thiserror::Error)]
#[error("cannot write the man page {path}: {source}")]
pub struct ManualError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The environment every command reads.
const CONFIG_ENV: (&str, &str) = (
    PATH_ENV,
    "The configuration file to read instead of /etc/npu-container-runtime/config.toml. It \
     must be owned by root and not writable by others, as must its directories.",
);

/// Writes every page into `dir`; returns their paths.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, ManualError> {
    std::fs::create_dir_all(dir).map_err(|source| ManualError {
        path: dir.into(),
        source,
    })?;
    let mut pages = Vec::new();
    let mut ctk = Cli::command();
    ctk.build();
    ctk_pages(&ctk, "npu-ctk", &mut pages);
    pages.push(page(
        "npu-container-runtime",
        shim_command(),
        &shim_sections(),
    ));
    pages.push(page(shim::HOOK_BINARY, hook_command(), &hook_sections()));
    let mut written = Vec::new();
    for (name, text) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text).map_err(|source| ManualError {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// `npu-ctk` and each of its commands, depth first.
fn ctk_pages(cmd: &clap::Command, name: &str, pages: &mut Vec<(String, String)>) {
    let sections = if name == "npu-ctk" {
        vec![
            Section::Environment(vec![CONFIG_ENV]),
            Section::Files(vec![(DEFAULT_PATH, "The runtime's configuration.")]),
        ]
    } else {
        Vec::new()
    };
    pages.push(page(name, cmd.clone().name(name.to_string()), &sections));
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        ctk_pages(sub, &format!("{name}-{}", sub.get_name()), pages);
    }
}

enum Section {
    Environment(Vec<(&'static str, &'static str)>),
    Files(Vec<(&'static str, &'static str)>),
}

/// One page: clap_mangen's sections, then ours (ENVIRONMENT, FILES) before VERSION.
fn page(name: &str, cmd: clap::Command, extra: &[Section]) -> (String, String) {
    let has_commands = cmd.get_subcommands().any(|s| s.get_name() != "help");
    let man = clap_mangen::Man::new(cmd.version(env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let render = |out: &mut Vec<u8>, f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        f(out).expect("render into memory");
    };
    render(&mut out, &|o| man.render_title(o));
    render(&mut out, &|o| man.render_name_section(o));
    render(&mut out, &|o| man.render_synopsis_section(o));
    render(&mut out, &|o| man.render_description_section(o));
    render(&mut out, &|o| man.render_options_section(o));
    if has_commands {
        render(&mut out, &|o| man.render_subcommands_section(o));
    }
    let mut text = String::from_utf8(out).expect("clap_mangen writes UTF-8");
    for section in extra {
        let (title, items) = match section {
            Section::Environment(items) => ("ENVIRONMENT", items),
            Section::Files(items) => ("FILES", items),
        };
        text.push_str(&format!(".SH {title}\n"));
        for (term, body) in items {
            text.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(term), roff(body)));
        }
    }
    let mut out = Vec::new();
    render(&mut out, &|o| man.render_version_section(o));
    text.push_str(&String::from_utf8(out).expect("clap_mangen writes UTF-8"));
    (name.to_string(), text)
}

/// Escapes text for a roff line: backslashes, hyphens (so they stay ASCII in copy and paste)
/// and a leading control character.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.chars().next() {
        Some('.' | '\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// The shim's page: it takes runc's command line, so it is described, not parsed, here.
fn shim_command() -> clap::Command {
    clap::Command::new("npu-container-runtime")
        .about("OCI runtime shim that gives a container exactly the Ascend NPUs it names")
        .long_about(
            "Container engines call npu-container-runtime exactly like runc. On create (and \
             run) it reads the bundle's config.json, resolves the container's NPU request \
             against the host's devices, writes the grant into the spec (device nodes, an exact \
             device-cgroup rule per node) with npu-container-hook as createRuntime hook, and \
             runs the real runtime (the config's runtimes, runc then crun) with the same \
             arguments. After delete it removes the container's grants and record itself (no \
             poststop hook). Every other command is handed on unchanged. A bad request fails \
             create with a message naming the variable; the container is not created. \
             Register it with `npu-ctk runtime configure`.",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args([
            runc_option("root", Some("DIR"), "runc's state directory, handed on"),
            runc_option(
                "log",
                Some("FILE"),
                "runc's log, handed on; the shim writes its own errors there too, so they \
                 reach the engine's message",
            ),
            runc_option(
                "log-format",
                Some("text|json"),
                "the log's format, for runc's lines and the shim's",
            ),
            runc_option("debug", None, "debug logging, in runc and in the shim"),
            runc_option(
                "systemd-cgroup",
                None,
                "runc's cgroup driver, handed on (as every other runc option)",
            ),
        ])
        .arg(
            Arg::new("command")
                .value_name("COMMAND")
                .required(true)
                .help("runc's command (create, start, state, kill, delete, exec, run, ...)"),
        )
        .arg(
            Arg::new("args")
                .value_name("ARGS")
                .num_args(0..)
                .help("the command's options and the container id, handed on"),
        )
}

/// One of runc's global options, as the shim's page lists it.
fn runc_option(name: &'static str, value: Option<&'static str>, help: &'static str) -> Arg {
    let arg = Arg::new(name).long(name).help(help);
    match value {
        Some(v) => arg.value_name(v),
        None => arg.action(ArgAction::SetTrue),
    }
}

fn shim_sections() -> Vec<Section> {
    vec![
        Section::Environment(vec![
            (
                request::VISIBLE_DEVICES,
                "In the container's environment: the NPUs it asks for. Unset, empty or void: \
                 none named; none: the management nodes and driver mounts only; all; a comma \
                 list of indices and ranges (0-3,5); or names (npu-1, Ascend910-1).",
            ),
            (
                request::RUNTIME_OPTIONS,
                "In the container's environment: NODRV (devices only, no driver mounts), \
                 VIRTUAL (vdavinciN appears as davinciN).",
            ),
            (
                request::RUNTIME_MOUNTS,
                "In the container's environment: the mount lists to apply (default base), read \
                 from the config's mount_list_dir.",
            ),
            (
                request::ALLOW_LINK,
                "In the container's environment: True allows root-owned symlinked mount sources.",
            ),
            CONFIG_ENV,
        ]),
        Section::Files(vec![
            (DEFAULT_PATH, "The runtime's configuration."),
            (
                "/etc/npu-container-runtime/mounts.d/NAME.list",
                "Mount lists: one absolute host path per line, bind-mounted read-only.",
            ),
        ]),
    ]
}

/// The hook's page: one command per OCI stage it serves.
fn hook_command() -> clap::Command {
    clap::Command::new(shim::HOOK_BINARY)
        .about("OCI hook that mounts the NPU driver into a container and enforces isolation")
        .long_about(
            "Run by the OCI runtime, never by hand: the stage is its argument and the OCI state \
             (or, for precreate, the spec) arrives on standard input. npu-container-runtime \
             adds it to every NPU container's spec; `npu-ctk hook install` writes hooks.d \
             files for engines that run hooks without the shim.",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("stage")
                .value_name("STAGE")
                .required(true)
                .help("the OCI stage")
                .value_parser(
                    hook::STAGES.map(|(stage, about)| PossibleValue::new(stage).help(about)),
                ),
        )
}

fn hook_sections() -> Vec<Section> {
    vec![
        Section::Environment(vec![CONFIG_ENV]),
        Section::Files(vec![
            (DEFAULT_PATH, "The runtime's configuration."),
            (
                "/run/npu-container-runtime",
                "Per-container records (state_dir), so the shim's delete, poststop and npu-ctk \
                 gc can clean up; node facts under node/.",
            ),
            (
                "/sys/fs/bpf/npu-container-runtime",
                "The pinned guard programs and policy maps (bpf_dir).",
            ),
        ]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_command_with_its_options_and_our_sections() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "npu-ctk.1",
            "npu-ctk-guard.1",
            "npu-ctk-guard-install.1",
            "npu-ctk-runtime-configure.1",
            "npu-ctk-policy-show.1",
            "npu-container-runtime.1",
            "npu-container-hook.1",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let configure =
            std::fs::read_to_string(dir.path().join("npu-ctk-runtime-configure.1")).unwrap();
        assert!(configure.starts_with(".ie"), "roff: {configure}");
        assert!(
            configure.contains("npu\\-ctk\\-runtime\\-configure"),
            "{configure}"
        );
        assert!(
            configure.contains("\\-\\-set\\-as\\-default"),
            "{configure}"
        );
        assert!(!configure.contains(".SH SUBCOMMANDS"), "{configure}");
        let guard = std::fs::read_to_string(dir.path().join("npu-ctk-guard.1")).unwrap();
        assert!(guard.contains(r"npu\-ctk\-guard\-install(1)"), "{guard}");
        let shim = std::fs::read_to_string(dir.path().join("npu-container-runtime.1")).unwrap();
        assert!(shim.contains(".SH ENVIRONMENT"), "{shim}");
        assert!(!shim.contains(".SH SUBCOMMANDS"), "{shim}");
        assert!(shim.contains("ASCEND_VISIBLE_DEVICES"), "{shim}");
        let hook = std::fs::read_to_string(dir.path().join("npu-container-hook.1")).unwrap();
        assert!(!hook.contains(".SH SUBCOMMANDS"), "{hook}");
        for (stage, _) in hook::STAGES {
            assert!(hook.contains(&roff(stage)), "{stage} in {hook}");
        }
    }

    #[test]
    fn roff_escapes_what_troff_would_interpret() {
        assert_eq!(roff("a-b\\c"), "a\\-b\\ec");
        assert_eq!(roff(".hidden"), "\\&.hidden");
    }
}
