//! Host device discovery and the device model shared by both enforcement backends.
//!
//! The host's accelerator nodes (per device profile: chips, virtual chips, management devices)
//! are found by `lstat` under `dev_root`, never by following links. Their (type, major) pairs
//! form the *guarded classes*: inside a container we confine, every node of a guarded class
//! (of any profile) is denied unless granted.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use crate::node::{
    config::Config,
    dir_cache,
    profile::Profile,
    rules::{Access, DevType, DeviceClass, Grant},
};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot list devices in {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid chip_pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("{kind} {index} does not exist on this host ({kind}s found: {found})")]
    NoSuchChip {
        kind: String,
        index: u32,
        found: String,
    },
    #[error("all {kind}s were requested, but this host has none under {dev_root}")]
    NoChips { kind: String, dev_root: PathBuf },
    #[error("required management device {path} is missing")]
    MissingManagement { path: PathBuf },
}

/// A device node found on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceNode {
    /// File name under `dev_root`, e.g. `davinci3`.
    pub name: String,
    pub path: PathBuf,
    pub dev_type: DevType,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the host node.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DeviceNode {
    /// Full access to this node.
    pub fn full_grant(&self) -> Grant {
        Grant {
            dev_type: self.dev_type,
            major: self.major,
            minor: self.minor,
            access: Access::ALL,
        }
    }

    /// Whether `grant` is for this node.
    pub fn granted_by(&self, grant: &Grant) -> bool {
        (grant.dev_type, grant.major, grant.minor) == (self.dev_type, self.major, self.minor)
    }

    pub fn class(&self) -> DeviceClass {
        DeviceClass {
            dev_type: self.dev_type,
            major: self.major,
        }
    }

    /// Reads the node at `path` without following a final symlink; `None` if it is not a
    /// device node.
    pub fn stat(path: &Path) -> std::io::Result<Option<Self>> {
        let meta = std::fs::symlink_metadata(path)?;
        let ft = meta.file_type();
        let dev_type = if ft.is_char_device() {
            DevType::Char
        } else if ft.is_block_device() {
            DevType::Block
        } else {
            return Ok(None);
        };
        let rdev = meta.rdev();
        Ok(Some(Self {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            dev_type,
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }))
    }
}

/// One profile's nodes on this host.
#[derive(Debug, Clone)]
pub struct FamilyDevices {
    pub profile: Profile,
    /// Chips by index (`davinciN`).
    pub chips: BTreeMap<u32, DeviceNode>,
    /// Virtual chips by index (`vdavinciN`), given with the `VIRTUAL` option.
    pub virtual_chips: BTreeMap<u32, DeviceNode>,
    /// Management nodes present on the host, required then optional, in config order.
    pub management: Vec<DeviceNode>,
    /// Required management nodes that are absent.
    pub missing_management: Vec<PathBuf>,
}

/// The accelerator nodes of this host, per profile.
#[derive(Debug, Clone, Default)]
pub struct HostDevices {
    /// One per profile, in the configuration's order (`ascend` first).
    pub families: Vec<FamilyDevices>,
    /// Every node under `dev_root` whose class is guarded (includes all of the above).
    pub guarded_nodes: Vec<DeviceNode>,
    /// Classes of the other nodes under `dev_root`.
    pub other_classes: BTreeSet<DeviceClass>,
}

/// The patterns of `profiles`, compiled.
fn compile(profiles: &[Profile]) -> Result<Vec<Patterns>, DeviceError> {
    profiles.iter().map(Patterns::of).collect()
}

/// (profile, index, virtual) of the chip named `name`: the first profile whose patterns match.
fn place(patterns: &[Patterns], name: &str) -> Option<(usize, u32, bool)> {
    patterns.iter().enumerate().find_map(|(i, p)| {
        chip_index(name, &p.chip)
            .map(|index| (i, index, false))
            .or_else(|| p.virtual_index(name).map(|index| (i, index, true)))
    })
}

