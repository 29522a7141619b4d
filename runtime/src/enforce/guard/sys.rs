//! The `bpf(2)` commands aya does not offer in the form we need.
//!
//! Opening the pinned program through aya (`CgroupDevice::from_pin`) runs aya's kernel
//! feature probes (a dozen BTF and program loads, about a millisecond) on every container
//! start; the hook only needs the program's fd and id, so it gets them directly.
//!
//! aya attaches cgroup device programs through bpf_link, which dies with the attaching process
//! unless pinned (aya cannot pin that link), and runc/crun cannot detach link-attached
//! programs. A plain `BPF_PROG_ATTACH` with `BPF_F_ALLOW_MULTI` keeps the program attached for
//! the cgroup's lifetime and composes with the runtime's own filter (verdicts are AND-ed).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
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

/// The `BPF_PROG_GET_FD_BY_ID` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
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

/// The `BPF_OBJ_GET` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_prog_info` (the kernel fills at most `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
}

fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf_raw(cmd, attr)?;
    // SAFETY: for fd-returning commands a non-negative result is a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens the BPF object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    bpf_fd(BPF_OBJ_GET, &mut attr)
}

/// The kernel's id of the program behind `prog`.
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.id)
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    bpf_raw(cmd, attr).map(drop)
}

fn bpf_raw<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`
    // and the size passed is its exact size; the kernel zero-extends shorter attrs and writes
    // back only within that size (and, for GET_INFO, within the buffer it names).
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
        Ok(rc)
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

/// Detaches `prog` from the cgroup directory `cgroup` (a multi-attached device program).
pub fn detach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_DETACH, &mut attr)
}

/// An fd for the loaded program with kernel id `id`.
pub fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr)
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
