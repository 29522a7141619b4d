//! npu-container-runtime: gives containers exactly the Ascend NPUs they asked for.
//!
//! The folders follow a container's way through the runtime, bottom to top; a layer uses the
//! ones below it and never one above (a test in `runtime/tests/layers.rs` checks this):
//! - [`node`]: what this host is - the configuration, its NPU device nodes and the device-rule
//!   model, the cgroup layout, per-container records, logging;
//! - [`enforce`]: confining one cgroup to its grants - the cgroup v2 BPF [`enforce::guard`],
//!   the cgroup v1 devices planner [`enforce::v1`], and [`enforce::isolation`] choosing
//!   between them;
//! - [`start`]: a container's way in - runc's argv, the request variables, the OCI spec edit,
//!   driver mounts, and what the shim and the hook do at each step;
//! - [`operate`]: `npu-ctk`'s commands, one module per command family.
//!
//! [`error`] gathers every layer's error for the binaries, which stay thin over this library.
pub mod enforce;
pub mod error;
pub mod node;
pub mod operate;
pub mod start;