/// What the scan of `dev_root` depends on besides the directory: this build (an upgrade may
/// scan or classify differently) and the profiles' names.
fn fingerprint(profiles: &[Profile]) -> String {
    let names: Vec<_> = profiles
        .iter()
        .map(|p| {
            (
                &p.chip_pattern,
                &p.virtual_pattern,
                &p.management_devices,
                &p.optional_management_devices,
            )
        })
        .collect();
    format!("{} {names:?}", env!("CARGO_PKG_VERSION"))
}

/// What a scan of `dev_root` keeps: the nodes of guarded classes and the other classes.
type Scan = (Vec<DeviceNode>, BTreeSet<DeviceClass>);

/// Every device node under `dev_root` (one level, no symlinks followed), split into the
/// nodes of guarded classes (those of any profile's node, sorted by name) and the classes of
/// the others.
fn scan(dev_root: &Path, profiles: &[Profile], patterns: &[Patterns]) -> Result<Scan, DeviceError> {
    let read_dir_error = |source| DeviceError::ReadDir {
        path: dev_root.to_path_buf(),
        source,
    };
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dev_root).map_err(read_dir_error)? {
        let entry = entry.map_err(read_dir_error)?;
        // Nodes can vanish between readdir and lstat (hot unplug): skip them.
        if let Ok(Some(node)) = DeviceNode::stat(&entry.path()) {
            all.push(node);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let named = |n: &DeviceNode| {
        place(patterns, &n.name).is_some()
            || profiles.iter().any(|p| {
                p.management_devices.contains(&n.name)
                    || p.optional_management_devices.contains(&n.name)
            })
    };
    let classes: BTreeSet<DeviceClass> = all
        .iter()
        .filter(|n| named(n))
        .map(DeviceNode::class)
        .collect();
    let (guarded, others): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|n| classes.contains(&n.class()));
    Ok((guarded, others.iter().map(DeviceNode::class).collect()))
}

/// A profile's node patterns, compiled.
struct Patterns {
    chip: glob::Pattern,
    virtual_chip: Option<glob::Pattern>,
}

impl Patterns {
    fn of(profile: &Profile) -> Result<Self, DeviceError> {
        let compile = |p: &str| {
            glob::Pattern::new(p).map_err(|e| DeviceError::Pattern {
                pattern: p.to_string(),
                message: e.to_string(),
            })
        };
        Ok(Self {
            chip: compile(&profile.chip_pattern)?,
            virtual_chip: profile
                .virtual_pattern
                .as_deref()
                .map(compile)
                .transpose()?,
        })
    }

    fn virtual_index(&self, name: &str) -> Option<u32> {
        self.virtual_chip.as_ref().and_then(|p| chip_index(name, p))
    }
}

impl HostDevices {
    /// Scans `config.dev_root` (one level, no symlinks followed). A node belongs to the first
    /// profile whose pattern or management names it matches. Operator commands use this: it
    /// shows every node as it is now.
    pub fn discover(config: &Config) -> Result<Self, DeviceError> {
        Self::found(config, |profiles, patterns| {
            scan(&config.dev_root, profiles, patterns)
        })
    }

    /// What [`Self::discover`] finds, from `state_dir`'s record of the last scan while
    /// `dev_root` is unchanged (no node added, removed or renamed since): a container's start
    /// costs the same on a server's `/dev` of hundreds of nodes as on a small one. Modes and
    /// owners may be older than a `chmod` since; whoever copies them re-reads the node.
    pub fn cached(config: &Config) -> Result<Self, DeviceError> {
        Self::found(config, |profiles, patterns| {
            dir_cache::cached(
                &config.state_dir,
                "devices",
                &config.dev_root,
                &fingerprint(profiles),
                || scan(&config.dev_root, profiles, patterns),
            )
        })
    }

    /// The host's devices from what `scanned` returns for the configured profiles.
    fn found(
        config: &Config,
        scanned: impl FnOnce(&[Profile], &[Patterns]) -> Result<Scan, DeviceError>,
    ) -> Result<Self, DeviceError> {
        let profiles = config.profiles();
        let patterns = compile(&profiles)?;
        let (guarded, other_classes) = scanned(&profiles, &patterns)?;
        Ok(Self::of(
            profiles,
            &patterns,
            guarded,
            other_classes,
            &config.dev_root,
        ))
    }

