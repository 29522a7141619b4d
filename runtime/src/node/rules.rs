//! The device-rule model: device types, access bits, device classes, the grants a container
//! holds (written `c 240:1 rwm`), and cgroup device rules with wildcards (`c *:* m`). One model
//! below both the host's device discovery and the enforcement backends.
use std::fmt;

use npu_guard_common::{ACC_ALL, ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid access {0:?}: expected letters from \"rwm\"")]
    Access(String),
    #[error(
        "invalid device rule {0:?}: expected \"TYPE MAJOR:MINOR ACCESS\" (e.g. \"c 240:*  rwm\")"
    )]
    Syntax(String),
}

/// Device type, as cgroup rules and the kernel's BPF context spell it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum DevType {
    Char,
    Block,
}

impl DevType {
    /// `BPF_DEVCG_DEV_*` value.
    pub fn bpf(self) -> u32 {
        match self {
            Self::Char => DEV_CHAR,
            Self::Block => DEV_BLOCK,
        }
    }

    pub fn from_bpf(value: u32) -> Option<Self> {
        match value {
            DEV_CHAR => Some(Self::Char),
            DEV_BLOCK => Some(Self::Block),
            _ => None,
        }
    }

    /// Letter used by cgroup v1 rules and OCI `linux.resources.devices`.
    pub fn letter(self) -> char {
        match self {
            Self::Char => 'c',
            Self::Block => 'b',
        }
    }
}

/// Access bits (`BPF_DEVCG_ACC_*` values): read, write, mknod.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Access(u32);

impl Access {
    pub const NONE: Self = Self(0);
    pub const READ: Self = Self(ACC_READ);
    pub const WRITE: Self = Self(ACC_WRITE);
    pub const MKNOD: Self = Self(ACC_MKNOD);
    pub const ALL: Self = Self(ACC_ALL);

    pub fn bits(self) -> u32 {
        self.0
    }

    /// Keeps only known bits.
    pub fn from_bits(bits: u32) -> Self {
        Self(bits & ACC_ALL)
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The `rwm` letters of `text`, ignoring any other, as runc reads an OCI rule's access
    /// (its own suite writes `"rwa"`).
    pub fn parse_lenient(text: &str) -> Self {
        text.chars().fold(Self::NONE, |acc, c| match c {
            'r' => acc.union(Self::READ),
            'w' => acc.union(Self::WRITE),
            'm' => acc.union(Self::MKNOD),
            _ => acc,
        })
    }

    /// Parses `rwm` letters in any order (an empty string is no access).
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let mut bits = 0;
        for c in text.chars() {
            bits |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(RuleError::Access(text.into())),
            };
        }
        Ok(Self(bits))
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.0 & bit != 0 {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Access({self})")
    }
}

/// A device class: every node of one (type, major).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DeviceClass {
    pub dev_type: DevType,
    pub major: u32,
}

/// One device a container may use, with the access it may use it with. Written as a cgroup
/// rule, `c 240:1 rwm`, in records and messages.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Grant {
    pub dev_type: DevType,
    pub major: u32,
    pub minor: u32,
    pub access: Access,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.dev_type.letter();
        write!(f, "{t} {}:{} {}", self.major, self.minor, self.access)
    }
}

impl From<Grant> for String {
    fn from(g: Grant) -> Self {
        g.to_string()
    }
}

impl TryFrom<String> for Grant {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("invalid grant {text:?}: expected \"c MAJOR:MINOR rwm\"");
        match Rule::parse(&text).map_err(|_| bad())? {
            Rule {
                rule_type: RuleType::Dev(dev_type),
                major: Some(major),
                minor: Some(minor),
                access,
            } => Ok(Self {
                dev_type,
                major,
                minor,
                access,
            }),
            _ => Err(bad()),
        }
    }
}

/// Type field of a rule: `a` (all), `c` or `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleType {
    All,
    Dev(DevType),
}

impl RuleType {
    pub fn covers(self, t: DevType) -> bool {
        match self {
            Self::All => true,
            Self::Dev(d) => d == t,
        }
    }
}

