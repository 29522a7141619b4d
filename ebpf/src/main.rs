//! The NPU device guard: a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached (with
//! `BPF_F_ALLOW_MULTI`) to every NPU container's cgroup, next to the runtime's own filter.
//!
//! Verdict: a device outside the guarded classes is allowed (the runtime's filter still
//! decides); a guarded one is allowed only if the container that owns the current task holds a
//! grant covering the requested access. The owner is the deepest registered ancestor of the
//! task's cgroup, so sub-cgroups made inside a container are covered. No owner -> deny.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuHashMap},
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::{btf_map, cgroup_device},
    programs::DeviceContext,
};
use npu_guard_common::{
    ClassKey, ClassValue, ContainerKey, ContainerStats, GrantKey, GrantValue, MAX_CGROUP_DEPTH,
    MAX_CLASSES, MAX_CONTAINERS, MAX_GRANTS,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[btf_map(name = "npu_classes")]
static CLASSES: HashMap<ClassKey, ClassValue, MAX_CLASSES> = HashMap::new();

// Per-CPU, so counting needs no atomics (the BPF target has no atomic read-modify-write in
// Rust) and CPUs never contend for one cache line.
#[btf_map(name = "npu_containers")]
static CONTAINERS: PerCpuHashMap<ContainerKey, ContainerStats, MAX_CONTAINERS> =
    PerCpuHashMap::new();

#[btf_map(name = "npu_grants")]
static GRANTS: HashMap<GrantKey, GrantValue, MAX_GRANTS> = HashMap::new();

#[cgroup_device]
pub fn npu_dev_guard(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel hands every cgroup device program a valid, readable bpf_cgroup_dev_ctx.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    let class = ClassKey {
        dev_type,
        major: dev.major,
    };
    if CLASSES.get_ptr(class).is_none() {
        return ALLOW;
    }
    let Some((owner, stats)) = owning_container() else {
        return DENY;
    };
    let grant = GRANTS.get_ptr(GrantKey {
        cgroup_id: owner,
        dev_type,
        major: dev.major,
        minor: dev.minor,
        pad: 0,
    });
    // SAFETY: a pointer returned by a map lookup is valid for reads during this invocation.
    let allowed = grant.is_some_and(|g| access & !unsafe { (*g).access } == 0);
    // SAFETY: `stats` came from a per-CPU map lookup: it points to this CPU's slot, valid for
    // this invocation and written by no other CPU.
    unsafe {
        if allowed {
            (*stats).allowed += 1;
        } else {
            (*stats).denied += 1;
        }
    }
    if allowed { ALLOW } else { DENY }
}

/// The deepest registered cgroup among the current task's cgroup and its ancestors.
#[inline(always)]
fn owning_container() -> Option<(u64, *mut ContainerStats)> {
    // SAFETY: the helper takes no arguments and only reads the current task.
    let current = unsafe { bpf_get_current_cgroup_id() };
    // Fast path: almost every access comes from a task in the container's own cgroup.
    if let Some(stats) = CONTAINERS.get_ptr_mut(ContainerKey { cgroup_id: current }) {
        return Some((current, stats));
    }
    // Levels deeper than the task's own return 0, so walking down from the bound visits the
    // task's ancestors deepest first; level 0 (the root cgroup) is never registered.
    let mut level = MAX_CGROUP_DEPTH;
    while level > 1 {
        level -= 1;
        // SAFETY: any level is valid input; out-of-range levels yield 0.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == current {
            continue;
        }
        if let Some(stats) = CONTAINERS.get_ptr_mut(ContainerKey { cgroup_id: id }) {
            return Some((id, stats));
        }
    }
    None
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; there is nothing to unwind to.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