    /// The families of `nodes` (sorted by name; every profile's nodes among them), with the
    /// guarded nodes and the other classes found beside them.
    fn of(
        profiles: Vec<Profile>,
        patterns: &[Patterns],
        guarded: Vec<DeviceNode>,
        other_classes: BTreeSet<DeviceClass>,
        dev_root: &Path,
    ) -> Self {
        let mut families: Vec<FamilyDevices> = profiles
            .into_iter()
            .map(|profile| FamilyDevices {
                profile,
                chips: BTreeMap::new(),
                virtual_chips: BTreeMap::new(),
                management: Vec::new(),
                missing_management: Vec::new(),
            })
            .collect();
        for node in &guarded {
            if let Some((family, index, is_virtual)) = place(patterns, &node.name) {
                let f = &mut families[family];
                if is_virtual {
                    f.virtual_chips.insert(index, node.clone());
                } else {
                    f.chips.insert(index, node.clone());
                }
            }
        }
        let by_name = |name: &str| guarded.iter().find(|n| n.name == name);
        for f in &mut families {
            for name in &f.profile.management_devices {
                match by_name(name) {
                    Some(node) => f.management.push(node.clone()),
                    None => f.missing_management.push(dev_root.join(name)),
                }
            }
            for name in &f.profile.optional_management_devices {
                if let Some(node) = by_name(name) {
                    f.management.push(node.clone());
                }
            }
        }
        Self {
            families,
            guarded_nodes: guarded,
            other_classes,
        }
    }

    /// The guarded classes: (type, major) of every node of every profile.
    pub fn classes(&self) -> BTreeSet<DeviceClass> {
        self.families
            .iter()
            .flat_map(FamilyDevices::classes)
            .collect()
    }

    /// The family of profile `name`.
    pub fn family(&self, name: &str) -> Option<&FamilyDevices> {
        self.families.iter().find(|f| f.profile.name == name)
    }

    /// The families with a node on this host.
    pub fn active(&self) -> impl Iterator<Item = &FamilyDevices> {
        self.families.iter().filter(|f| f.is_active())
    }
}

impl FamilyDevices {
    /// Whether any of this profile's nodes is on the host.
    pub fn is_active(&self) -> bool {
        !(self.chips.is_empty() && self.virtual_chips.is_empty() && self.management.is_empty())
    }

    pub fn classes(&self) -> BTreeSet<DeviceClass> {
        self.chips
            .values()
            .chain(self.virtual_chips.values())
            .chain(&self.management)
            .map(DeviceNode::class)
            .collect()
    }

    /// The nodes a container gets for `indices` (`None`: every chip), with the management
    /// nodes, as they appear inside the container. With `virtual_devices`, the virtual chips
    /// are used and appear under their chip's name. Fails naming an unknown index (and the
    /// ones that exist) or a missing required management node.
    pub fn select(
        &self,
        indices: Option<&[u32]>,
        virtual_devices: bool,
        dev_root: &Path,
    ) -> Result<Vec<ContainerDevice>, DeviceError> {
        let word = &self.profile.device_word;
        let (chips, kind) = if virtual_devices {
            (&self.virtual_chips, format!("virtual {word}"))
        } else {
            (&self.chips, word.clone())
        };
        let all: Vec<u32>;
        let indices = match indices {
            Some(i) => i,
            None if chips.is_empty() => {
                return Err(DeviceError::NoChips {
                    kind,
                    dev_root: dev_root.into(),
                });
            }
            None => {
                all = chips.keys().copied().collect();
                &all
            }
        };
        let mut out = Vec::with_capacity(indices.len() + self.management.len());
        for &index in indices {
            let node = chips.get(&index).ok_or_else(|| DeviceError::NoSuchChip {
                kind: kind.clone(),
                index,
                found: describe_indices(chips),
            })?;
            // Named like the physical chip inside the container, whatever its host name.
            let name = if virtual_devices {
                self.profile.chip_name(index)
            } else {
                node.name.clone()
            };
            out.push(ContainerDevice {
                container_path: Path::new("/dev").join(name),
                node: node.clone(),
            });
        }
        if let Some(path) = self.missing_management.first() {
            return Err(DeviceError::MissingManagement { path: path.clone() });
        }
        out.extend(self.management.iter().map(|node| ContainerDevice {
            container_path: Path::new("/dev").join(&node.name),
            node: node.clone(),
        }));
        Ok(out)
    }

