//! cgroup v1 `devices` controller: a model of its rules and the writes that confine a
//! container to its grants.
//!
//! Kernel semantics (security/device_cgroup.c) that shape the plan:
//! - a cgroup is either allow-all (`devices.list` shows `a *:* rwm`, exceptions are denials)
//!   or deny-all (the list shows the allowed exceptions);
//! - in deny-all mode a write to `devices.deny` only removes an exception with the *same*
//!   type/major/minor, so a wildcard like `c *:* rwm` cannot be narrowed: it is removed and
//!   re-expressed without the guarded classes;
//! - in allow-all mode a write to `devices.allow` only removes an equal denial, so holes cannot
//!   be punched in a wildcard denial: every other node of a guarded class is denied one by one.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::node::{
    devices::DeviceNode,
    rules::{Access, DevType, DeviceClass, Grant, Rule, RuleType},
};

#[derive(Debug, thiserror::Error)]
pub enum V1Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {rule:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        rule: String,
        source: std::io::Error,
    },
    #[error("unexpected line {0:?} in devices.list")]
    Malformed(String),
    #[error(
        "after writing the rules, {path} still allows {node} with {access:?} where the grant is {granted:?}"
    )]
    Verify {
        path: PathBuf,
        node: String,
        access: Access,
        granted: Access,
    },
}

/// What `devices.list` says about a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListState {
    /// Everything allowed except (invisible) denials.
    AllowAll,
    /// Nothing allowed except these exceptions.
    DenyAll(Vec<Rule>),
}

