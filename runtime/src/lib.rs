//! npu-container-runtime: gives containers exactly the Ascend NPUs they asked for.
//!
//! The binaries (`npu-container-runtime`, `npu-container-hook`, `npu-ctk`) are thin layers over
//! these modules:
//! - [`config`]: the configuration file;
//! - [`devices`]: host NPU discovery and the device/grant model;
//! - [`cgroup`]: how device control works on this host and where a container's cgroups are,
//!   with the v1 `devices` controller backend in [`cgroup::v1`];
//! - [`guard`]: the cgroup v2 BPF device guard and its pinned maps;
//! - [`isolation`]: enforcing a container's grants with whichever backends the host uses;
//! - [`request`]: the `ASCEND_*` variables; [`spec`]: the OCI spec edit; [`args`]: runc's
//!   command line; [`mounts`]: driver mounts inside the rootfs; [`state`]: per-container
//!   records; [`shim`] and [`hook`]: what each binary does; [`logging`]; [`error`].
pub mod args;
pub mod cdi;
pub mod cgroup;
pub mod config;
pub mod devices;
pub mod doctor;
pub mod engines;
pub mod error;
pub mod gc;
pub mod guard;
pub mod hook;
pub mod hooksd;
pub mod isolation;
pub mod live;
pub mod logging;
pub mod monitor;
pub mod mounts;
pub mod policy;
pub mod request;
pub mod shim;
pub mod spec;
pub mod state;
