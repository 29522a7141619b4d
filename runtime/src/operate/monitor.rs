//! `npu-ctk monitor`: one line per denied access to a guarded device, as it happens, read from
//! the guard's ring buffer and resolved to container id and NPU. Follows every pinned program
//! version, including ones pinned after it started (a program upgrade), until Ctrl-C.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    os::unix::fs::MetadataExt,
    time::Duration,
};

use npu_guard_common::DenialEvent;
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    enforce::guard,
    node::cgroup::{Layout, Mount, container_of, path_of_id},
    node::config::Config,
    node::devices::HostDevices,
    node::rules::{Access, DevType},
    node::state,
    operate::error::Error,
};

/// A denial, resolved for people.
#[derive(Debug, Serialize)]
pub struct Denial {
    /// Container id from the runtime's records; `None` when no container owns the task.
    pub container: Option<String>,
    pub cgroup_id: u64,
    /// Chip index (within its profile) when the device is a chip.
    pub npu: Option<u32>,
    /// The chip's profile (`ascend`, `kunlun`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// What the profile calls a chip, for the text line (`npu=1`, `xpu=1`).
    #[serde(skip)]
    pub word: String,
    /// Device name under dev_root, when the host has the node.
    pub device: Option<String>,
    pub dev_type: char,
    pub major: u32,
    pub minor: u32,
    /// Requested access, `rwm` letters.
    pub access: String,
    pub pid: u32,
    pub comm: String,
    /// Whether the container was started through the runtime (registered by our hook); a
    /// denial of a task no container owns comes from the node guard.
    pub through_runtime: bool,
    /// For those: the task's cgroup, and the engine its path names.
    pub cgroup: Option<String>,
    pub engine: Option<String>,
    /// The container's request variables that did not count (`env_requests`), and why: the
    /// usual reason a pod is denied the NPU it set in its environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let container = self.container.as_deref().unwrap_or("(none)");
        write!(f, "DENIED container={container} ")?;
        if !self.through_runtime {
            let engine = self.engine.as_deref().unwrap_or("unknown engine");
            let cgroup = self.cgroup.as_deref().unwrap_or("?");
            write!(
                f,
                "({engine}, not started through npu-container-runtime, cgroup {cgroup}) "
            )?;
        }
        if let Some(npu) = self.npu {
            write!(f, "{}={npu} ", self.word)?;
        }
        let device = self.device.as_deref().unwrap_or("?");
        write!(
            f,
            "device={device} ({} {}:{}) access={} pid={} comm={}",
            self.dev_type, self.major, self.minor, self.access, self.pid, self.comm
        )?;
        if let Some(refused) = &self.refused {
            write!(f, " refused={refused}")?;
        }
        Ok(())
    }
}

/// Turns raw events into [`Denial`]s, reloading records for cgroups it does not know yet.
struct Resolver<'a> {
    config: &'a Config,
    host: HostDevices,
    /// cgroup id -> container id and its refused request.
    containers: BTreeMap<u64, (String, Option<String>)>,
    /// The unified tree, where unowned tasks' cgroups are looked up (by id), and what was found.
    unified: Option<Mount>,
    unowned: BTreeMap<u64, Option<String>>,
}

