//! The NPU device guard, shared by both program variants (`full.rs`, `basic.rs`): a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached (with `BPF_F_ALLOW_MULTI`) to every NPU
//! container's cgroup, next to the runtime's own filter.
//!
//! Verdict: a device outside the guarded classes is allowed (the runtime's filter still
//! decides); a guarded one is allowed only if the container that owns the current task holds a
//! grant covering the requested access. The owner is the deepest registered ancestor of the
//! task's cgroup, so sub-cgroups made inside a container are covered. No owner: mknod passes
//! (runc makes the spec's nodes before our hook registers the container), read and write are
//! denied - which is what the node guard on container parents gives containers started
//! around the runtime.
//!
//! The variants differ only in what the kernel lets a cgroup device program ask (`FULL`):
//! the full one finds owners among the task's ancestors and puts the task's pid and command
//! in denial events; the basic one (kernels that refuse `bpf_get_current_comm`,
//! `bpf_get_current_pid_tgid` and `bpf_get_current_ancestor_cgroup_id` there, such as 5.10)
//! knows only the task's own cgroup, so a sub-cgroup of a container owns nothing and is
//! denied, and its events carry no pid or command.
//!
//! Cost matters: every device open in a guarded container runs this. A non-guarded device
//! costs one inlined array lookup; an allowed NPU access from the container's own cgroup one
//! more hash lookup. The ancestor walk only runs for sub-cgroups and denials.

