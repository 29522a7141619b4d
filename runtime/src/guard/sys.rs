//! The two `bpf(2)` commands aya does not offer in the form we need.
//!
//! aya attaches cgroup device programs through bpf_link, which dies with the attaching process
//! unless pinned (aya cannot pin that link), and runc/crun cannot detach link-attached
//! programs. A plain `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI` keeps the program attached for
//! the cgroup's lifetime and composes with the runtime's own filter (verdicts are AND-ed).
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` member of `union bpf_attr` (up to `prog_cnt`).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`
    // and the size passed is its exact size; the kernel zero-extends shorter attrs and writes
    // back only within that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches `prog` to the cgroup directory `cgroup` as a device program, alongside any others.
pub fn attach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
}

/// Ids of the device programs attached directly to the cgroup directory `cgroup`.
pub fn attached_device_programs(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // BPF_CGROUP_MAX_PROGS is 64; a second round covers any growth in between.
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = QueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(()) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids.resize(attr.prog_cnt as usize + 16, 0);
            }
            Err(e) => return Err(e),
        }
    }
}
