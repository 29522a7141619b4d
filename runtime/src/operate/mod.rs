//! `npu-ctk`'s commands, one module per command family.
pub mod cdi;
pub mod cli;
pub mod devices;
pub mod doctor;
pub mod engines;
pub mod error;
pub mod gc;
pub mod hooksd;
pub mod live;
pub mod manual;
pub mod monitor;
pub mod node_guard;
pub mod policy;
pub mod profiles;