use aya_ebpf::{
    btf_maps::{Array, PerCpuHashMap, RingBuf},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid,
    },
    macros::btf_map,
    programs::DeviceContext,
};
use aya_log_ebpf::warn;
use npu_guard_common::{
    ACC_MKNOD, ClassValue, ContainerKey, ContainerStats, DENIALS_BYTES, DenialEvent, GrantKey,
    GrantValue, MAX_CGROUP_DEPTH, MAX_CONTAINERS, MAX_GRANTS, MAX_MAJORS,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[btf_map(name = "npu_classes")]
static CLASSES: Array<ClassValue, MAX_MAJORS> = Array::new();

// Per-CPU values, so counting needs no atomics (the BPF target has no atomic read-modify-write
// in Rust) and CPUs never contend for one cache line.
#[btf_map(name = "npu_containers")]
static CONTAINERS: PerCpuHashMap<ContainerKey, ContainerStats, MAX_CONTAINERS> =
    PerCpuHashMap::new();

#[btf_map(name = "npu_grants")]
static GRANTS: PerCpuHashMap<GrantKey, GrantValue, MAX_GRANTS> = PerCpuHashMap::new();

/// Denied accesses to guarded devices, for `npu-ctk monitor`. Written only on denials, so
/// allowed accesses pay nothing for it; a full buffer drops events (the counters still count).
#[btf_map(name = "npu_denials")]
static DENIALS: RingBuf<DenialEvent, DENIALS_BYTES> = RingBuf::new();

/// What was asked for, carried to the verdict functions.
#[derive(Clone, Copy)]
struct Request {
    dev_type: u32,
    major: u32,
    minor: u32,
    access: u32,
}

/// The verdict for one device access (`FULL`: the full variant, see the module docs).
#[inline(always)]
pub fn check<const FULL: bool>(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel hands every cgroup device program a valid, readable bpf_cgroup_dev_ctx.
    let dev = unsafe { &*ctx.device };
    let dev_type = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    let guarded = CLASSES.get(dev.major).is_some_and(|c| c.guards(dev_type));
    if !guarded {
        return ALLOW;
    }
    let req = Request {
        dev_type,
        major: dev.major,
        minor: dev.minor,
        access,
    };
    let grant_of = |cgroup_id: u64| {
        GRANTS.get_ptr_mut(GrantKey {
            cgroup_id,
            dev_type,
            major: dev.major,
            minor: dev.minor,
            pad: 0,
        })
    };
    // SAFETY: the helper takes no arguments and only reads the current task.
    let current = unsafe { bpf_get_current_cgroup_id() };
    // Fast path: grants exist only for registered containers, so a grant of the task's own
    // cgroup makes that cgroup the deepest registered one.
    if let Some(grant) = grant_of(current) {
        return verdict::<FULL>(&ctx, grant, &req, current, current);
    }
    let Some(owner) = owning_container::<FULL>(current) else {
        // No container owns the task: under a node guard, a container started around the
        // runtime, or one whose hook has not registered it yet. runc's init makes the spec's
        // device nodes before any hook runs, and a node that cannot be read or written is
        // harmless: mknod passes, reads and writes never do.
        if req.access & !ACC_MKNOD == 0 {
            return ALLOW;
        }
        report::<FULL>(&ctx, &req, current, current, false);
        return DENY;
    };
    match grant_of(owner) {
        Some(grant) => verdict::<FULL>(&ctx, grant, &req, owner, current),
        None => deny::<FULL>(&ctx, &req, owner, current),
    }
}

#[inline(always)]
fn verdict<const FULL: bool>(
    ctx: &DeviceContext,
    grant: *mut GrantValue,
    req: &Request,
    owner: u64,
    current: u64,
) -> i32 {
    // SAFETY: `grant` came from a per-CPU map lookup: this CPU's slot, valid for this
    // invocation and written by no other CPU.
    unsafe {
        if req.access & !(*grant).access == 0 {
            (*grant).allowed += 1;
            return ALLOW;
        }
    }
    deny::<FULL>(ctx, req, owner, current)
}

#[inline(always)]
fn deny<const FULL: bool>(ctx: &DeviceContext, req: &Request, owner: u64, current: u64) -> i32 {
    if let Some(stats) = CONTAINERS.get_ptr_mut(ContainerKey { cgroup_id: owner }) {
        // SAFETY: this CPU's slot of a per-CPU map value, valid for this invocation.
        unsafe { (*stats).denied += 1 };
    }
    report::<FULL>(ctx, req, owner, current, true);
    DENY
}

/// Puts a denial on the ring buffer (dropped if the buffer is full), and says it in a log
/// line (aya-log; `npu-ctk monitor --verbose`). Only denials come here: allowed accesses log
/// nothing and pay nothing for it.
#[inline(always)]
fn report<const FULL: bool>(
    ctx: &DeviceContext,
    req: &Request,
    cgroup_id: u64,
    current: u64,
    owned: bool,
) {
    let (major, minor, access) = (req.major, req.minor, req.access);
    if !owned {
        warn!(
            ctx,
            "denied {}:{} access {} to cgroup {}: no container owns it",
            major,
            minor,
            access,
            current
        );
    } else if cgroup_id != current {
        warn!(
            ctx,
            "denied {}:{} access {} to cgroup {} of container cgroup {}",
            major,
            minor,
            access,
            current,
            cgroup_id
        );
    } else {
        warn!(
            ctx,
            "denied {}:{} access {} to container cgroup {}", major, minor, access, cgroup_id
        );
    }
    let Some(mut entry) = DENIALS.reserve(0) else {
        return;
    };
    let (comm, pid) = if FULL {
        // The upper half of pid_tgid is the thread group id (the "pid" users know).
        let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (bpf_get_current_comm().unwrap_or([0; 16]), pid)
    } else {
        ([0; 16], 0)
    };
    entry.write(DenialEvent {
        cgroup_id,
        dev_type: req.dev_type,
        major: req.major,
        minor: req.minor,
        access: req.access,
        pid,
        owned: owned as u32,
        comm,
    });
    entry.submit(0);
}

/// The deepest registered cgroup among the current task's cgroup and its ancestors (the
/// basic variant: the task's own cgroup only).
#[inline(always)]
fn owning_container<const FULL: bool>(current: u64) -> Option<u64> {
    if CONTAINERS
        .get_ptr(ContainerKey { cgroup_id: current })
        .is_some()
    {
        return Some(current);
    }
    if !FULL {
        return None;
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
        if CONTAINERS.get_ptr(ContainerKey { cgroup_id: id }).is_some() {
            return Some(id);
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
