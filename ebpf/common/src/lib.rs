//! Map layouts of the NPU device guard, shared by the eBPF program and userspace.
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so the byte images the kernel
//! hashes are fully defined (hash map keys compare every byte) and BTF names every field.
#![no_std]

/// `bpf_cgroup_dev_ctx.access_type` low half: device type (kernel `BPF_DEVCG_DEV_*`).
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;

/// `bpf_cgroup_dev_ctx.access_type` high half: requested access (kernel `BPF_DEVCG_ACC_*`).
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
pub const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Map names as the kernel and bpftool show them (at most 15 bytes).
pub const MAP_CLASSES: &str = "npu_classes";
pub const MAP_CONTAINERS: &str = "npu_containers";
pub const MAP_GRANTS: &str = "npu_grants";
pub const MAP_DENIALS: &str = "npu_denials";
/// Program name as `bpftool cgroup show` prints it.
pub const PROGRAM_NAME: &str = "npu_dev_guard";

/// Version of the maps' layout (their types, key and value types, sizes). The maps outlive
/// program versions, pinned under `<bpf_dir>/maps/v<MAP_LAYOUT>/`, so a new build's program
/// takes over the registrations of running containers. Any change to the maps or to the types
/// below bumps it (and brings a migration from the previous layout); userspace refuses pinned
/// maps whose key or value sizes differ from these types.
pub const MAP_LAYOUT: u32 = 1;

/// Device majors are 12 bits: the classes array has one slot per major.
pub const MAX_MAJORS: usize = 4096;
pub const MAX_CONTAINERS: usize = 16384;
pub const MAX_GRANTS: usize = 131072;
/// Size of the denial ring buffer (a power-of-two number of pages).
pub const DENIALS_BYTES: usize = 256 * 1024;

/// Deepest cgroup level the program inspects when it looks for the owning container.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// The guarded classes of one major (the array index): every node of a guarded (type, major)
/// is NPU-related. An array, because its lookups are inlined by the JIT: every device access
/// of a guarded container pays for this check.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassValue {
    /// Bit `1 << DEV_*` set for each guarded device type of this major.
    pub dev_types: u32,
    /// Number of host nodes seen in these classes when last written (informational).
    pub nodes: u32,
}

impl ClassValue {
    pub const fn guards(&self, dev_type: u32) -> bool {
        dev_type < 32 && self.dev_types & (1 << dev_type) != 0
    }
}

/// A registered container, identified by the id of its cgroup v2 directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    pub cgroup_id: u64,
}

/// Denied guarded accesses of a registered container (allowed ones are counted per grant).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub denied: u64,
}

/// One granted device node of one container.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    pub cgroup_id: u64,
    pub dev_type: u32,
    pub major: u32,
    pub minor: u32,
    /// Always zero: keeps the key free of undefined padding bytes.
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantValue {
    /// `ACC_*` bits the container may use on this node.
    pub access: u32,
    pub pad: u32,
    /// Accesses allowed through this grant.
    pub allowed: u64,
}

/// One denied access to a guarded device, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenialEvent {
    /// The owning container's cgroup, or the task's own when no container owns it.
    pub cgroup_id: u64,
    pub dev_type: u32,
    pub major: u32,
    pub minor: u32,
    /// `ACC_*` bits requested.
    pub access: u32,
    /// Thread group id of the task.
    pub pid: u32,
    /// 1 if `cgroup_id` is a registered container, 0 if no container owns the task.
    pub owned: u32,
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY (all impls): the types are #[repr(C)], made only of integers, with padding spelled
    // out as fields, so every byte is initialised and every bit pattern is a valid value.
    unsafe impl aya::Pod for ClassValue {}
    unsafe impl aya::Pod for ContainerKey {}
    unsafe impl aya::Pod for ContainerStats {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for GrantValue {}
    unsafe impl aya::Pod for DenialEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ClassValue>(), 8);
        assert_eq!(size_of::<ContainerKey>(), 8);
        assert_eq!(size_of::<ContainerStats>(), 8);
        assert_eq!(size_of::<GrantKey>(), 24);
        assert_eq!(size_of::<GrantValue>(), 16);
        assert_eq!(size_of::<DenialEvent>(), 48);
    }

    #[test]
    fn class_bits() {
        let v = ClassValue {
            dev_types: 1 << DEV_CHAR,
            nodes: 3,
        };
        assert!(v.guards(DEV_CHAR) && !v.guards(DEV_BLOCK) && !v.guards(99));
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in [
            MAP_CLASSES,
            MAP_CONTAINERS,
            MAP_GRANTS,
            MAP_DENIALS,
            PROGRAM_NAME,
        ] {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }
}
