//! `nosys SYSCALL[,SYSCALL...] -- PROGRAM [ARGS...]`: runs PROGRAM with the named syscalls
//! failing with ENOSYS, as on a kernel that predates them. The seccomp filter is inherited by
//! every child, so a runtime started this way runs our hook on the same "old kernel". Used to
//! prove the code paths for kernels older than this machine's (4.19, 3.10).
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

/// A classic BPF filter: on x86_64, each listed syscall returns ENOSYS; everything else runs.
fn filter(numbers: &[libc::c_long]) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let allow = stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW);
    let n = numbers.len() as u8;
    // seccomp_data: nr at offset 0, arch at offset 4.
    let mut prog = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        // Another architecture: leave it alone (jump over the checks to "allow").
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, n + 1),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
    ];
    for (i, nr) in numbers.iter().enumerate() {
        // Match: jump to the ENOSYS return after the remaining checks and "allow".
        let to_errno = (numbers.len() - i) as u8;
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr as u32, to_errno, 0));
    }
    prog.push(allow);
    prog.push(stmt(
        BPF_RET | BPF_K,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ));
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
    for name in list.split(',').filter(|n| !n.is_empty()) {
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
    let mut prog = filter(&numbers);
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
