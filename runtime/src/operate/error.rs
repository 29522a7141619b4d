//! The error of an operator command: whatever the layers below report (the library's
//! [`crate::error::Error`]), and what only the commands can get wrong.
use crate::{
    enforce::{guard::GuardError, isolation::IsolationError},
    node::{
        cgroup::CgroupError, config::ConfigError, devices::DeviceError, state::StateError,
        trust::TrustError,
    },
    operate::{engines::EngineError, hooksd::HooksError, manual::ManualError},
    start::{mounts::MountError, names::NamesError, request::RequestError, spec::SpecError},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Below(#[from] crate::error::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Hooks(#[from] HooksError),
    #[error(transparent)]
    Manual(#[from] ManualError),
    #[error("no device profile {0:?} (see npu-ctk profiles)")]
    UnknownProfile(String),
    #[error("no NPU container {0:?} is known (see npu-ctk policy show)")]
    UnknownContainer(String),
    #[error(
        "NPU {npu} was never granted to container {id:?}: only original grants can be revoked or restored"
    )]
    NotGranted { id: String, npu: u32 },
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),
    #[error(
        "this host has no cgroup v2 tree: the node guard needs one (on pure cgroup v1 hosts the \
         shim's confinement is the protection)"
    )]
    NoUnifiedTree,
    #[error(
        "none of the guarded_parents exists here ({}): start the engines first, or name a \
         parent with --cgroup",
        .0.join(", ")
    )]
    NoGuardedParent(Vec<String>),
    #[error("could not guard: {}", .0.join(", "))]
    GuardFailed(Vec<String>),
}

/// The lower layers' errors reach a command through the library's error, so `?` works on
/// each of them as it does in the shim and the hook.
macro_rules! through_the_library_error {
    ($($error:ty),* $(,)?) => {
        $(impl From<$error> for Error {
            fn from(e: $error) -> Self {
                Error::Below(e.into())
            }
        })*
    };
}

through_the_library_error!(
    ConfigError,
    SpecError,
    RequestError,
    NamesError,
    DeviceError,
    CgroupError,
    IsolationError,
    GuardError,
    MountError,
    StateError,
    TrustError,
);
