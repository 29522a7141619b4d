//! What a container names, and what it could reach without naming it (DESIGN.md section 2,
//! "What a container gets").
//!
//! A container gets the NPU-class nodes it names and no others. It names them by the request
//! variables, or by an exact device entry: a node in `linux.devices` whose own exact rule
//! (`c M:m` with r or w) in `linux.resources.devices` decides its access - what `docker run
//! --device` and a device plugin's `DeviceSpec`s produce. A broad rule (allow-all, `a`,
//! `c *:*`, `c M:*`) names nothing, and neither does a node listed without its own rule
//! (privileged containers get every host node listed). A container that names nothing but
//! whose spec could reach an NPU class is confined: it gets the hook and no grant.
//!
//! The variables count only as far as `env_requests` lets them (a Kubernetes pod writes its
//! own environment). A container whose variables do not count is confined to what its exact
//! entries name, and its record says what was refused.
use std::collections::BTreeSet;

use crate::{
    node::config::EnvRequests,
    node::profile::Profile,
    node::rules::{Access, DeviceClass, Grant, RuleEntry, effective},
    start::{
        request::{Request, RequestError},
        spec::{Spec, SpecError},
    },
};

/// What a container names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The requests the container made, one per profile it asked of (by index into the
    /// profiles it was read with).
    pub requests: Vec<(usize, Request)>,
    /// NPU-class nodes named by exact device entries, each with the access its rules give.
    pub exact: Vec<Grant>,
    /// Whether the spec could reach an NPU-class node: a rule allowing read or write on one of
    /// its classes, or such a node in `linux.devices`.
    pub reaches: bool,
    /// Request variables that did not count (`env_requests`), and why, for the record.
    pub refused: Option<String>,
}

/// What the runtime does with a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Names nothing and reaches no NPU class (or confinement is off): left alone.
    PassThrough,
    /// Names nothing but could reach an NPU class: the hook, no grant.
    Confine,
    /// Names NPU-class nodes: they are granted, every other one is denied.
    Grant,
}

#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl Names {
    /// Reads the names from `spec`; `classes` are the host's guarded classes, `profiles` whose
    /// variables are requests, `env_requests` whose request variables count.
    pub fn of(
        spec: &Spec,
        classes: &BTreeSet<DeviceClass>,
        profiles: &[Profile],
        env_requests: EnvRequests,
    ) -> Result<Self, NamesError> {
        let env = spec.env()?;
        let cap_sys_admin = spec.has_cap_sys_admin();
        let (requests, refused) = if env_requests.honours(cap_sys_admin) {
            let mut requests = Vec::new();
            for (i, profile) in profiles.iter().enumerate() {
                if let Some(request) = Request::from_env(&env, profile)? {
                    requests.push((i, request));
                }
            }
            (requests, None)
        } else {
            // Not parsed: a variable that does not count cannot fail the container either.
            let asked: Vec<&str> = env
                .iter()
                .map(String::as_str)
                .filter(|e| {
                    profiles.iter().any(|p| p.asks(e))
                        && e.split_once('=')
                            .is_some_and(|(_, v)| !matches!(v, "" | "void"))
                })
                .collect();
            let why = match env_requests {
                EnvRequests::Privileged => "counts only for containers with CAP_SYS_ADMIN",
                _ => "counts for no container",
            };
            let refused = (!asked.is_empty()).then(|| {
                format!(
                    "{} (env_requests = \"{}\": the variable {why})",
                    asked.join(" "),
                    env_requests.as_str()
                )
            });
            (Vec::new(), refused)
        };
        let rules = spec.device_rules()?;
        let devices = spec.devices();
        let mut exact: Vec<Grant> = devices
            .iter()
            .filter(|d| {
                classes.contains(&DeviceClass {
                    dev_type: d.dev_type,
                    major: d.major,
                })
            })
            .filter_map(|d| {
                let e = effective(&rules, d.dev_type, d.major, d.minor);
                let named = e.exact.contains(Access::READ) || e.exact.contains(Access::WRITE);
                named.then_some(Grant {
                    dev_type: d.dev_type,
                    major: d.major,
                    minor: d.minor,
                    access: e.exact,
                })
            })
            .collect();
        exact.sort();
        exact.dedup();
        let listed = devices.iter().any(|d| {
            classes.contains(&DeviceClass {
                dev_type: d.dev_type,
                major: d.major,
            })
        });
        Ok(Self {
            requests,
            exact,
            reaches: listed || reaches_a_class(&rules, classes),
            refused,
        })
    }

    /// A container whose request was refused is confined whatever `confine_unnamed` says: it
    /// asked for NPUs, and its record shows the refusal.
    pub fn treatment(&self, confine_unnamed: bool) -> Treatment {
        if !self.requests.is_empty() || !self.exact.is_empty() {
            Treatment::Grant
        } else if self.refused.is_some() || (self.reaches && confine_unnamed) {
            Treatment::Confine
        } else {
            Treatment::PassThrough
        }
    }
}

