//! Test probe: joins cgroups, then tries device operations and prints one verdict per line.
//!
//! ```text
//! devprobe [--join CGROUP_DIR]... OP...
//!   read:PATH  write:PATH  mknod:PATH:MAJOR:MINOR (char node; removed again on success)
//!   loop:PATH:N  (N open+close, for benchmarks: prints nanoseconds per operation)
//!   exec PROGRAM ARGS...  (replaces the probe, e.g. to leave a process in the cgroups)
//! ```
//! Output: `OP PATH RESULT`, RESULT being `OK` or the errno name (`ENXIO`, `EPERM`, ...).
use std::{os::unix::process::CommandExt, process::Command};

use nix::{
    errno::Errno,
    fcntl::{OFlag, open},
    sys::stat::{Mode, SFlag, makedev, mknod},
};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    while args.peek().map(String::as_str) == Some("--join") {
        args.next();
        let dir = args.next().expect("--join needs a cgroup directory");
        // "0" moves the writing process.
        std::fs::write(format!("{dir}/cgroup.procs"), "0")
            .unwrap_or_else(|e| panic!("cannot join {dir}: {e}"));
    }
    while let Some(op) = args.next() {
        if op == "exec" {
            let program = args.next().expect("exec needs a program");
            let err = Command::new(program).args(args).exec();
            panic!("exec failed: {err}");
        }
        let (kind, rest) = op.split_once(':').expect("OP is KIND:PATH");
        let (path, result) = match kind {
            "read" => (rest.to_string(), open_result(rest, OFlag::O_RDONLY)),
            "write" => (rest.to_string(), open_result(rest, OFlag::O_WRONLY)),
            "mknod" => {
                let mut parts = rest.rsplitn(3, ':');
                let minor: u64 = parts.next().and_then(|m| m.parse().ok()).expect("minor");
                let major: u64 = parts.next().and_then(|m| m.parse().ok()).expect("major");
                let path = parts.next().expect("path").to_string();
                let r = mknod(
                    path.as_str(),
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o600),
                    makedev(major, minor),
                );
                if r.is_ok() {
                    let _ = std::fs::remove_file(&path);
                }
                (path, r.map(drop))
            }
            "loop" => {
                let (path, n) = rest.rsplit_once(':').expect("loop:PATH:N");
                let n: u32 = n.parse().expect("iterations");
                let started = std::time::Instant::now();
                for _ in 0..n {
                    // The verdict is the same every time; only its cost matters here.
                    let _ = open_result(path, OFlag::O_RDONLY);
                }
                let ns = started.elapsed().as_nanos() / u128::from(n.max(1));
                println!("loop {path} {ns}");
                continue;
            }
            other => panic!("unknown op {other}"),
        };
        let verdict = match result {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("{e:?}"),
        };
        println!("{kind} {path} {verdict}");
    }
}

fn open_result(path: &str, flags: OFlag) -> Result<(), Errno> {
    open(
        path,
        flags | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map(drop)
}