impl ListState {
    pub fn parse(text: &str) -> Result<Self, V1Error> {
        let rules = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Rule::parse(l).map_err(|_| V1Error::Malformed(l.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        // The kernel prints allow-all mode as the single line `a *:* rwm`.
        if rules.iter().any(|r| r.rule_type == RuleType::All) {
            return Ok(Self::AllowAll);
        }
        Ok(Self::DenyAll(rules))
    }

    /// The most a deny-all cgroup gives one node: the union of matching exceptions. (The
    /// kernel wants one exception to cover a whole request, so real verdicts are never wider.)
    /// `None` for allow-all.
    pub fn allowed(&self, dev_type: DevType, major: u32, minor: u32) -> Option<Access> {
        match self {
            Self::AllowAll => None,
            Self::DenyAll(rules) => Some(
                rules
                    .iter()
                    .filter(|r| r.matches(dev_type, major, minor))
                    .fold(Access::NONE, |acc, r| acc.union(r.access)),
            ),
        }
    }
}

/// The writes that confine a cgroup, in the order they must be applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Re-expressions of removed wildcards, outside the guarded classes (applied first, so
    /// unrelated devices never flicker).
    pub allow_first: Vec<Rule>,
    pub deny: Vec<Rule>,
    /// The grants themselves (deny-all mode).
    pub allow: Vec<Rule>,
}

/// Computes the writes for a cgroup in `state` so that, for every guarded class, exactly the
/// `grants` are allowed. `guarded_nodes` are the host nodes of guarded classes; `known` gives
/// the classes a removed wildcard rule is re-expressed for (those with a driver or a host
/// node: a class with neither has nothing to open). It is called only if a wildcard must go
/// (runc's defaults grant mknod only and stay), so `/proc/devices` is read only then.
pub fn plan<E>(
    state: &ListState,
    classes: &BTreeSet<DeviceClass>,
    guarded_nodes: &[DeviceNode],
    grants: &[Grant],
    known: impl FnOnce() -> Result<BTreeSet<DeviceClass>, E>,
) -> Result<Plan, E> {
    let mut known = Some(known);
    let mut known_classes = BTreeSet::new();
    let mut plan = Plan::default();
    match state {
        ListState::AllowAll => {
            for node in guarded_nodes {
                let granted = granted_access(grants, node.dev_type, node.major, node.minor);
                let deny = Access::ALL.minus(granted);
                if !deny.is_empty() {
                    plan.deny
                        .push(Rule::exact(node.dev_type, node.major, node.minor, deny));
                }
            }
        }
        ListState::DenyAll(rules) => {
            for rule in rules {
                if !classes.iter().any(|c| rule.touches(*c)) {
                    continue;
                }
                // A rule granting mknod only is left alone, wildcards included: a node made
                // with it cannot be opened without r or w, which only the grants give.
                // (Re-expressing runc's default `c *:* m` and `b *:* m` per known major took
                // about 60 writes per container.)
                if Access::MKNOD.contains(rule.access) {
                    continue;
                }
                if let Some(minor) = rule.minor
                    && let Some(major) = rule.major
                    && let RuleType::Dev(t) = rule.rule_type
                    && granted_access(grants, t, major, minor).contains(rule.access)
                {
                    // Already within the grant: keep it.
                    continue;
                }
                plan.deny.push(Rule {
                    access: Access::ALL,
                    ..*rule
                });
                if rule.major.is_none() {
                    if let Some(known) = known.take() {
                        known_classes = known()?;
                    }
                    // Re-express the wildcard for every known non-guarded class.
                    for class in &known_classes {
                        if rule.rule_type.covers(class.dev_type) && !classes.contains(class) {
                            plan.allow_first.push(Rule {
                                rule_type: RuleType::Dev(class.dev_type),
                                major: Some(class.major),
                                ..*rule
                            });
                        }
                    }
                }
            }
            // Writing an allow merges with an equal exception, so re-adding is harmless.
            plan.allow.extend(
                grants
                    .iter()
                    .map(|g| Rule::exact(g.dev_type, g.major, g.minor, g.access)),
            );
        }
    }
    Ok(plan)
}

fn granted_access(grants: &[Grant], dev_type: DevType, major: u32, minor: u32) -> Access {
    grants
        .iter()
        .filter(|g| g.dev_type == dev_type && g.major == major && g.minor == minor)
        .fold(Access::NONE, |acc, g| acc.union(g.access))
}

/// Applies `plan` to the devices cgroup `dir`, then re-reads `devices.list` and checks that in
/// deny-all mode no guarded node can be read or written beyond its grant.
pub fn apply(
    dir: &Path,
    plan: &Plan,
    guarded_nodes: &[DeviceNode],
    grants: &[Grant],
) -> Result<(), V1Error> {
    // One open per file: the controller takes one rule per write() call.
    let mut files: [(&str, Option<std::fs::File>); 2] =
        [("devices.allow", None), ("devices.deny", None)];
    let mut write = |which: usize, rule: &Rule| {
        let (name, file) = &mut files[which];
        let path = dir.join(*name);
        let text = rule.to_string();
        let error = |source| V1Error::Write {
            path: path.clone(),
            rule: text.clone(),
            source,
        };
        let file = match file {
            Some(f) => f,
            None => file.insert(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(error)?,
            ),
        };
        std::io::Write::write_all(file, text.as_bytes()).map_err(error)
    };
    const ALLOW: usize = 0;
    const DENY: usize = 1;
    for rule in &plan.allow_first {
        write(ALLOW, rule)?;
    }
    for rule in &plan.deny {
        write(DENY, rule)?;
    }
    for rule in &plan.allow {
        write(ALLOW, rule)?;
    }
    drop(files);
    let state = read_list(dir)?;
    for node in guarded_nodes {
        let granted = granted_access(grants, node.dev_type, node.major, node.minor);
        // mknod alone opens nothing (see `plan`): only r and w beyond the grant count.
        if let Some(access) = state.allowed(node.dev_type, node.major, node.minor)
            && !granted.union(Access::MKNOD).contains(access)
        {
            return Err(V1Error::Verify {
                path: dir.join("devices.list"),
                node: node.path.display().to_string(),
                access,
                granted,
            });
        }
    }
    Ok(())
}

pub fn read_list(dir: &Path) -> Result<ListState, V1Error> {
    let path = dir.join("devices.list");
    let text = crate::node::pseudo::read_to_string(&path)
        .map_err(|source| V1Error::Read { path, source })?;
    ListState::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(major: u32, minor: u32) -> DeviceNode {
        DeviceNode {
            name: format!("n{major}_{minor}"),
            path: format!("/dev/n{major}_{minor}").into(),
            dev_type: DevType::Char,
            major,
            minor,
            mode: 0o660,
            uid: 0,
            gid: 0,
        }
    }

    fn class(major: u32) -> DeviceClass {
        DeviceClass {
            dev_type: DevType::Char,
            major,
        }
    }

    fn grant(major: u32, minor: u32) -> Grant {
        Grant {
            dev_type: DevType::Char,
            major,
            minor,
            access: Access::ALL,
        }
    }

    fn show(r: &[Rule]) -> Vec<String> {
        r.iter().map(Rule::to_string).collect()
    }

    /// Host: NPUs 240:0..=2, manager 241:0; container granted NPU 1 + manager.
    fn fixture() -> (BTreeSet<DeviceClass>, Vec<DeviceNode>, Vec<Grant>) {
        let classes = [class(240), class(241)].into();
        let nodes = vec![node(240, 0), node(240, 1), node(240, 2), node(241, 0)];
        let grants = vec![grant(240, 1), grant(241, 0)];
        (classes, nodes, grants)
    }

    #[test]
    fn list_modes() {
        assert_eq!(
            ListState::parse("a *:* rwm\n").unwrap(),
            ListState::AllowAll
        );
        assert_eq!(ListState::parse("").unwrap(), ListState::DenyAll(vec![]));
        let s = ListState::parse("c 1:3 rwm\nc 240:* rw\n").unwrap();
        assert_eq!(
            s.allowed(DevType::Char, 240, 7),
            Some(Access::READ.union(Access::WRITE))
        );
        assert_eq!(s.allowed(DevType::Block, 240, 7), Some(Access::NONE));
    }

    #[test]
    fn allow_all_denies_every_other_guarded_node() {
        let (classes, nodes, grants) = fixture();
        let p = plan(&ListState::AllowAll, &classes, &nodes, &grants, || {
            Ok::<_, ()>(BTreeSet::new())
        })
        .unwrap();
        assert!(p.allow_first.is_empty() && p.allow.is_empty());
        assert_eq!(show(&p.deny), ["c 240:0 rwm", "c 240:2 rwm"]);
    }

    #[test]
    fn deny_all_adds_grants_and_removes_exact_others() {
        let (classes, nodes, grants) = fixture();
        let state = ListState::parse("c 1:3 rwm\nc 240:0 rwm\nc 240:1 rwm\n").unwrap();
        let p = plan(&state, &classes, &nodes, &grants, || {
            Ok::<_, ()>(BTreeSet::new())
        })
        .unwrap();
        // 240:1 is within its grant and kept; 240:0 goes.
        assert_eq!(show(&p.deny), ["c 240:0 rwm"]);
        assert_eq!(show(&p.allow), ["c 240:1 rwm", "c 241:0 rwm"]);
    }

    #[test]
    fn deny_all_replaces_guarded_major_wildcard() {
        let (classes, nodes, grants) = fixture();
        let state = ListState::parse("c 240:* rwm\nc 1:3 rwm\n").unwrap();
        let p = plan(&state, &classes, &nodes, &grants, || {
            Ok::<_, ()>(BTreeSet::new())
        })
        .unwrap();
        assert_eq!(show(&p.deny), ["c 240:* rwm"]);
        assert_eq!(show(&p.allow), ["c 240:1 rwm", "c 241:0 rwm"]);
        assert!(p.allow_first.is_empty());
    }

    #[test]
    fn deny_all_re_expresses_wildcard_major_without_guarded_classes() {
        let (classes, nodes, grants) = fixture();
        let registered: BTreeSet<DeviceClass> = [class(1), class(240), class(241), class(10)]
            .into_iter()
            .collect();
        let state = ListState::parse("c *:* rwm\nb *:* rwm\n").unwrap();
        let p = plan(&state, &classes, &nodes, &grants, || {
            Ok::<_, ()>(registered.clone())
        })
        .unwrap();
        assert_eq!(show(&p.allow_first), ["c 1:* rwm", "c 10:* rwm"]);
        // Block wildcards cannot reach the (char) guarded classes and are left alone.
        assert_eq!(show(&p.deny), ["c *:* rwm"]);
        assert_eq!(show(&p.allow), ["c 240:1 rwm", "c 241:0 rwm"]);
    }

    #[test]
    fn mknod_only_rules_are_left_alone() {
        // runc's defaults: mknod of anything, plus a few devices.
        let (classes, nodes, grants) = fixture();
        let registered: BTreeSet<DeviceClass> =
            [class(1), class(240), class(241)].into_iter().collect();
        let state = ListState::parse("c *:* m\nb *:* m\nc 1:3 rwm\nc 240:* m\n").unwrap();
        let p = plan(&state, &classes, &nodes, &grants, || {
            Ok::<_, ()>(registered.clone())
        })
        .unwrap();
        assert!(p.allow_first.is_empty() && p.deny.is_empty(), "{p:?}");
        assert_eq!(show(&p.allow), ["c 240:1 rwm", "c 241:0 rwm"]);
        // What the kernel then allows: the grants, and mknod (only) of other guarded nodes.
        let ListState::DenyAll(mut list) = state else {
            unreachable!()
        };
        list.extend(p.allow.iter().copied());
        let after = ListState::DenyAll(list);
        for n in &nodes {
            let granted = granted_access(&grants, n.dev_type, n.major, n.minor);
            assert_eq!(
                after.allowed(n.dev_type, n.major, n.minor),
                Some(granted.union(Access::MKNOD)),
                "{}:{}",
                n.major,
                n.minor
            );
        }
    }

    #[test]
    fn partial_exception_on_a_granted_node_is_widened() {
        let (classes, nodes, grants) = fixture();
        let state = ListState::parse("c 240:1 r\n").unwrap();
        let p = plan(&state, &classes, &nodes, &grants, || {
            Ok::<_, ()>(BTreeSet::new())
        })
        .unwrap();
        assert!(p.deny.is_empty());
        assert_eq!(show(&p.allow), ["c 240:1 rwm", "c 241:0 rwm"]);
    }

    #[test]
    fn plan_result_satisfies_the_grants() {
        // Simulate the kernel on the planned writes for deny-all inputs and check verdicts.
        let (classes, nodes, grants) = fixture();
        let registered: BTreeSet<DeviceClass> =
            [class(1), class(240), class(241)].into_iter().collect();
        for input in [
            "",
            "c *:* rwm",
            "c 240:* rwm\nc 241:* r",
            "c 240:0 rwm\nc 240:2 rw\nc 1:3 rwm",
            "c *:0 rwm",
        ] {
            let state = ListState::parse(input).unwrap();
            let p = plan(&state, &classes, &nodes, &grants, || {
                Ok::<_, ()>(registered.clone())
            })
            .unwrap();
            let ListState::DenyAll(mut list) = state else {
                unreachable!()
            };
            list.extend(p.allow_first.iter().copied());
            for d in &p.deny {
                list.retain(|r| (r.rule_type, r.major, r.minor) != (d.rule_type, d.major, d.minor));
            }
            list.extend(p.allow.iter().copied());
            let after = ListState::DenyAll(list);
            for n in &nodes {
                let want = granted_access(&grants, n.dev_type, n.major, n.minor);
                assert_eq!(
                    after.allowed(n.dev_type, n.major, n.minor),
                    Some(want),
                    "input {input:?}, node {}:{}",
                    n.major,
                    n.minor
                );
            }
            // Non-guarded devices keep what they had.
            if input.contains("c *:* rwm") || input.contains("c 1:3") {
                assert_eq!(
                    after.allowed(DevType::Char, 1, 3),
                    Some(Access::ALL),
                    "{input}"
                );
            }
        }
    }
}