    /// Full grants for the given chip indices plus every management node.
    pub fn grants_for(&self, indices: &[u32]) -> Result<Vec<Grant>, DeviceError> {
        Ok(grants(&self.select(
            Some(indices),
            false,
            Path::new("/dev"),
        )?))
    }

    /// `0-3,5`-style summary of the chip indices found, or `none`.
    pub fn describe_chips(&self) -> String {
        describe_indices(&self.chips)
    }

    /// The index of `node` if it is one of this family's chips or virtual chips.
    pub fn index_of(&self, dev_type: DevType, major: u32, minor: u32) -> Option<u32> {
        let is = |n: &DeviceNode| (n.dev_type, n.major, n.minor) == (dev_type, major, minor);
        self.chips
            .iter()
            .chain(&self.virtual_chips)
            .find(|(_, n)| is(n))
            .map(|(i, _)| *i)
    }
}

/// A host node as a container sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDevice {
    /// Path inside the container, e.g. `/dev/davinci1`.
    pub container_path: PathBuf,
    pub node: DeviceNode,
}

/// Re-reads each device's host node for its mode and owner, which a remembered scan
/// ([`HostDevices::cached`]) may have from before a `chmod`. A node that is no longer the
/// same device keeps what was known, which its grant names.
pub fn refresh(devices: &mut [ContainerDevice]) {
    for d in devices {
        // Only a node that is still the same device: the grants name that one.
        if let Ok(Some(now)) = DeviceNode::stat(&d.node.path)
            && (now.dev_type, now.major, now.minor) == (d.node.dev_type, d.node.major, d.node.minor)
        {
            (d.node.mode, d.node.uid, d.node.gid) = (now.mode, now.uid, now.gid);
        }
    }
}

/// Full-access grants for `devices`, sorted, without duplicates.
pub fn grants(devices: &[ContainerDevice]) -> Vec<Grant> {
    let mut grants: Vec<Grant> = devices.iter().map(|d| d.node.full_grant()).collect();
    grants.sort();
    grants.dedup();
    grants
}

fn describe_indices(chips: &BTreeMap<u32, DeviceNode>) -> String {
    let indices: Vec<u32> = chips.keys().copied().collect();
    if indices.is_empty() {
        return "none".into();
    }
    let mut parts = Vec::new();
    let mut start = indices[0];
    let mut prev = start;
    for &i in &indices[1..] {
        if i != prev + 1 {
            parts.push(range_text(start, prev));
            start = i;
        }
        prev = i;
    }
    parts.push(range_text(start, prev));
    parts.join(",")
}

fn range_text(start: u32, end: u32) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// The index of a chip node: the name matches the pattern and ends in decimal digits.
fn chip_index(name: &str, pattern: &glob::Pattern) -> Option<u32> {
    if !pattern.matches(name) {
        return None;
    }
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    name[name.len() - digits..].parse().ok()
}

