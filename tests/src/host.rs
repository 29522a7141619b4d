//! A simulated NPU host: fake device nodes with majors no driver owns, a driver tree, mount
//! lists and a configuration pointing at them.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use npu_runtime::node::{config::Config, devices::registered_majors};

use crate::{run, unique};

/// Char majors free on this host (not in /proc/devices), from the local/experimental range.
pub fn free_char_majors(n: usize) -> Vec<u32> {
    free_char_majors_except(n, &[])
}

/// Like [`free_char_majors`], skipping `taken` (majors a fake host uses already).
pub fn free_char_majors_except(n: usize, taken: &[u32]) -> Vec<u32> {
    let used: BTreeSet<u32> =
        registered_majors(&std::fs::read_to_string("/proc/devices").expect("read /proc/devices"))
            .into_iter()
            .filter(|c| c.dev_type.letter() == 'c')
            .map(|c| c.major)
            .collect();
    let free: Vec<u32> = (234..=254)
        .filter(|m| !used.contains(m) && !taken.contains(m))
        .take(n)
        .collect();
    assert_eq!(
        free.len(),
        n,
        "not enough free char majors for fake devices"
    );
    free
}

/// A char node `dir/name` (mode 0666) for `major:minor`.
fn fake_node(dir: &Path, name: &str, major: u32, minor: u32) {
    nix::sys::stat::mknod(
        &dir.join(name),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major.into(), minor.into()),
    )
    .unwrap_or_else(|e| panic!("mknod {name}: {e}"));
}

/// A simulated NPU host: device nodes with majors no driver owns (opening an allowed node
/// gives ENXIO, a denied one EPERM), a config pointing at them, and a private bpffs dir.
pub struct FakeHost {
    pub dir: tempfile::TempDir,
    pub dev_root: PathBuf,
    /// Where probes may mknod.
    pub scratch: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub chip_major: u32,
    pub mgmt_major: u32,
    /// Major of `other0`, a device outside the guarded classes.
    pub other_major: u32,
    /// Major of the virtual NPUs `vdavinci0..chips`.
    pub virtual_major: u32,
    pub chips: u32,
    /// Other accelerator families added with [`FakeHost::add_family`].
    pub families: Vec<Family>,
}

impl FakeHost {
    pub fn new(chips: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("npu-test-")
            .tempdir()
            .expect("tempdir");
        let dev_root = dir.path().join("dev");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&dev_root).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let [chip_major, mgmt_major, other_major, virtual_major] = free_char_majors(4)[..] else {
            unreachable!()
        };
        let mknod = |name: &str, major: u32, minor: u32| fake_node(&dev_root, name, major, minor);
        for i in 0..chips {
            mknod(&format!("davinci{i}"), chip_major, i);
            mknod(&format!("vdavinci{i}"), virtual_major, i);
        }
        for (minor, name) in ["davinci_manager", "devmm_svm", "hisi_hdc"]
            .iter()
            .enumerate()
        {
            mknod(name, mgmt_major, minor as u32);
        }
        mknod("other0", other_major, 0);

        // A driver tree and the default mount list, as on an Ascend host.
        let driver_root = dir.path().join("driver");
        let lib64 = driver_root.join("usr/local/Ascend/driver/lib64");
        std::fs::create_dir_all(&lib64).unwrap();
        std::fs::write(lib64.join("libascend_hal.so"), "fake driver library\n").unwrap();
        std::fs::write(
            driver_root.join("usr/local/Ascend/driver/version.info"),
            "Version=24.1.0\n",
        )
        .unwrap();
        let mount_lists = dir.path().join("mounts.d");
        std::fs::create_dir_all(&mount_lists).unwrap();
        std::fs::write(
            mount_lists.join("base.list"),
            "# driver\n/usr/local/Ascend/driver/lib64\n/usr/local/Ascend/driver/version.info\n\
             /usr/local/Ascend/not-installed\n",
        )
        .unwrap();