impl Resolver<'_> {
    fn reload(&mut self) {
        self.containers = state::list(&self.config.state_dir)
            .into_iter()
            .flatten()
            .filter_map(|r| r.enforced.cgroup_id.map(|id| (id, (r.id, r.refused))))
            .collect();
    }

    fn resolve(&mut self, e: &DenialEvent) -> Denial {
        if e.owned != 0 && !self.containers.contains_key(&e.cgroup_id) {
            self.reload();
        }
        let dev_type = DevType::from_bpf(e.dev_type).unwrap_or(DevType::Char);
        let is = |n: &&crate::node::devices::DeviceNode| {
            n.dev_type == dev_type && n.major == e.major && n.minor == e.minor
        };
        let chip = self.host.families.iter().find_map(|f| {
            f.chips.iter().find(|(_, n)| is(n)).map(|(i, _)| {
                (
                    *i,
                    f.profile.name.clone(),
                    f.profile.device_word.to_lowercase(),
                )
            })
        });
        let device = self
            .host
            .guarded_nodes
            .iter()
            .find(is)
            .map(|n| n.name.clone());
        let comm_len = e.comm.iter().position(|b| *b == 0).unwrap_or(e.comm.len());
        let through_runtime = e.owned != 0;
        let (cgroup, named) = if through_runtime {
            (None, None)
        } else {
            let unified = &self.unified;
            let path = self
                .unowned
                .entry(e.cgroup_id)
                .or_insert_with(|| unified.as_ref().and_then(|m| path_of_id(m, e.cgroup_id)))
                .clone();
            let named = path.as_deref().and_then(container_of);
            (path, named)
        };
        let ours = self
            .containers
            .get(&e.cgroup_id)
            .filter(|_| through_runtime)
            .cloned();
        Denial {
            through_runtime,
            engine: named.as_ref().map(|n| n.engine.to_string()),
            cgroup,
            refused: ours.as_ref().and_then(|(_, r)| r.clone()),
            container: match named {
                Some(n) => Some(n.id),
                None => ours.map(|(id, _)| id),
            },
            cgroup_id: e.cgroup_id,
            npu: chip.as_ref().map(|(i, _, _)| *i),
            word: chip
                .as_ref()
                .map_or_else(String::new, |(_, _, w)| w.clone()),
            profile: chip.map(|(_, p, _)| p),
            device,
            dev_type: dev_type.letter(),
            major: e.major,
            minor: e.minor,
            access: Access::from_bits(e.access).to_string(),
            pid: e.pid,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
        }
    }
}

/// What the followers hand to the printing loop.
enum Message {
    Denial(DenialEvent),
    /// One of the guard's own log lines (`--verbose`), already formatted.
    Log(serde_json::Value),
}

/// Hands one program version's aya-log records to the printing loop, once `live` (what an
/// earlier reader left in the program's log ring is skipped).
struct GuardLog {
    version: String,
    live: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::UnboundedSender<Message>,
}

impl log::Log for GuardLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.live.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = self.tx.send(Message::Log(serde_json::json!({
                "log": record.args().to_string(),
                "level": record.level().to_string().to_lowercase(),
                "version": self.version,
            })));
        }
    }

    fn flush(&self) {}
}

/// Follows one program version's aya-log lines until the monitor stops.
async fn follow_log(mut logger: AsyncFd<aya_log::EbpfLogger<GuardLog>>) {
    loop {
        let Ok(mut ready) = logger.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// Starts following `version`'s log lines: its program's aya-log ring, found by program id.
fn start_log(
    config: &Config,
    version: &str,
    tx: &mpsc::UnboundedSender<Message>,
) -> Result<u32, String> {
    let id = guard::Guard::open(&config.bpf_dir, version)
        .map_err(|e| e.to_string())?
        .program_id();
    let live = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = GuardLog {
        version: version.to_string(),
        live: live.clone(),
        tx: tx.clone(),
    };
    let mut logger =
        aya_log::EbpfLogger::init_from_id_with_logger(id, sink).map_err(|e| e.to_string())?;
    logger.flush();
    live.store(true, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the logger owns its ring's map fd and keeps it open, unchanged, for as long as
    // it lives, and the AsyncFd owns the logger.
    let fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1.to_string())?;
    tokio::spawn(follow_log(fd));
    Ok(id)
}

/// Reads the ring buffer until the receiver goes away.
async fn follow(
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    tx: mpsc::UnboundedSender<Message>,
) {
    loop {
        let Ok(mut ready) = ring.readable_mut().await else {
            return;
        };
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<DenialEvent>() {
                // SAFETY: the program writes whole `DenialEvent`s (a #[repr(C)] plain-data
                // type) into the ring; the item is at least that long, and read_unaligned
                // makes no alignment assumption.
                let event =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DenialEvent>()) };
                if tx.send(Message::Denial(event)).is_err() {
                    return;
                }
            }
        }
        ready.clear_ready();
    }
}

