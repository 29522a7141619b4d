//! Confining a container's cgroup to its grants: the BPF guard on the unified tree, the v1
//! devices controller, and the choice between them.
pub mod guard;
pub mod isolation;
pub mod v1;
