//! `kernel-guest LAYOUT RESULTS`: the test run inside a qemu guest booted on another kernel
//! (tests/tests/kernels.rs), with the guest's cgroups already set up as LAYOUT (`v2`, `hybrid`
//! or `v1`). It starts real NPU containers through the release binaries on a simulated NPU
//! host and writes one JSON object per check to RESULTS (the guest's second serial port):
//! `{"check": NAME, "ok": BOOL, "detail": TEXT}`, then `{"done": true}`.
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use npu_runtime::node::{cgroup::Layout, config::PATH_ENV};
use npu_tests::{
    bin,
    cgroups::{Place, unified_mount},
    guest::{Results, expect},
    host::FakeHost,
    probe::probe,
    runc::{RuncContainer, expect_only, open_verdict, privileged_devices, start_npu},
};

fn ctk(host: &FakeHost, args: &[&str]) -> (bool, String) {
    npu_tests::npu_ctk(host, args)
}

/// Runs the real runc (`runc.real` beside this link) from a fully sealed memfd. Debian's runc
/// 1.1.5 re-executes itself from a copy (a read-only bind mount or a memfd) unless it already
/// runs from a sealed memfd, and on the 5.10 guest that re-execution (execveat with
/// AT_EMPTY_PATH) fails with ENOENT; a sealed memfd is the form runc accepts as already cloned.
fn sealed_runc(args: Vec<std::ffi::OsString>) -> ! {
    let real = std::path::Path::new("/usr/sbin/runc.real");
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("runc launcher: {what}: {e}");
        std::process::exit(127)
    };
    let bytes = std::fs::read(real).unwrap_or_else(|e| fail("read runc.real", e));
    use nix::{fcntl::SealFlag, sys::memfd::MFdFlags};
    let fd =
        nix::sys::memfd::memfd_create("runc", MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC)
            .unwrap_or_else(|e| fail("memfd_create", e.into()));
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes)
        .unwrap_or_else(|e| fail("write the memfd", e));
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_ADD_SEALS(seals))
        .unwrap_or_else(|e| fail("seal", e.into()));
    let argv: Vec<std::ffi::CString> = args
        .iter()
        .map(|a| {
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).unwrap()
        })
        .collect();
    let env: Vec<std::ffi::CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            kv.push(b'=');
            kv.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            std::ffi::CString::new(kv).unwrap()
        })
        .collect();
    // Through /proc/self/fd rather than fexecve: 5.10 refuses execveat(AT_EMPTY_PATH) on the
    // memfd with ENOENT (runc's own clone fails the same way there).
    let path = std::ffi::CString::new(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .unwrap();
    let e = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    fail("execve", e.into())
}

