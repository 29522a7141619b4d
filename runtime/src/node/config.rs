//! `/etc/npu-container-runtime/config.toml`: where things live and what an NPU is on this host.
//!
//! A missing file means defaults; an unknown key or a bad value is an error naming the key and
//! the file, so a typo never silently changes what a container is given.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::node::{
    profile::{self, Profile, ProfileConfig},
    trust::{self, TrustError},
};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/npu-container-runtime/config.toml";
/// Environment variable naming another configuration file.
pub const PATH_ENV: &str = "NPU_CONTAINER_RUNTIME_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("config file: {0}")]
    Untrusted(#[from] TrustError),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Low-level runtimes to exec, first executable wins (names are looked up in PATH).
    pub runtimes: Vec<String>,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    /// Where host device nodes are found.
    pub dev_root: PathBuf,
    /// Prefix of host paths named in mount lists.
    pub driver_root: PathBuf,
    pub mount_list_dir: PathBuf,
    /// bpffs directory holding the pinned guard program and maps.
    pub bpf_dir: PathBuf,
    /// Per-container records, so poststop can clean up without a pid.
    pub state_dir: PathBuf,
    /// Glob for NPU chip nodes under `dev_root`; the trailing digits are the NPU index.
    pub chip_pattern: String,
    /// Nodes every NPU container needs; a missing one is an error when NPUs are requested.
    pub management_devices: Vec<String>,
    /// Nodes given to NPU containers when the host has them, skipped when absent.
    pub optional_management_devices: Vec<String>,
    /// Whether containers that name no NPU but could reach one (a broad device rule, or an
    /// NPU node listed without its own rule) are confined to none.
    pub confine_unnamed: bool,
    /// Container parent cgroups (relative to the cgroup v2 root) that `npu-ctk guard install`
    /// guards by default, those of them that exist.
    pub guarded_parents: Vec<String>,
    /// Whose request variables count: on Kubernetes a pod writes its own environment, so
    /// there the device plugin's exact device entries should be the authority.
    pub env_requests: EnvRequests,
    /// More device profiles (`[profiles.NAME]`); one named `kunlun` replaces the built-in.
    pub profiles: std::collections::BTreeMap<String, ProfileConfig>,
}

/// Which containers' request variables (`ASCEND_VISIBLE_DEVICES`, `ASCEND_CDI_NPU_<N>`) are
/// honoured. Exact device entries and CDI device nodes always count: a pod cannot forge them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EnvRequests {
    /// Every container's (Docker and Podman on one host, where who runs a container decides).
    #[default]
    All,
    /// Only those of containers with CAP_SYS_ADMIN in their bounding set (privileged ones).
    Privileged,
    /// Nobody's: only device entries name NPUs.
    #[serde(rename = "none")]
    Never,
}

impl EnvRequests {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Privileged => "privileged",
            Self::Never => "none",
        }
    }

    /// Whether a container's request variables count.
    pub fn honours(self, cap_sys_admin: bool) -> bool {
        match self {
            Self::All => true,
            Self::Privileged => cap_sys_admin,
            Self::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtimes: vec!["runc".into(), "crun".into()],
            log_file: None,
            log_level: LogLevel::Info,
            dev_root: "/dev".into(),
            driver_root: "/".into(),
            mount_list_dir: "/etc/npu-container-runtime/mounts.d".into(),
            bpf_dir: "/sys/fs/bpf/npu-container-runtime".into(),
            state_dir: "/run/npu-container-runtime".into(),
            chip_pattern: "davinci[0-9]*".into(),
            management_devices: vec![
                "davinci_manager".into(),
                "devmm_svm".into(),
                "hisi_hdc".into(),
            ],
            optional_management_devices: [
                "svm0",
                "ts_aisle",
                "upgrade",
                "sys",
                "vdec",
                "vpc",
                "pngd",
                "venc",
                "dvpp_cmdlist",
                "log_drv",
            ]
            .map(String::from)
            .to_vec(),
            confine_unnamed: true,
            // Kubernetes (systemd and cgroupfs drivers), Docker (cgroupfs, or a docker.slice
            // cgroup-parent), Podman (systemd, cgroupfs), containerd's ctr (its namespaces).
            guarded_parents: [
                "/kubepods.slice",
                "/kubepods",
                "/docker",
                "/docker.slice",
                "/machine.slice",
                "/libpod_parent",
                "/default",
                "/k8s.io",
            ]
            .map(String::from)
            .to_vec(),
            env_requests: EnvRequests::All,
            profiles: Default::default(),
        }
    }
}

