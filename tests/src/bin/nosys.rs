//! `nosys SYSCALL[,SYSCALL...] -- PROGRAM [ARGS...]`: runs PROGRAM with the named syscalls
//! failing with ENOSYS, as on a kernel that predates them. The seccomp filter is inherited by
//! every child, so a runtime started this way runs our hook on the same "old kernel". Used to
//! prove the code paths for kernels older than this machine's (4.19, 3.10).
//!
//! `bpf_map_create` is not a syscall but `bpf(BPF_MAP_CREATE, ...)`, made to fail with EINVAL,
//! as a kernel that has none of the guard's map types answers: no guard variant loads.
use std::{os::unix::process::CommandExt, process::Command};

/// The syscalls this tool can hide (x86_64 numbers from libc).
const KNOWN: [(&str, libc::c_long); 5] = [
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("openat2", libc::SYS_openat2),
    ("fsopen", libc::SYS_fsopen),
];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// `bpf(2)`'s command number for creating a map.
const BPF_MAP_CREATE: u32 = 0;

/// A classic BPF filter: on x86_64, each listed syscall returns ENOSYS and, with
/// `map_create`, `bpf(BPF_MAP_CREATE)` returns EINVAL; everything else runs.
fn filter(numbers: &[libc::c_long], map_create: bool) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ret = |value: u32| stmt(BPF_RET | BPF_K, value);
    let n = numbers.len() as u8;
    // The bpf check after the syscall list: 3 instructions, or none.
    let bpf_len: u8 = if map_create { 3 } else { 0 };
    // seccomp_data: nr at offset 0, arch at offset 4, args[0] (low half) at offset 16.
    let mut prog = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        // Another architecture: leave it alone (jump over the checks to "allow").
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            AUDIT_ARCH_X86_64,
            0,
            n + bpf_len + 1,
        ),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
    ];
    for (i, nr) in numbers.iter().enumerate() {
        // Match: jump past the remaining checks, the bpf check and "allow" to ENOSYS.
        let to_errno = (numbers.len() - i - 1) as u8 + bpf_len + 1;
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr as u32, to_errno, 0));
    }
    if map_create {
        // Not bpf: allow. bpf with another command: allow. BPF_MAP_CREATE: EINVAL.
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_bpf as u32, 0, 2));
        prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, 16));
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, BPF_MAP_CREATE, 2, 0));
    }
    prog.push(ret(libc::SECCOMP_RET_ALLOW));
    prog.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    if map_create {
        prog.push(ret(libc::SECCOMP_RET_ERRNO | libc::EINVAL as u32));
    }
    prog
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: nosys SYSCALL[,SYSCALL...] -- PROGRAM [ARGS...]";
    let (Some(list), Some("--"), Some(program)) =
        (args.first(), args.get(1).map(String::as_str), args.get(2))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut numbers = Vec::new();
    let mut map_create = false;
    for name in list.split(',').filter(|n| !n.is_empty()) {
        if name == "bpf_map_create" {
            map_create = true;
            continue;
        }
        match KNOWN.iter().find(|(n, _)| *n == name) {
            Some((_, nr)) => numbers.push(*nr),
            None => {
                eprintln!(
                    "nosys: unknown syscall {name:?}; known: open_tree, move_mount, mount_setattr, openat2, fsopen"
                );
                std::process::exit(2);
            }
        }
    }
    let mut prog = filter(&numbers, map_create);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, a valid classic BPF program that outlives the call;
    // the kernel copies it. As root (CAP_SYS_ADMIN) no_new_privs is not required.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        eprintln!(
            "nosys: cannot install the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let err = Command::new(program).args(&args[3..]).exec();
    eprintln!("nosys: cannot run {program}: {err}");
    std::process::exit(127);
}
