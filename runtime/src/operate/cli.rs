//! `npu-ctk`'s command line: the clap definitions the binary parses and the man pages and
//! completions are generated from.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::operate::engines::Engine;

#[derive(Parser)]
#[command(
    name = "npu-ctk",
    version,
    about = "Operate npu-container-runtime: list NPUs, show the live device policy, clean up",
    long_about = "Operate npu-container-runtime.\n\nThe runtime's configuration is read from \
        /etc/npu-container-runtime/config.toml, or the file named by \
        NPU_CONTAINER_RUNTIME_CONFIG."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// containerd's config, for the CRI checks (the handler the kubelet's pods use);
        /// default /etc/containerd/config.toml, checked on Kubernetes nodes or once the handler
        /// is registered there
        #[arg(long, value_name = "PATH")]
        containerd_config: Option<PathBuf>,
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
    /// The device profiles (accelerator families) and what this host has of each
    Profiles {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion { shell: clap_complete::Shell },
    /// Write the man pages of npu-ctk (one per command, as `npu-ctk-guard.1`),
    /// npu-container-runtime and npu-container-hook into a directory
    Man {
        /// Where to write them (created if missing)
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct EngineArgs {
    /// The engine to configure
    #[arg(long, value_enum)]
    pub runtime: Engine,
    /// The engine's configuration file (CRI-O: its drop-in directory); default: the engine's
    /// standard location
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Path of npu-container-runtime to register (default: next to npu-ctk)
    #[arg(long, value_name = "PATH")]
    pub runtime_path: Option<PathBuf>,
    /// Show the change as a diff without writing anything
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand)]
pub enum RuntimeCommand {
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
pub enum HookCommand {
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
pub enum CdiCommand {
    /// Write a CDI spec for this host's devices of one profile (one device per index, and
    /// "all")
    Generate {
        /// Where to write it (default: standard output); e.g. /etc/cdi/ascend.json
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The device profile whose devices the spec lists
        #[arg(long, value_name = "NAME", default_value = "ascend")]
        profile: String,
        /// The CDI kind (default: the profile's, e.g. ascend.com/npu, kunlunxin.com/xpu)
        #[arg(long)]
        vendor_class: Option<String>,
        /// Path of npu-container-hook (default: next to npu-ctk)
        #[arg(long, value_name = "PATH")]
        hook_path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Deny the container NPU N from its next open or mknod on (file descriptors it already
    /// holds stay open: no device cgroup can revoke those)
    Revoke {
        container: String,
        npu: u32,
        /// The device profile of chip N
        #[arg(long, value_name = "NAME", default_value = "ascend")]
        profile: String,
    },
    /// Give back an NPU the container was originally granted
    Restore {
        container: String,
        npu: u32,
        /// The device profile of chip N
        #[arg(long, value_name = "NAME", default_value = "ascend")]
        profile: String,
    },
}

#[derive(Subcommand)]
pub enum GuardCommand {
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
pub enum PolicyCommand {
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