/// One `devices.list`/`devices.allow`/`devices.deny` line; `None` is `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub rule_type: RuleType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl Rule {
    pub fn exact(dev_type: DevType, major: u32, minor: u32, access: Access) -> Self {
        Self {
            rule_type: RuleType::Dev(dev_type),
            major: Some(major),
            minor: Some(minor),
            access,
        }
    }

    /// Whether the rule names exactly one node: a device type, a major and a minor.
    pub fn is_exact(&self) -> bool {
        matches!(self.rule_type, RuleType::Dev(_)) && self.major.is_some() && self.minor.is_some()
    }

    pub fn matches(&self, dev_type: DevType, major: u32, minor: u32) -> bool {
        self.rule_type.covers(dev_type)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// Whether the rule can apply to some node of `class`.
    pub fn touches(&self, class: DeviceClass) -> bool {
        self.rule_type.covers(class.dev_type) && self.major.is_none_or(|m| m == class.major)
    }

    pub fn parse(line: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::Syntax(line.to_string());
        let mut parts = line.split_whitespace();
        let (Some(t), Some(majmin), Some(acc), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let rule_type = match t {
            "a" => RuleType::All,
            "c" => RuleType::Dev(DevType::Char),
            "b" => RuleType::Dev(DevType::Block),
            _ => return Err(bad()),
        };
        let (major, minor) = majmin.split_once(':').ok_or_else(bad)?;
        let number = |s: &str| -> Result<Option<u32>, RuleError> {
            if s == "*" {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        Ok(Self {
            rule_type,
            major: number(major)?,
            minor: number(minor)?,
            access: Access::parse(acc).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.rule_type {
            RuleType::All => 'a',
            RuleType::Dev(d) => d.letter(),
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        write!(
            f,
            "{t} {}:{} {}",
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// `grants` sorted, with the grants of one node merged into one (the union of their access).
pub fn merge(mut grants: Vec<Grant>) -> Vec<Grant> {
    grants.sort();
    let mut out: Vec<Grant> = Vec::with_capacity(grants.len());
    for g in grants {
        match out.last_mut() {
            Some(last)
                if (last.dev_type, last.major, last.minor) == (g.dev_type, g.major, g.minor) =>
            {
                last.access = last.access.union(g.access);
            }
            _ => out.push(g),
        }
    }
    out
}

/// A rule of an ordered list, as OCI `linux.resources.devices` has them: allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEntry {
    pub allow: bool,
    pub rule: Rule,
}

/// What an ordered list of rules gives one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effective {
    pub allowed: Access,
    /// The allowed bits an allow rule naming exactly this node gave, not denied since (a broad
    /// allow after it changes nothing).
    pub exact: Access,
}

/// Evaluates `rules` for one node as runc (and the kernel's v1 controller) do: for each
/// access bit, the last rule that matches the node and mentions the bit decides; nothing is
/// allowed by default.
pub fn effective(rules: &[RuleEntry], dev_type: DevType, major: u32, minor: u32) -> Effective {
    let mut out = Effective::default();
    for e in rules
        .iter()
        .filter(|e| e.rule.matches(dev_type, major, minor))
    {
        if e.allow {
            out.allowed = out.allowed.union(e.rule.access);
            if e.rule.is_exact() {
                out.exact = out.exact.union(e.rule.access);
            }
        } else {
            out.allowed = out.allowed.minus(e.rule.access);
            out.exact = out.exact.minus(e.rule.access);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_round_trips() {
        assert_eq!(Access::parse("rwm").unwrap(), Access::ALL);
        assert_eq!(Access::parse("mr").unwrap().to_string(), "rm");
        assert_eq!(Access::parse("").unwrap(), Access::NONE);
        assert!(Access::parse("rx").is_err());
        assert!(Access::ALL.contains(Access::READ.union(Access::WRITE)));
        assert_eq!(Access::ALL.minus(Access::READ).to_string(), "wm");
    }

    #[test]
    fn lenient_access_keeps_only_rwm() {
        assert_eq!(Access::parse_lenient("rwa").to_string(), "rw");
        assert_eq!(Access::parse_lenient("xyz"), Access::NONE);
        assert_eq!(Access::parse_lenient("mmr").to_string(), "rm");
    }

    #[test]
    fn grant_text_round_trips() {
        let g = Grant {
            dev_type: DevType::Char,
            major: 240,
            minor: 1,
            access: Access::ALL,
        };
        assert_eq!(g.to_string(), "c 240:1 rwm");
        assert_eq!(Grant::try_from(g.to_string()).unwrap(), g);
        for bad in [
            "",
            "c 240:1",
            "x 1:1 r",
            "c a:1 r",
            "c 1:1 rx",
            "c 1:1 r extra",
        ] {
            assert!(Grant::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn rule_syntax_round_trips() {
        for line in ["a *:* rwm", "c 1:3 rwm", "b 8:* r", "c *:5 wm", "c 240:1 m"] {
            assert_eq!(Rule::parse(line).unwrap().to_string(), line);
        }
        for bad in [
            "x 1:3 rwm",
            "c 1 rwm",
            "c a:3 rwm",
            "c 1:3 rwx",
            "c 1:3",
            "c 1:3 r extra",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_last_matching_rule_decides_each_bit() {
        let rule = |allow: bool, text: &str| RuleEntry {
            allow,
            rule: Rule::parse(text).unwrap(),
        };
        let c = DevType::Char;
        assert_eq!(effective(&[], c, 240, 1), Effective::default());
        let all = [rule(true, "a *:* rwm")];
        assert_eq!(effective(&all, c, 240, 1).allowed, Access::ALL);
        assert_eq!(effective(&all, c, 240, 1).exact, Access::NONE);
        // An exact rule names the node whether a broad allow comes before or after it; a deny
        // after it takes its bits back.
        let named = [rule(true, "a *:* rwm"), rule(true, "c 240:1 rw")];
        let e = effective(&named, c, 240, 1);
        assert_eq!((e.allowed, e.exact.to_string()), (Access::ALL, "rw".into()));
        let broad_last = [rule(true, "c 240:1 rw"), rule(true, "a *:* rwm")];
        assert_eq!(effective(&broad_last, c, 240, 1).exact.to_string(), "rw");
        let revoked = [
            rule(true, "c 240:1 rw"),
            rule(false, "c *:* w"),
            rule(true, "a *:* rwm"),
        ];
        let e = effective(&revoked, c, 240, 1);
        assert_eq!((e.allowed, e.exact.to_string()), (Access::ALL, "r".into()));
        // A later deny takes a bit away; other nodes and types are untouched.
        let denied = [rule(true, "c 240:1 rwm"), rule(false, "c 240:* w")];
        assert_eq!(effective(&denied, c, 240, 1).allowed.to_string(), "rm");
        assert_eq!(effective(&denied, c, 240, 2).allowed, Access::NONE);
        assert_eq!(
            effective(&denied, DevType::Block, 240, 1).allowed,
            Access::NONE
        );
        assert!(Rule::parse("c 240:1 r").unwrap().is_exact());
        assert!(!Rule::parse("c 240:* r").unwrap().is_exact());
        assert!(!Rule::parse("a 240:1 r").unwrap().is_exact());
    }
}
