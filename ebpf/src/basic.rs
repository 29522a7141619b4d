//! The basic guard program, for kernels whose cgroup device programs may not ask for the
//! task's ancestors, pid or command (e.g. 5.10): a sub-cgroup of a container owns nothing
//! and is denied; denial events carry the cgroup but no pid or command.
#![no_std]
#![no_main]

mod guard;

use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};

#[cgroup_device]
pub fn npu_dev_guard(ctx: DeviceContext) -> i32 {
    guard::check::<false>(ctx)
}
