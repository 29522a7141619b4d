//! runc's own integration suite (bats) as a judge of the shim: run under `script` (its specs
//! want a terminal), its TAP output parsed, and the runs through the shim compared with plain
//! runc's. The host's conformance suite (tests/tests/runc_conformance.rs) runs the installed
//! runc's suite; a Debian 13 node (tests/tests/node_runc_suite.rs) runs a current runc's
//! under systemd.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// Each test's outcome by name.
pub type Outcomes = BTreeMap<String, Outcome>;

/// The three ways the suite runs: plain runc (the baseline), the shim with no request, and the
/// shim adding an NPU request to every container (`npu-request-runc`).
pub const MODES: [&str; 3] = ["runc", "shim", "shim + NPU request"];

/// The runc source tree in a directory `cargo xtask setup` prepared (`DIR/src/runc-*`, with
/// `DIR/ready` once complete), if there is one.
pub fn source_tree(dir: &Path) -> Option<std::path::PathBuf> {
    if !dir.join("ready").exists() {
        return None;
    }
    std::fs::read_dir(dir.join("src"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("tests/integration").is_dir())
}

/// Parses bats' TAP output: `ok N name`, `ok N name # skip (why)`, `not ok N name`, with or
/// without bats' `in Nms` timing. A name seen before (suites have files with tests of the
/// same name) is kept apart as `name (2)`, `name (3)`...: the ways run the same files in the
/// same order, so the same test has the same key in each.
pub fn parse_tap(text: &str) -> Outcomes {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let (rest, failed) = match line.strip_prefix("not ok ") {
            Some(rest) => (rest, true),
            None => match line.strip_prefix("ok ") {
                Some(rest) => (rest, false),
                None => continue,
            },
        };
        let Some((_, name)) = rest.split_once(' ') else {
            continue;
        };
        let (name, outcome) = match name.split_once(" # skip") {
            Some((name, _)) => (name, Outcome::Skip),
            None if failed => (
                name.split_once(" # timeout").map_or(name, |(n, _)| n),
                Outcome::Fail,
            ),
            None => (name, Outcome::Pass),
        };
        let name = name.trim();
        let name = match name.rsplit_once(" in ") {
            Some((base, ms)) if ms.strip_suffix("ms").is_some_and(is_digits) => base,
            _ => name,
        };
        let mut key = name.to_string();
        for n in 2.. {
            if !out.contains_key(&key) {
                break;
            }
            key = format!("{name} ({n})");
        }
        out.insert(key, outcome);
    }
    out
}

/// The number of tests the TAP output's plan (`1..N`) announces.
pub fn planned(text: &str) -> Option<usize> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("1.."))
        .and_then(|n| n.trim().parse().ok())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The programs a TAP log says were not found (`NAME: command not found`).
pub fn missing_programs(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_suffix(": command not found"))
        .filter_map(|l| l.rsplit(": ").next())
        .map(String::from)
        .collect()
}

/// How many tests had `outcome`.
pub fn tally(outcomes: &Outcomes, outcome: Outcome) -> usize {
    outcomes.values().filter(|o| **o == outcome).count()
}

/// The tests that pass in `baseline` but not in `other`, with what they did there.
pub fn regressions(baseline: &Outcomes, other: &Outcomes) -> Vec<String> {
    baseline
        .iter()
        .filter(|(name, o)| **o == Outcome::Pass && other.get(*name) != Some(&Outcome::Pass))
        .map(|(name, _)| format!("{name} ({:?})", other.get(name)))
        .collect()
}

/// The tests that did not pass (failed or skipped): not judged, since the baseline cannot
/// compare them.
pub fn not_passing(outcomes: &Outcomes) -> Vec<&str> {
    outcomes
        .iter()
        .filter(|(_, o)| **o != Outcome::Pass)
        .map(|(name, _)| name.as_str())
        .collect()
}

/// A row of the runs' table: the label, then pass, fail and skip counts (the header without
/// `outcomes`).
pub fn table_row(label: &str, outcomes: Option<&Outcomes>) -> String {
    match outcomes {
        None => format!("{label:<40} {:>6} {:>6} {:>6}", "pass", "fail", "skip"),
        Some(o) => format!(
            "{label:<40} {:>6} {:>6} {:>6}",
            tally(o, Outcome::Pass),
            tally(o, Outcome::Fail),
            tally(o, Outcome::Skip)
        ),
    }
}