impl Config {
    /// Loads the file named by `NPU_CONTAINER_RUNTIME_CONFIG`, else the default path. The file
    /// decides what root runs and what reaches containers, so it must be one only root could
    /// have written ([`trust::trusted_file`]).
    pub fn load() -> Result<Self, ConfigError> {
        match std::env::var_os(PATH_ENV) {
            // An explicitly named file must exist: a typo in the variable is not "defaults".
            Some(path) => {
                let path = Path::new(&path);
                match trust::trusted_file(path) {
                    // Missing: reading it says so, naming the file.
                    Err(e) if trust::is_missing(&e) => {}
                    other => other?,
                }
                Self::from_file(path)
            }
            None => match trust::trusted_file(Path::new(DEFAULT_PATH)) {
                Err(e) if trust::is_missing(&e) => Ok(Self::default()),
                Err(e) => Err(e.into()),
                Ok(()) => Self::from_file(Path::new(DEFAULT_PATH)),
            },
        }
    }

    /// The device profiles, in order: `ascend` (the top-level keys), `kunlun` (built in, unless
    /// a table replaces it), then the configured ones by name. Checked when the file is
    /// parsed, so this cannot fail on a loaded configuration.
    pub fn profiles(&self) -> Vec<Profile> {
        self.resolve_profiles()
            .expect("profiles are checked when the configuration is parsed")
    }

    fn resolve_profiles(&self) -> Result<Vec<Profile>, String> {
        let mut out = vec![Profile::ascend(
            &self.chip_pattern,
            &self.management_devices,
            &self.optional_management_devices,
        )];
        if !self.profiles.contains_key("kunlun") {
            out.push(Profile::kunlun());
        }
        for (name, table) in &self.profiles {
            out.push(
                table
                    .profile(name)
                    .map_err(|e| format!("[profiles.{name}]: {e}"))?,
            );
        }
        profile::check_distinct(&out)?;
        Ok(out)
    }

    /// The path [`Config::load`] reads (the variable's, else the default).
    pub fn path() -> PathBuf {
        std::env::var_os(PATH_ENV).map_or_else(|| DEFAULT_PATH.into(), PathBuf::from)
    }

