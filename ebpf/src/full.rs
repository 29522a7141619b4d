//! The full guard program: owners among the task's ancestors, pid and command in denial
//! events (kernels that give cgroup device programs those helpers, e.g. 6.1).
#![no_std]
#![no_main]

mod guard;

use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};

#[cgroup_device]
pub fn npu_dev_guard(ctx: DeviceContext) -> i32 {
    guard::check::<true>(ctx)
}