        let bpf_dir = Path::new("/sys/fs/bpf").join(unique("npu-test"));
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            format!(
                "dev_root = {:?}\ndriver_root = {:?}\nbpf_dir = {:?}\nstate_dir = {:?}\n\
                 mount_list_dir = {:?}\nlog_file = {:?}\nlog_level = \"debug\"\n",
                dev_root,
                driver_root,
                bpf_dir,
                dir.path().join("state"),
                mount_lists,
                dir.path().join("runtime.log"),
            ),
        )
        .unwrap();
        let config = Config::from_file(&config_path).expect("test config");
        Self {
            dir,
            dev_root,
            scratch,
            config_path,
            config,
            chip_major,
            mgmt_major,
            other_major,
            virtual_major,
            chips,
            families: Vec::new(),
        }
    }

    pub fn node(&self, name: &str) -> PathBuf {
        self.dev_root.join(name)
    }

    pub fn chip(&self, index: u32) -> PathBuf {
        self.node(&format!("davinci{index}"))
    }

    /// Container records currently in the state directory.
    pub fn records(&self) -> Vec<String> {
        // Files only: `node/` holds node-wide facts, not containers.
        std::fs::read_dir(&self.config.state_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pin of the shared guard map `name` (e.g. `npu_grants`).
    pub fn map_pin(&self, name: &str) -> PathBuf {
        npu_runtime::enforce::guard::map_pin(&self.config.bpf_dir, name)
    }

    /// cgroup ids with entries in the pinned grant map, as bpftool shows it (none when the
    /// maps are not pinned).
    pub fn granted_cgroups(&self) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        let pin = self.map_pin("npu_grants");
        if !pin.exists() {
            return ids;
        }
        let dump = run(Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin));
        let entries: serde_json::Value = serde_json::from_str(&dump).unwrap();
        for e in entries.as_array().unwrap() {
            ids.insert(e["formatted"]["key"]["cgroup_id"].as_u64().unwrap());
        }
        ids
    }
}

/// Another accelerator family's fake nodes on a [`FakeHost`] (a device profile's).
#[derive(Debug, Clone)]
pub struct Family {
    /// Chip nodes are `<prefix>0..chips`.
    pub prefix: String,
    pub chips: u32,
    pub chip_major: u32,
    /// Major of the family's management nodes (minors in the order given).
    pub mgmt_major: u32,
}

impl FakeHost {
    /// Adds `chips` nodes `<prefix>N` and the `management` nodes, with majors no driver and no
    /// other family of this host owns, and a driver file listed in `<list>.list` when `list`
    /// is given (the family's default mount list).
    pub fn add_family(
        &mut self,
        prefix: &str,
        chips: u32,
        management: &[&str],
        list: Option<&str>,
    ) -> Family {
        let [chip_major, mgmt_major] = free_char_majors_except(
            2,
            &[
                self.chip_major,
                self.mgmt_major,
                self.other_major,
                self.virtual_major,
            ]
            .into_iter()
            .chain(
                self.families
                    .iter()
                    .flat_map(|f| [f.chip_major, f.mgmt_major]),
            )
            .collect::<Vec<_>>(),
        )[..] else {
            unreachable!()
        };
        let mknod =
            |name: &str, major: u32, minor: u32| fake_node(&self.dev_root, name, major, minor);
        for i in 0..chips {
            mknod(&format!("{prefix}{i}"), chip_major, i);
        }
        for (minor, name) in management.iter().enumerate() {
            mknod(name, mgmt_major, minor as u32);
        }
        if let Some(list) = list {
            let dir = self.dir.path().join(format!("driver/usr/local/{prefix}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("version"), format!("{prefix} driver 1.0\n")).unwrap();
            std::fs::write(
                self.dir.path().join(format!("mounts.d/{list}.list")),
                format!("/usr/local/{prefix}/version\n"),
            )
            .unwrap();
        }
        let family = Family {
            prefix: prefix.into(),
            chips,
            chip_major,
            mgmt_major,
        };
        self.families.push(family.clone());
        family
    }

    /// Removes the Ascend nodes (chips, virtual chips, management nodes): a host of other
    /// families only.
    pub fn remove_ascend(&self) {
        for entry in std::fs::read_dir(&self.dev_root).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ascend = name.starts_with("davinci")
                || name.starts_with("vdavinci")
                || ["devmm_svm", "hisi_hdc"].contains(&name.as_str());
            if ascend {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }

    /// Fills `dev_root` the way a server's `/dev` is filled besides its accelerators: `nodes`
    /// char nodes of a class outside the guarded ones (`ttyN` of the `other0` major) and
    /// `links` symlinks to them.
    pub fn add_unrelated(&self, nodes: u32, links: u32) {
        for i in 1..=nodes {
            fake_node(&self.dev_root, &format!("tty{i}"), self.other_major, i);
        }
        for i in 0..links {
            std::os::unix::fs::symlink(
                format!("tty{}", 1 + i % nodes.max(1)),
                self.dev_root.join(format!("link{i}")),
            )
            .unwrap();
        }
    }

    /// Appends `text` (e.g. a `[profiles.NAME]` table) to the configuration file and reloads it.
    pub fn append_config(&mut self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config_path).unwrap();
        config.push_str(text);
        std::fs::write(&self.config_path, config).unwrap();
        self.config = Config::from_file(&self.config_path).expect("test config");
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config.bpf_dir);
    }
}
