//! What this host is: facts every container start and every operator command reads.
pub mod cgroup;
pub mod config;
pub mod devices;
pub mod dir_cache;
pub mod logging;
pub mod profile;
pub mod pseudo;
pub mod rules;
pub mod state;
pub mod trust;