/// Whether an allow rule gives read or write on some node of one of `classes`. Later denials
/// are not weighed: confining a container that could not have opened an NPU anyway costs it
/// nothing.
pub fn reaches_a_class(rules: &[RuleEntry], classes: &BTreeSet<DeviceClass>) -> bool {
    rules.iter().any(|e| {
        e.allow
            && (e.rule.access.contains(Access::READ) || e.rule.access.contains(Access::WRITE))
            && classes.iter().any(|c| e.rule.touches(*c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::rules::DevType;

    fn profiles() -> Vec<Profile> {
        crate::node::config::Config::default().profiles()
    }

    fn classes() -> BTreeSet<DeviceClass> {
        [240, 241]
            .map(|major| DeviceClass {
                dev_type: DevType::Char,
                major,
            })
            .into()
    }

    fn names(env: &str, devices: &str, rules: &str) -> Names {
        let text = format!(
            r#"{{"process": {{"env": [{env}]}}, "linux": {{"devices": [{devices}],
               "resources": {{"devices": [{rules}]}}}}}}"#
        );
        let spec = Spec::parse(text.as_bytes(), "config.json".into()).unwrap();
        Names::of(&spec, &classes(), &profiles(), EnvRequests::All).unwrap()
    }

    const DAVINCI3: &str = r#"{"path": "/dev/davinci3", "type": "c", "major": 240, "minor": 3}"#;
    const DENY_ALL: &str = r#"{"allow": false, "access": "rwm"}"#;
    const MKNOD_ALL: &str = r#"{"allow": true, "type": "c", "access": "m"}"#;

    #[test]
    fn plain_containers_pass_through() {
        // Docker's defaults: deny all, mknod anything, a few exact rules off the NPU classes.
        let n = names(
            r#""PATH=/bin""#,
            r#"{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}"#,
            &format!(
                r#"{DENY_ALL}, {MKNOD_ALL}, {{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}},
                   {{"allow": true, "type": "c", "major": 136, "access": "rwm"}}"#
            ),
        );
        assert_eq!(n.treatment(true), Treatment::PassThrough, "{n:?}");
    }

    #[test]
    fn broad_rules_and_listed_nodes_name_nothing_and_are_confined() {
        for (what, devices, rules) in [
            ("allow-all", "", r#"{"allow": true, "access": "rwm"}"#.to_string()),
            ("a *:*", "", r#"{"allow": true, "type": "a", "major": -1, "minor": -1, "access": "rw"}"#.into()),
            ("c 240:*", "", format!(r#"{DENY_ALL}, {{"allow": true, "type": "c", "major": 240, "access": "rwm"}}"#)),
            ("privileged: every node listed, allow-all", DAVINCI3, r#"{"allow": true, "access": "rwm"}"#.into()),
            ("a listed node without its rule", DAVINCI3, DENY_ALL.into()),
            ("an exact rule after allow-all, without its node", "", r#"{"allow": true, "access": "rwm"}, {"allow": true, "type": "c", "major": 240, "minor": 3, "access": "rw"}"#.into()),
            ("an exact rule denied again", DAVINCI3, r#"{"allow": true, "type": "c", "major": 240, "minor": 3, "access": "rw"}, {"allow": false, "type": "c", "major": 240, "access": "rwm"}, {"allow": true, "access": "rwm"}"#.into()),
        ] {
            let n = names(r#""PATH=/bin""#, devices, &rules);
            assert!(n.exact.is_empty(), "{what}: {n:?}");
            assert_eq!(n.treatment(true), Treatment::Confine, "{what}");
            assert_eq!(n.treatment(false), Treatment::PassThrough, "{what}");
        }
    }

    #[test]
    fn exact_entries_name_their_nodes() {
        // docker run --device /dev/davinci3, alone and next to allow-all (privileged-like),
        // before or after it.
        let exact = r#"{"allow": true, "type": "c", "major": 240, "minor": 3, "access": "rwm"}"#;
        for rules in [
            format!("{DENY_ALL}, {MKNOD_ALL}, {exact}"),
            format!(r#"{{"allow": true, "access": "rwm"}}, {exact}"#),
            format!(r#"{exact}, {{"allow": true, "access": "rwm"}}"#),
        ] {
            let n = names(r#""PATH=/bin""#, DAVINCI3, &rules);
            assert_eq!(n.treatment(true), Treatment::Grant);
            assert_eq!(
                n.exact.iter().map(ToString::to_string).collect::<Vec<_>>(),
                ["c 240:3 rwm"]
            );
        }
        // A device plugin's read-write entry keeps its access; a later deny of w narrows it.
        let rw = r#"{"allow": true, "type": "c", "major": 240, "minor": 3, "access": "rw"}"#;
        let n = names(r#""PATH=/bin""#, DAVINCI3, &format!("{DENY_ALL}, {rw}"));
        assert_eq!(n.exact[0].access.to_string(), "rw");
        let n = names(
            r#""PATH=/bin""#,
            DAVINCI3,
            &format!(
                r#"{DENY_ALL}, {rw}, {{"allow": false, "type": "c", "major": 240, "minor": 3, "access": "w"}}"#
            ),
        );
        assert_eq!(n.exact[0].access.to_string(), "r");
        // mknod only names nothing.
        let m = r#"{"allow": true, "type": "c", "major": 240, "minor": 3, "access": "m"}"#;
        let n = names(r#""PATH=/bin""#, DAVINCI3, &format!("{DENY_ALL}, {m}"));
        assert!(n.exact.is_empty());
        // A request adds to them.
        let n = names(
            r#""ASCEND_VISIBLE_DEVICES=1""#,
            DAVINCI3,
            &format!("{DENY_ALL}, {exact}"),
        );
        assert!(n.requests.len() == 1 && n.exact.len() == 1);
    }

    #[test]
    fn bad_rules_are_errors() {
        let text = r#"{"linux": {"resources": {"devices": [{"allow": true, "type": "x"}]}}}"#;
        // (Access letters other than rwm are runc's to ignore: {"access": "rwa"} is rw.)
        let spec = Spec::parse(text.as_bytes(), "/b/config.json".into()).unwrap();
        let e = Names::of(&spec, &classes(), &profiles(), EnvRequests::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/b/config.json") && e.contains("invalid device rule"),
            "{e}"
        );
    }

    #[test]
    fn env_requests_decide_whose_variables_count() {
        let spec = |caps: &str, env: &str| {
            let text = format!(
                r#"{{"process": {{"env": [{env}], "capabilities": {{"bounding": [{caps}]}}}},
                   "linux": {{"devices": [{DAVINCI3}], "resources": {{"devices": [{DENY_ALL},
                   {{"allow": true, "type": "c", "major": 240, "minor": 3, "access": "rw"}}]}}}}}}"#
            );
            Spec::parse(text.as_bytes(), "config.json".into()).unwrap()
        };
        let request = r#""ASCEND_VISIBLE_DEVICES=0,1", "ASCEND_CDI_NPU_2=2""#;
        let admin = r#""CAP_CHOWN", "CAP_SYS_ADMIN""#;
        for (policy, caps, counts) in [
            (EnvRequests::All, "", true),
            (EnvRequests::Privileged, admin, true),
            (EnvRequests::Privileged, r#""CAP_CHOWN""#, false),
            (EnvRequests::Never, admin, false),
        ] {
            let n = Names::of(&spec(caps, request), &classes(), &profiles(), policy).unwrap();
            assert_eq!(!n.requests.is_empty(), counts, "{policy:?} {caps}");
            assert_eq!(n.refused.is_none(), counts, "{policy:?} {caps}");
            // The exact entry (a device plugin's DeviceSpec) counts whatever the policy.
            assert_eq!(n.exact.len(), 1, "{policy:?}");
            assert_eq!(n.treatment(false), Treatment::Grant);
            if let Some(refused) = n.refused {
                assert!(
                    refused.contains("ASCEND_VISIBLE_DEVICES=0,1")
                        && refused.contains("ASCEND_CDI_NPU_2=2")
                        && refused.contains(policy.as_str()),
                    "{refused}"
                );
            }
        }
        // Refused and nothing exact: confined, even with confine_unnamed off; a malformed
        // variable that does not count fails nothing.
        let text = r#"{"process": {"env": ["ASCEND_VISIBLE_DEVICES=0,x"]}}"#;
        let s = Spec::parse(text.as_bytes(), "config.json".into()).unwrap();
        let n = Names::of(&s, &classes(), &profiles(), EnvRequests::Never).unwrap();
        assert_eq!(n.treatment(false), Treatment::Confine);
        // No variable, or an empty one: nothing refused.
        let text = r#"{"process": {"env": ["ASCEND_VISIBLE_DEVICES="]}}"#;
        let s = Spec::parse(text.as_bytes(), "config.json".into()).unwrap();
        let n = Names::of(&s, &classes(), &profiles(), EnvRequests::Never).unwrap();
        assert_eq!(
            (&n.refused, n.treatment(true)),
            (&None, Treatment::PassThrough)
        );
    }
}