fn main() {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "runc")
    {
        argv[0] = "runc".into();
        sealed_runc(argv);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layout, results] = &args[..] else {
        eprintln!("usage: kernel-guest v2|hybrid|v1 RESULTS");
        std::process::exit(2);
    };
    let mut r = Results::open(results);
    let place = Place::Host;

    r.run("layout", || {
        let found = Layout::detect().map_err(|e| e.to_string())?;
        let want = match layout.as_str() {
            "v2" => matches!(found, Layout::Unified { .. }),
            "hybrid" => matches!(found, Layout::Hybrid { .. }),
            _ => matches!(found, Layout::Legacy { .. }),
        };
        want.then(|| found.name().to_string())
            .ok_or_else(|| format!("{found:?} is not {layout}"))
    });

    let host = FakeHost::new(4);
    r.run("doctor", || {
        let (ok, out) = ctk(&host, &["doctor"]);
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("guard program") || l.contains("driver mounts"))
            .collect();
        let detail = lines.join("\n");
        if ok { Ok(detail) } else { Err(out) }
    });

    // Two containers serve every check below: container starts are what an emulated CPU
    // spends its time on.
    let started = (
        start_npu(place, &host, "1"),
        start_npu(place, &host, "0,2-3"),
    );
    r.run("start", || match &started {
        (Ok(_), Ok(_)) => Ok("NPU 1 | NPUs 0, 2, 3".into()),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    });
    let (Ok(a), Ok(b)) = &started else {
        drop(started);
        finish(r, host);
        return;
    };

    r.run("isolation matrix", || {
        expect("a", a.chip_verdicts(&host), expect_only(&[1], host.chips))?;
        expect(
            "b",
            b.chip_verdicts(&host),
            expect_only(&[0, 2, 3], host.chips),
        )?;
        for dev in ["davinci_manager", "devmm_svm", "hisi_hdc"] {
            expect(dev, open_verdict(a, &format!("/dev/{dev}")), "ENXIO")?;
        }
        Ok("each container only its NPUs; management nodes open".into())
    });
    r.run("read-only driver mounts", || {
        let c = a;
        let (ok, text) = c.sh("cat /usr/local/Ascend/driver/version.info");
        if !(ok && text.contains("Version=24.1.0")) {
            return Err(format!("driver file not visible: {text}"));
        }
        let (ok, text) = c.sh("touch /usr/local/Ascend/driver/lib64/new");
        if ok || !text.contains("Read-only file system") {
            return Err(format!("driver directory writable: {text}"));
        }
        let (_, info) = c.sh("cat /proc/self/mountinfo");
        let line = info
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == Some("/usr/local/Ascend/driver/lib64"))
            .ok_or_else(|| format!("lib64 not mounted:\n{info}"))?;
        let options = line.split(' ').nth(5).unwrap_or_default().to_string();
        for want in ["ro", "nosuid", "nodev"] {
            if !options.split(',').any(|o| o == want) {
                return Err(format!("lib64 mounted {options}, without {want}"));
            }
        }
        let log = std::fs::read_to_string(host.dir.path().join("runtime.log")).unwrap_or_default();
        let api = log
            .lines()
            .rev()
            .find_map(|l| l.split_whitespace().find(|w| w.starts_with("mount_api=")))
            .unwrap_or("mount_api=?")
            .to_string();
        Ok(format!("{options}; {api}"))
    });

    let guarded = layout != "v1";
    r.run_if(guarded, "policy show", || {
        let (ok, out) = ctk(&host, &["policy", "show"]);
        if !(ok && out.contains(&a.id) && out.contains(&b.id)) {
            return Err(out);
        }
        // What this kernel's guard variant cannot do, if anything (judged on the host side).
        Ok(out
            .lines()
            .filter(|l| l.starts_with("note:"))
            .collect::<Vec<_>>()
            .join("\n"))
    });
    r.run_if(guarded, "sub-cgroup of a container", || {
        let dir = unified_mount()
            .join(a.unified_path().trim_start_matches('/'))
            .join("npu-sub");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let chip = host.chip(1).display().to_string();
        let v = probe(place, std::slice::from_ref(&dir), &[format!("read:{chip}")]);
        let _ = std::fs::remove_dir(&dir);
        // Reported, not judged: the host side knows which variant should give which.
        Ok(v.first().map(|(_, _, r)| r.clone()).unwrap_or_default())
    });

    r.run("confinement", || {
        let c = RuncContainer::start_with_env(
            place,
            host.dir.path(),
            &bin("npu-container-runtime"),
            &host.config_path,
            |s| privileged_devices(&host, s),
        )?;
        expect(
            "privileged-like, no request",
            c.chip_verdicts(&host),
            expect_only(&[], host.chips),
        )?;
        Ok("a privileged-like container naming no NPU gets none".into())
    });

    r.run_if(guarded, "node guard", || {
        let name = "npu-guest-parent";
        let parent = unified_mount().join(name);
        std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
        let (ok, out) = ctk(
            &host,
            &["guard", "install", "--cgroup", &format!("/{name}")],
        );
        if !ok {
            return Err(out);
        }
        // Plain runc, around the runtime, every device allowed, under the guarded parent.
        let around = RuncContainer::start(place, host.dir.path(), Path::new("runc"), |s| {
            privileged_devices(&host, s);
            s["linux"]["cgroupsPath"] = format!("/{name}/around").into();
        });
        let verdicts = around.map(|c| c.chip_verdicts(&host));
        let (ok, out) = ctk(
            &host,
            &["guard", "uninstall", "--cgroup", &format!("/{name}")],
        );
        let _ = std::fs::remove_dir(&parent);
        expect(
            "runc around the runtime",
            verdicts?,
            expect_only(&[], host.chips),
        )?;
        if !ok {
            return Err(out);
        }
        Ok("runc around the runtime under the guarded parent gets no NPU".into())
    });

    // Denial events come from the guard, which pure v1 hosts do not run.
    r.run_if(guarded, "monitor", || {
        let mut monitor = Command::new(bin("npu-ctk"))
            .env(PATH_ENV, &host.config_path)
            .args(["monitor", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stderr = BufReader::new(monitor.stderr.take().unwrap());
        let mut line = String::new();
        let _ = stderr.read_line(&mut line);
        // Denied: NPU 0, three times.
        for _ in 0..3 {
            let _ = a.node_verdict(host.chip_major, 0);
        }
        std::thread::sleep(Duration::from_millis(1500));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(monitor.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while monitor.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = monitor.kill();
                return Err("monitor did not stop on Ctrl-C".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(&mut monitor.stdout.take().unwrap(), &mut out)
            .map_err(|e| e.to_string())?;
        let events: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &serde_json::Value| e["container"] == a.id.as_str())
            .collect();
        if events.len() != 3 || events.iter().any(|e| e["npu"] != 0) {
            return Err(format!("want three denials of NPU 0 for {}:\n{out}", a.id));
        }
        Ok(format!(
            "pid={} comm={}",
            events[0]["pid"], events[0]["comm"]
        ))
    });

    drop(started);
    finish(r, host);
}

/// Stops what is left and checks that nothing of it remains, then marks the run done.
fn finish(mut r: Results, host: FakeHost) {
    r.run("cleanup", || {
        expect("records", host.records(), Vec::<String>::new())?;
        let policy = ctk(&host, &["policy", "show", "--json"]).1;
        let entries: serde_json::Value =
            serde_json::from_str(&policy).map_err(|e| e.to_string())?;
        expect("policy entries", entries.as_array().map(Vec::len), Some(0))?;
        Ok("no record, no grant".into())
    });
    drop(host);
    r.done();
}