/// Majors registered with drivers, per type, from `/proc/devices`.
pub fn registered_majors(proc_devices: &str) -> BTreeSet<DeviceClass> {
    let mut dev_type = None;
    let mut classes = BTreeSet::new();
    for line in proc_devices.lines() {
        match line.trim() {
            "Character devices:" => dev_type = Some(DevType::Char),
            "Block devices:" => dev_type = Some(DevType::Block),
            other => {
                let major = other.split_whitespace().next().and_then(|m| m.parse().ok());
                if let (Some(dev_type), Some(major)) = (dev_type, major) {
                    classes.insert(DeviceClass { dev_type, major });
                }
            }
        }
    }
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, major: u32, minor: u32) -> DeviceNode {
        DeviceNode {
            name: name.into(),
            path: Path::new("/dev").join(name),
            dev_type: DevType::Char,
            major,
            minor,
            mode: 0o660,
            uid: 0,
            gid: 0,
        }
    }

    fn empty() -> FamilyDevices {
        FamilyDevices {
            profile: Config::default().profiles().remove(0),
            chips: BTreeMap::new(),
            virtual_chips: BTreeMap::new(),
            management: Vec::new(),
            missing_management: Vec::new(),
        }
    }

    fn host() -> FamilyDevices {
        let mut h = empty();
        for i in [0, 1, 2, 3, 5] {
            h.chips.insert(i, node(&format!("davinci{i}"), 240, i));
        }
        h.management = vec![node("davinci_manager", 241, 0), node("devmm_svm", 242, 0)];
        h
    }

    #[test]
    fn chip_index_needs_trailing_digits() {
        let p = glob::Pattern::new("davinci[0-9]*").unwrap();
        assert_eq!(chip_index("davinci0", &p), Some(0));
        assert_eq!(chip_index("davinci17", &p), Some(17));
        assert_eq!(chip_index("davinci_manager", &p), None);
        assert_eq!(chip_index("davinci1x", &p), None);
        assert_eq!(chip_index("vdavinci1", &p), None);
    }

    #[test]
    fn classes_cover_chips_and_management() {
        let classes: Vec<_> = host().classes().into_iter().map(|c| c.major).collect();
        assert_eq!(classes, [240, 241, 242]);
    }

    #[test]
    fn grants_are_chips_plus_management_sorted() {
        let g = host().grants_for(&[3, 1]).unwrap();
        let ids: Vec<_> = g.iter().map(|g| (g.major, g.minor)).collect();
        assert_eq!(ids, [(240, 1), (240, 3), (241, 0), (242, 0)]);
        assert!(g.iter().all(|g| g.access == Access::ALL));
    }

    #[test]
    fn unknown_chip_names_existing_ones() {
        let e = host().grants_for(&[4]).unwrap_err().to_string();
        assert!(e.contains("NPU 4") && e.contains("0-3,5"), "{e}");
        assert_eq!(empty().describe_chips(), "none");
    }

    #[test]
    fn select_all_and_virtual() {
        let mut h = host();
        let all = h.select(None, false, Path::new("/dev")).unwrap();
        let paths: Vec<_> = all
            .iter()
            .map(|d| d.container_path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/dev/davinci0",
                "/dev/davinci1",
                "/dev/davinci2",
                "/dev/davinci3",
                "/dev/davinci5",
                "/dev/davinci_manager",
                "/dev/devmm_svm"
            ]
        );
        h.virtual_chips.insert(7, node("vdavinci7", 243, 7));
        let v = h.select(Some(&[7]), true, Path::new("/dev")).unwrap();
        assert_eq!(v[0].container_path, Path::new("/dev/davinci7"));
        assert_eq!(v[0].node.name, "vdavinci7");
        let e = h
            .select(Some(&[1]), true, Path::new("/dev"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("virtual NPU 1") && e.contains("found: 7"), "{e}");
        let e = empty()
            .select(None, false, Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none under /x"), "{e}");
    }

    #[test]
    fn missing_required_management_is_an_error() {
        let mut h = host();
        h.missing_management.push("/dev/hisi_hdc".into());
        let e = h.grants_for(&[0]).unwrap_err().to_string();
        assert!(e.contains("/dev/hisi_hdc"), "{e}");
    }

    #[test]
    fn proc_devices_parsing() {
        let text = "Character devices:\n  1 mem\n  4 /dev/vc/0\n 10 misc\n\nBlock devices:\n  7 loop\n259 blkext\n";
        let got: Vec<_> = registered_majors(text)
            .into_iter()
            .map(|c| (c.dev_type.letter(), c.major))
            .collect();
        assert_eq!(got, [('c', 1), ('c', 4), ('c', 10), ('b', 7), ('b', 259)]);
    }
}
