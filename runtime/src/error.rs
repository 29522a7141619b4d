//! The error of a shim or hook run: every lower module's error, so binaries print one message
//! that names the culprit. The operator commands add theirs in `operate::error`, above this.
use std::path::PathBuf;

use crate::{
    enforce::guard::GuardError, enforce::isolation::IsolationError, node::cgroup::CgroupError,
    node::config::ConfigError, node::devices::DeviceError, node::rules::Grant,
    node::state::StateError, start::mounts::MountError, start::request::RequestError,
    start::spec::SpecError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Names(#[from] crate::start::names::NamesError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    #[error("cgroup v2 device guard: {0}")]
    Guard(#[from] GuardError),
    #[error("driver mounts: {0}")]
    Mount(#[from] MountError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Trust(#[from] crate::node::trust::TrustError),
    #[error(
        "no low-level runtime found: none of {tried:?} is an executable in PATH or the system directories"
    )]
    NoRuntime { tried: Vec<String> },
    #[error("cannot run {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the hook binary {0} is missing: install npu-container-hook next to npu-container-runtime"
    )]
    NoHook(PathBuf),
    #[error("invalid container state on stdin: {0}")]
    BadState(String),
    #[error("cannot {what}: {source}")]
    Stdio {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cgroup v2 host: the container's device rules do not grant {grant}; a hook cannot add \
         grants on cgroup v2, so start NPU containers through npu-container-runtime, or install \
         the precreate hook (npu-ctk hook install) so the grant is written into the spec"
    )]
    NotGrantedOnV2 { grant: Grant },
}
