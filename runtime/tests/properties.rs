//! Property tests for the parsers that see untrusted input: the request variables, runc's
//! command line, mount lists and cgroup device rules. 4000 cases each (see `CASES`).
use std::path::PathBuf;

use npu_runtime::{
    node::rules::Rule,
    start::args::RuncArgs,
    start::mounts::parse_list,
    start::request::{MAX_INDEX, Request, Selection},
};
use proptest::prelude::*;

fn ascend() -> npu_runtime::node::profile::Profile {
    npu_runtime::node::config::Config::default()
        .profiles()
        .remove(0)
}

const CASES: u32 = 4000;

fn env(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `0-3,5`-style text for a set of indices, with ranges where runs allow.
fn list_text(set: &std::collections::BTreeSet<u32>) -> String {
    let v: Vec<u32> = set.iter().copied().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any text in any request variable: no panic; an accepted device list is sorted,
    /// de-duplicated, non-empty and in range; accepted mount-list names are plain names.
    #[test]
    fn request_never_panics(devices in "\\PC{0,24}", options in "\\PC{0,16}", mounts in "\\PC{0,16}", link in "\\PC{0,6}") {
        let e = env(&[
            ("ASCEND_VISIBLE_DEVICES", &devices),
            ("ASCEND_RUNTIME_OPTIONS", &options),
            ("ASCEND_RUNTIME_MOUNTS", &mounts),
            ("ASCEND_ALLOW_LINK", &link),
        ]);
        if let Ok(Some(r)) = Request::from_env(&e, &ascend()) {
            if let Selection::Indices(v) = &r.devices {
                prop_assert!(!v.is_empty());
                prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(v.iter().all(|i| *i <= MAX_INDEX));
            }
            for name in &r.mount_lists {
                prop_assert!(!name.contains('/') && name != ".." && name != "." && !name.is_empty());
            }
        }
    }

    /// Request-shaped text built from digits, commas, dashes and names: no panic either.
    #[test]
    fn request_like_text_never_panics(devices in "[0-9,\\- a-zA-Z]{0,30}") {
        let _ = Request::from_env(&env(&[("ASCEND_VISIBLE_DEVICES", &devices)]), &ascend());
    }

    /// Any set of indices, written with ranges and shuffled duplicates, parses back to itself.
    #[test]
    fn device_lists_round_trip(set in prop::collection::btree_set(0u32..200, 1..20), dup in 0usize..3) {
        let mut text = list_text(&set);
        for i in set.iter().take(dup) {
            text.push_str(&format!(",{i}"));
        }
        let r = Request::from_env(&env(&[("ASCEND_VISIBLE_DEVICES", &text)]), &ascend()).unwrap().unwrap();
        prop_assert_eq!(r.devices, Selection::Indices(set.into_iter().collect()));
    }

    /// Any argv: no panic; the subcommand, when found, is the argument at its index.
    #[test]
    fn argv_never_panics(args in prop::collection::vec("\\PC{0,12}|--?[a-z-]{1,12}(=\\PC{0,8})?", 0..12)) {
        let a = RuncArgs::parse(&args);
        if let (Some(cmd), Some(i)) = (&a.command, a.command_index) {
            prop_assert_eq!(&args[i], cmd);
        }
    }

    /// Engine-shaped create lines: the bundle and the container id are found wherever the
    /// flags go and whichever spelling they use.
    #[test]
    fn create_lines_are_understood(
        root in "/[a-z]{1,8}",
        bundle in "/[a-z0-9/]{1,20}",
        id in "[a-z0-9]{1,16}",
        equals in any::<bool>(),
        short in any::<bool>(),
        pid_first in any::<bool>(),
    ) {
        let mut args = vec!["--root".to_string(), root, "--log-format".into(), "json".into(), "create".into()];
        let bundle_args = match (short, equals) {
            (true, true) => vec![format!("-b={bundle}")],
            (true, false) => vec!["-b".into(), bundle.clone()],
            (false, true) => vec![format!("--bundle={bundle}")],
            (false, false) => vec!["--bundle".into(), bundle.clone()],
        };
        let pid = vec!["--pid-file".to_string(), "/run/x.pid".into()];
        if pid_first {
            args.extend(pid);
            args.extend(bundle_args);
        } else {
            args.extend(bundle_args);
            args.extend(pid);
        }
        args.push(id.clone());
        let a = RuncArgs::parse(&args);
        prop_assert_eq!(a.command.as_deref(), Some("create"));
        prop_assert_eq!(a.bundle, Some(PathBuf::from(bundle)));
        prop_assert_eq!(a.container_id, Some(id));
    }

    /// Any mount-list text: no panic; every accepted entry is absolute, without `.`/`..`,
    /// not `/`, and listed once.
    #[test]
    fn mount_lists_never_panic(text in "(\\PC{0,30}\\n){0,8}") {
        if let Ok(paths) = parse_list(&text, std::path::Path::new("/x.list")) {
            for p in &paths {
                let s = p.to_str().unwrap();
                prop_assert!(s.starts_with('/') && s != "/");
                prop_assert!(!s.split('/').any(|c| c == "." || c == ".."));
            }
            let mut sorted = paths.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), paths.len());
        }
    }

    /// cgroup v1 rules print back to what they were parsed from.
    #[test]
    fn device_rules_round_trip(t in "[abc]", major in prop::option::of(0u32..5000), minor in prop::option::of(0u32..1_048_576), acc in prop::sample::select(vec!["r", "w", "m", "rw", "rm", "wm", "rwm"])) {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let line = format!("{t} {}:{} {acc}", num(major), num(minor));
        let rule = Rule::parse(&line).unwrap();
        prop_assert_eq!(rule.to_string(), line);
    }
}