/// Prints denials to `out` (text or JSON lines) until Ctrl-C / SIGTERM; with `verbose`, also
/// the guard programs' own log lines.
pub fn run(config: &Config, json: bool, verbose: bool, out: &mut impl Write) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::error::Error::Stdio {
            what: "start the event loop",
            source,
        })?;
    runtime.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut followed = BTreeSet::new();
        let mut logging: BTreeSet<String> = BTreeSet::new();
        let mut resolver = Resolver {
            config,
            host: HostDevices::discover(config)?,
            containers: BTreeMap::new(),
            unified: Layout::detect().ok().and_then(|l| l.unified().cloned()),
            unowned: BTreeMap::new(),
        };
        resolver.reload();
        let mut rescan = tokio::time::interval(Duration::from_secs(1));
        // Both streams live across the loop: a signal that comes while an event is being
        // handled is kept for the next turn (a `ctrl_c()` made anew each turn missed it).
        let watch = |kind, what| {
            tokio::signal::unix::signal(kind)
                .map_err(|source| crate::error::Error::Stdio { what, source })
        };
        let mut int = watch(tokio::signal::unix::SignalKind::interrupt(), "watch for SIGINT")?;
        let mut term = watch(tokio::signal::unix::SignalKind::terminate(), "watch for SIGTERM")?;
        let mut announced = false;
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = rescan.tick() => {
                    // The ring is followed once per pin: maps pinned afresh (after their
                    // pins were deleted) are a new inode, and the old ring stays followed.
                    let pin = guard::map_pin(&config.bpf_dir, npu_guard_common::MAP_DENIALS);
                    if let Ok(inode) = std::fs::metadata(&pin).map(|m| m.ino())
                        && !followed.contains(&inode)
                    {
                        let mut ring = guard::open_denials(&config.bpf_dir)?;
                        // The ring outlives its readers: what an earlier reader left is history,
                        // not what happens now.
                        if !announced {
                            while ring.next().is_some() {}
                        }
                        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as
                        // long as it lives, and the AsyncFd owns the RingBuf.
                        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                            .map_err(|e| crate::error::Error::Stdio {
                                what: "watch the denial ring buffer",
                                source: e.into_parts().1,
                            })?;
                        tokio::spawn(follow(fd, tx.clone()));
                        followed.insert(inode);
                    }
                    if verbose {
                        for version in guard::versions(&config.bpf_dir).unwrap_or_default() {
                            if !logging.contains(&version) {
                                match start_log(config, &version, &tx) {
                                    Ok(_) => {
                                        logging.insert(version);
                                    }
                                    Err(e) => eprintln!(
                                        "npu-ctk monitor: no log lines of program version {version}: {e}"
                                    ),
                                }
                            }
                        }
                    }
                    if !announced {
                        eprintln!(
                            "npu-ctk monitor: following {} program version(s) under {} (their \
                             shared denial ring buffer); Ctrl-C to stop",
                            guard::versions(&config.bpf_dir).unwrap_or_default().len(),
                            config.bpf_dir.display()
                        );
                        announced = true;
                    }
                }
                Some(message) = rx.recv() => {
                    let line = match message {
                        Message::Denial(event) => {
                            let denial = resolver.resolve(&event);
                            if json {
                                serde_json::to_string(&denial).expect("serializable")
                            } else {
                                denial.to_string()
                            }
                        }
                        Message::Log(log) if json => log.to_string(),
                        Message::Log(log) => format!(
                            "LOG {} guard {}: {}",
                            log["level"].as_str().unwrap_or_default(),
                            log["version"].as_str().unwrap_or_default(),
                            log["log"].as_str().unwrap_or_default()
                        ),
                    };
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        // The reader went away (a closed pipe): stop quietly.
                        break;
                    }
                }
            }
        }
        Ok(())
    })
}