    /// Like [`Config::load`] without the trust check, for `npu-ctk doctor` to report on an
    /// untrusted file while still checking the rest of the host (it runs nothing it names).
    pub fn load_untrusted() -> Result<Self, ConfigError> {
        match Self::from_file(&Self::path()) {
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && std::env::var_os(PATH_ENV).is_none() =>
            {
                Ok(Self::default())
            }
            other => other,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let config: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (key, value) in [
            ("dev_root", &config.dev_root),
            ("driver_root", &config.driver_root),
            ("mount_list_dir", &config.mount_list_dir),
            ("bpf_dir", &config.bpf_dir),
            ("state_dir", &config.state_dir),
        ] {
            if !value.is_absolute() {
                return Err(invalid(format!(
                    "key `{key}`: {} is not an absolute path",
                    value.display()
                )));
            }
        }
        if let Some(log_file) = &config.log_file
            && !log_file.is_absolute()
        {
            return Err(invalid(format!(
                "key `log_file`: {} is not an absolute path",
                log_file.display()
            )));
        }
        if config.runtimes.is_empty() || config.runtimes.iter().any(String::is_empty) {
            return Err(invalid(
                "key `runtimes`: needs at least one non-empty runtime name".into(),
            ));
        }
        glob::Pattern::new(&config.chip_pattern)
            .map_err(|e| invalid(format!("key `chip_pattern`: {e}")))?;
        for parent in &config.guarded_parents {
            if let Err(reason) = check_parent(parent) {
                return Err(invalid(format!(
                    "key `guarded_parents`: {parent:?} {reason}"
                )));
            }
        }
        for (key, names) in [
            ("management_devices", &config.management_devices),
            (
                "optional_management_devices",
                &config.optional_management_devices,
            ),
        ] {
            profile::check_device_names(key, names).map_err(invalid)?;
        }
        config.resolve_profiles().map_err(invalid)?;
        Ok(config)
    }
}

/// A container parent cgroup as `guarded_parents` and `npu-ctk guard install --cgroup` take it:
/// an absolute path below the cgroup v2 root, without `.` or `..`, not the root itself (whose
/// guard would deny NPUs to every process of the host).
pub fn check_parent(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("is not an absolute cgroup path (e.g. /kubepods.slice)");
    }
    if path.trim_matches('/').is_empty() {
        return Err("is the root cgroup: guarding it would deny NPUs to the whole host");
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err("may not contain . or ..");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/test.toml"))
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn profiles_from_the_file() {
        let names =
            |c: &Config| -> Vec<String> { c.profiles().into_iter().map(|p| p.name).collect() };
        assert_eq!(names(&Config::default()), ["ascend", "kunlun"]);
        let acme = "[profiles.acme]\nrequest_env = \"ACME_VISIBLE_DEVICES\"\n\
                    chip_pattern = \"acme[0-9]*\"\n";
        assert_eq!(names(&parse(acme).unwrap()), ["ascend", "kunlun", "acme"]);
        // A table named kunlun replaces the built-in.
        let c =
            parse("[profiles.kunlun]\nrequest_env = \"XPU_VISIBLE\"\nchip_pattern = \"x[0-9]*\"\n")
                .unwrap();
        assert_eq!(names(&c), ["ascend", "kunlun"]);
        assert_eq!(c.profiles()[1].request_env, "XPU_VISIBLE");
        // The top-level keys are Ascend's.
        let c = parse("chip_pattern = \"npu[0-9]*\"").unwrap();
        assert_eq!(
            c.profiles()[0].virtual_pattern.as_deref(),
            Some("vnpu[0-9]*")
        );
        for (text, words) in [
            (
                "[profiles.acme]\nrequest_env = \"CXPU_VISIBLE_DEVICES\"\nchip_pattern = \"a*\"",
                &["CXPU_VISIBLE_DEVICES", "kunlun", "acme"][..],
            ),
            ("[profiles.acme]\nchip_pattern = \"a*\"", &["request_env"]),
            (
                "[profiles.ascend]\nrequest_env = \"A\"\nchip_pattern = \"a*\"",
                &["[profiles.ascend]", "top-level keys"],
            ),
            (
                "[profiles.acme]\nrequest_env = \"A\"\nchip_pattern = \"a*\"\ncolour = 1",
                &["colour"],
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            for w in words {
                assert!(e.contains(w) && e.contains("/etc/test.toml"), "{text}: {e}");
            }
        }
    }

    /// The packages' conffile: as shipped it is the defaults, and so is every value its
    /// comments show (`log_file` has no default: its line is an example).
    #[test]
    fn packaged_config_shows_the_defaults() {
        let shipped = include_str!("../../../deploy/package/config.toml");
        assert_eq!(parse(shipped).unwrap(), Config::default());
        let mut shown = 0;
        let uncommented: String = shipped
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| {
                line.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes().all(|b| b == b'_' || b.is_ascii_lowercase())
                })
            })
            .filter(|line| !line.starts_with("log_file "))
            .inspect(|_| shown += 1)
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            parse(&uncommented).unwrap(),
            Config::default(),
            "{uncommented}"
        );
        // Every one of the 15 keys is shown but log_file and the profiles table (whose
        // example is written `# key = value`, so it stays a comment here).
        assert_eq!(shown, 13, "{uncommented}");
    }

    #[test]
    fn keys_override_defaults() {
        let c = parse(
            "runtimes = [\"crun\"]\ndev_root = \"/tmp/dev\"\nlog_level = \"debug\"\n\
             management_devices = [\"davinci_manager\"]\n",
        )
        .unwrap();
        assert_eq!(c.runtimes, ["crun"]);
        assert_eq!(c.dev_root, Path::new("/tmp/dev"));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.management_devices, ["davinci_manager"]);
        assert_eq!(c.bpf_dir, Config::default().bpf_dir);
        for (text, value) in [
            ("all", EnvRequests::All),
            ("privileged", EnvRequests::Privileged),
            ("none", EnvRequests::Never),
        ] {
            let c = parse(&format!("env_requests = \"{text}\"")).unwrap();
            assert_eq!((c.env_requests, c.env_requests.as_str()), (value, text));
        }
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse("dev_rot = \"/dev\"\n").unwrap_err().to_string();
        assert!(e.contains("dev_rot") && e.contains("/etc/test.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("dev_root = \"dev\"", "dev_root"),
            ("state_dir = \"run\"", "state_dir"),
            ("log_file = \"x.log\"", "log_file"),
            ("runtimes = []", "runtimes"),
            ("log_level = \"loud\"", "log_level"),
            ("chip_pattern = \"davinci[\"", "chip_pattern"),
            ("management_devices = [\"../sda\"]", "management_devices"),
            ("dev_root = 3", "dev_root"),
            ("guarded_parents = [\"kubepods\"]", "guarded_parents"),
            ("guarded_parents = [\"/\"]", "guarded_parents"),
            ("guarded_parents = [\"/a/../b\"]", "guarded_parents"),
            ("guarded_parents = \"/docker\"", "guarded_parents"),
            ("confine_unnamed = \"yes\"", "confine_unnamed"),
            ("env_requests = \"some\"", "env_requests"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("/etc/test.toml"),
                "{text}: {e}"
            );
        }
    }
}