/// Runs `bats -t DIR` (given as `bats`, a command that runs `sh -c 'cd SRC && exec script -qec
/// "bats -t DIR" /dev/null'` or alike) with its output in `log`; returns each test's outcome.
/// stdin stays an open pipe until the end: `script` copies what it reads to the terminal, and
/// an end of file there reaches a test reading its terminal as ^D. A test that fails before
/// its teardown can leave its `recvtty` holding that terminal, so bats never ends: once every
/// planned test has reported, such leftovers are killed (by name: the suite starts them by
/// paths of its own).
pub fn run_bats(mut bats: Command, log: &Path, limit: Duration) -> Result<Outcomes, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = bats
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the suite: {e}"))?;
    let started = Instant::now();
    let mut done_at: Option<Instant> = None;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if planned(&text).is_some_and(|n| parse_tap(&text).len() >= n)
            && done_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(20)
        {
            kill_named("recvtty");
        }
        if started.elapsed() > limit {
            // Whole (script, bats, its tests and their runc), not left to overlap the next
            // run: script starts bats in a session of its own, so the tree, not a group.
            kill_tree(child.id());
            let _ = child.wait();
            kill_named("recvtty");
            return Err(format!(
                "runc's suite did not finish in {} minutes; see {}",
                limit.as_secs() / 60,
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // A run cut short (bats or script killed, a test ending the session) would shrink the
    // baseline unseen: every planned test must have reported.
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let outcomes = parse_tap(&text);
    match planned(&text) {
        Some(n) if outcomes.len() == n => Ok(outcomes),
        Some(n) => Err(format!(
            "runc's suite reported {} of its {n} tests; see {}",
            outcomes.len(),
            log.display()
        )),
        None => Err(format!(
            "runc's suite printed no plan; see {}",
            log.display()
        )),
    }
}

/// SIGKILLs `pid` and every process descended from it (parents read from /proc).
fn kill_tree(pid: u32) {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The fields after the command name (which may hold spaces): state, ppid, ...
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    for pid in tree {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// SIGKILLs every process whose command name is `name` (read from /proc: nodes need not have
/// procps).
pub fn kill_named(name: &str) {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_parsing() {
        let r = parse_tap(
            "1..4\nok 1 runc version\r\nnot ok 2 spec validator\nok 3 checkpoint # skip test \
             requires criu\n# comment\nok 4 runc run [tty ptsname] in 512ms\n",
        );
        assert_eq!(r["runc version"], Outcome::Pass);
        assert_eq!(r["spec validator"], Outcome::Fail);
        assert_eq!(r["checkpoint"], Outcome::Skip);
        assert_eq!(r["runc run [tty ptsname]"], Outcome::Pass);
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn tests_of_the_same_name_stay_apart() {
        let r = parse_tap(
            "1..3\nok 1 runc run\nnot ok 2 runc run\nnot ok 3 x in 5ms # timeout after 3s\n",
        );
        assert_eq!(r["runc run"], Outcome::Pass);
        assert_eq!(r["runc run (2)"], Outcome::Fail);
        assert_eq!(r["x"], Outcome::Fail);
        assert_eq!(planned("1..3\nok 1 a\n"), Some(3));
    }

    #[test]
    fn skips_with_timing_keep_their_name() {
        let r = parse_tap("ok 43 checkpoint/restore and exec in 77ms # skip test requires criu\n");
        assert_eq!(r["checkpoint/restore and exec"], Outcome::Skip);
    }

    #[test]
    fn missing_programs_are_named() {
        let log =
            "# helpers.bash: line 134: gawk: command not found\nok 1 x\n# sh: 1: foo: not found\n";
        assert_eq!(
            missing_programs(log).into_iter().collect::<Vec<_>>(),
            ["gawk"]
        );
    }

    #[test]
    fn only_passes_that_stop_passing_are_regressions() {
        let base = parse_tap("ok 1 a\nnot ok 2 b\nok 3 c # skip x\nok 4 d\n");
        let other = parse_tap("ok 1 a\nok 2 b\nnot ok 3 c\nok 4 d # skip y\n");
        assert_eq!(regressions(&base, &other), ["d (Some(Skip))"]);
        assert_eq!(regressions(&base, &base), Vec::<String>::new());
    }
}
