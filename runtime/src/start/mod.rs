//! A container's way in: the shim's spec edit on `create`, and the hook's mounts and
//! enforcement inside the container's namespaces.
pub mod args;
pub mod hook;
pub mod mounts;
pub mod names;
pub mod request;
pub mod shim;
pub mod spec;
