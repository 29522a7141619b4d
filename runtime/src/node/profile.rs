//! Device profiles: one accelerator family each, as data - how a container asks for its
//! devices, what the nodes are called, which management nodes it needs, its mount lists and
//! its CDI kind. Built in: `ascend` (whose settings are the configuration's top-level keys, so
//! older files keep working) and `kunlun` (KunlunXin XPUs); more from `[profiles.NAME]`
//! tables. The guard and the v1 planner work on (type, major) classes, so every class of every
//! profile found on the host is confined alike.
use serde::Deserialize;

/// The Ascend profile's variables (the ecosystem's names).
pub const VISIBLE_DEVICES: &str = "ASCEND_VISIBLE_DEVICES";
pub const RUNTIME_OPTIONS: &str = "ASCEND_RUNTIME_OPTIONS";
pub const RUNTIME_MOUNTS: &str = "ASCEND_RUNTIME_MOUNTS";
pub const ALLOW_LINK: &str = "ASCEND_ALLOW_LINK";
/// Prefix of the per-device variables our Ascend CDI spec sets.
pub const CDI_NPU_PREFIX: &str = "ASCEND_CDI_NPU_";

/// One accelerator family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// The request variable (`ASCEND_VISIBLE_DEVICES`).
    pub request_env: String,
    /// Named item forms beyond `N` and `N-M`: `npu` accepts `npu-N`; a form ending in `*`
    /// accepts its prefix and one or more letters or digits (`Ascend*`: `Ascend910-N`).
    pub named_forms: Vec<String>,
    /// Chip nodes under `dev_root` (a glob; the trailing digits are the index).
    pub chip_pattern: String,
    /// Virtual chip nodes, given with the `VIRTUAL` option under the chip's name.
    pub virtual_pattern: Option<String>,
    /// Nodes every container of this family needs; one missing is an error when it asks.
    pub management_devices: Vec<String>,
    /// Nodes given when the host has them.
    pub optional_management_devices: Vec<String>,
    /// The options variable (`NODRV`, `VIRTUAL`), if the family has one.
    pub options_env: Option<String>,
    /// The variable naming mount lists, if the family has one.
    pub mounts_env: Option<String>,
    /// Mount lists applied when the container names none.
    pub mount_lists: Vec<String>,
    /// The variable allowing symlinked mount sources, if the family has one.
    pub allow_link_env: Option<String>,
    /// Per-device CDI variables: `<prefix>N=N`.
    pub cdi_env_prefix: String,
    /// The CDI kind `npu-ctk cdi generate` writes (`ascend.com/npu`).
    pub cdi_kind: String,
    /// What one device is called in messages and listings (`NPU`).
    pub device_word: String,
    /// Entries added to the environment of a container granted this family's devices.
    pub env: Vec<String>,
}

impl Profile {
    /// Huawei Ascend, from the configuration's top-level device keys.
    pub fn ascend(
        chip_pattern: &str,
        management_devices: &[String],
        optional_management_devices: &[String],
    ) -> Self {
        Self {
            name: "ascend".into(),
            request_env: VISIBLE_DEVICES.into(),
            named_forms: vec!["npu".into(), "Ascend*".into()],
            chip_pattern: chip_pattern.into(),
            virtual_pattern: Some(format!("v{chip_pattern}")),
            management_devices: management_devices.to_vec(),
            optional_management_devices: optional_management_devices.to_vec(),
            options_env: Some(RUNTIME_OPTIONS.into()),
            mounts_env: Some(RUNTIME_MOUNTS.into()),
            mount_lists: vec!["base".into()],
            allow_link_env: Some(ALLOW_LINK.into()),
            cdi_env_prefix: CDI_NPU_PREFIX.into(),
            cdi_kind: "ascend.com/npu".into(),
            device_word: "NPU".into(),
            env: vec!["ASCEND_DOCKER_RUNTIME=True".into()],
        }
    }

    /// KunlunXin XPUs, as xpu-container-runtime names them: `/dev/xpu0..N`, the control node
    /// `/dev/xpuctrl`, requests in `CXPU_VISIBLE_DEVICES`.
    pub fn kunlun() -> Self {
        Self {
            name: "kunlun".into(),
            request_env: "CXPU_VISIBLE_DEVICES".into(),
            named_forms: Vec::new(),
            chip_pattern: "xpu[0-9]*".into(),
            virtual_pattern: None,
            management_devices: vec!["xpuctrl".into()],
            optional_management_devices: Vec::new(),
            options_env: None,
            mounts_env: None,
            mount_lists: vec!["kunlun".into()],
            allow_link_env: None,
            cdi_env_prefix: "CXPU_CDI_XPU_".into(),
            cdi_kind: "kunlunxin.com/xpu".into(),
            device_word: "XPU".into(),
            env: Vec::new(),
        }
    }

    /// Whether `name` (of an item `name-N`) is one of this family's named forms.
    pub fn named_form(&self, name: &str) -> bool {
        self.named_forms
            .iter()
            .any(|form| match form.strip_suffix('*') {
                Some(prefix) => name.strip_prefix(prefix).is_some_and(|model| {
                    !model.is_empty() && model.chars().all(|c| c.is_ascii_alphanumeric())
                }),
                None => name == form,
            })
    }

    /// The named forms as a request error lists them (`npu-N or AscendXXX-N`).
    pub fn describe_named_forms(&self) -> Vec<String> {
        self.named_forms
            .iter()
            .map(|f| match f.strip_suffix('*') {
                Some(prefix) => format!("{prefix}XXX-N"),
                None => format!("{f}-N"),
            })
            .collect()
    }

    /// The name a virtual chip has inside the container: its chip's (`vdavinci3` appears as
    /// `davinci3`), the chip pattern's literal start followed by the index.
    pub fn chip_name(&self, index: u32) -> String {
        let literal: String = self
            .chip_pattern
            .chars()
            .take_while(|c| !"*?[".contains(*c))
            .collect();
        format!("{literal}{index}")
    }

    /// Every variable this family reads from a container's environment.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.request_env.as_str()),
            self.options_env.as_deref(),
            self.mounts_env.as_deref(),
            self.allow_link_env.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether env entry `entry` (`K=V`) is one of this family's requests.
    pub fn asks(&self, entry: &str) -> bool {
        entry.split_once('=').is_some_and(|(k, _)| {
            k == self.request_env
                || k.strip_prefix(self.cdi_env_prefix.as_str())
                    .is_some_and(|n| !n.is_empty())
        })
    }
}

/// A `[profiles.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub request_env: String,
    pub chip_pattern: String,
    #[serde(default)]
    pub virtual_pattern: Option<String>,
    #[serde(default)]
    pub named_forms: Vec<String>,
    #[serde(default)]
    pub management_devices: Vec<String>,
    #[serde(default)]
    pub optional_management_devices: Vec<String>,
    #[serde(default)]
    pub options_env: Option<String>,
    #[serde(default)]
    pub mounts_env: Option<String>,
    #[serde(default)]
    pub mount_lists: Vec<String>,
    #[serde(default)]
    pub allow_link_env: Option<String>,
    #[serde(default)]
    pub cdi_env_prefix: Option<String>,
    #[serde(default)]
    pub cdi_kind: Option<String>,
    #[serde(default)]
    pub device_word: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
}

impl ProfileConfig {
    /// The profile this table defines; a message naming the key if a value is bad.
    pub fn profile(&self, name: &str) -> Result<Profile, String> {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid_name {
            return Err("a profile name has lowercase letters, digits, '_' and '-' only".into());
        }
        if name == "ascend" {
            return Err(
                "the ascend profile is set by the top-level keys (chip_pattern, \
                 management_devices, optional_management_devices)"
                    .into(),
            );
        }
        let variable = |key: &str, value: &str| -> Result<(), String> {
            let ok = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "key `{key}`: {value:?} is not a variable name (A-Z, 0-9, _)"
                ))
            }
        };
        variable("request_env", &self.request_env)?;
        for (key, value) in [
            ("options_env", &self.options_env),
            ("mounts_env", &self.mounts_env),
            ("allow_link_env", &self.allow_link_env),
            ("cdi_env_prefix", &self.cdi_env_prefix),
        ] {
            if let Some(v) = value {
                variable(key, v)?;
            }
        }
        for (key, pattern) in [
            ("chip_pattern", Some(&self.chip_pattern)),
            ("virtual_pattern", self.virtual_pattern.as_ref()),
        ] {
            if let Some(p) = pattern {
                glob::Pattern::new(p).map_err(|e| format!("key `{key}`: {e}"))?;
            }
        }
        for form in &self.named_forms {
            let body = form.strip_suffix('*').unwrap_or(form);
            if body.is_empty() || !body.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!(
                    "key `named_forms`: {form:?} is not letters and digits, with an optional \
                     trailing *"
                ));
            }
        }
        check_device_names("management_devices", &self.management_devices)?;
        check_device_names(
            "optional_management_devices",
            &self.optional_management_devices,
        )?;
        if let Some(kind) = &self.cdi_kind
            && !kind
                .split_once('/')
                .is_some_and(|(v, c)| !v.is_empty() && !c.is_empty())
        {
            return Err(format!("key `cdi_kind`: {kind:?} is not vendor/class"));
        }
        let word = self
            .device_word
            .clone()
            .unwrap_or_else(|| name.to_uppercase());
        Ok(Profile {
            name: name.into(),
            request_env: self.request_env.clone(),
            named_forms: self.named_forms.clone(),
            chip_pattern: self.chip_pattern.clone(),
            virtual_pattern: self.virtual_pattern.clone(),
            management_devices: self.management_devices.clone(),
            optional_management_devices: self.optional_management_devices.clone(),
            options_env: self.options_env.clone(),
            mounts_env: self.mounts_env.clone(),
            mount_lists: self.mount_lists.clone(),
            allow_link_env: self.allow_link_env.clone(),
            cdi_env_prefix: self.cdi_env_prefix.clone().unwrap_or_else(|| {
                format!(
                    "{}_CDI_{}_",
                    name.to_uppercase().replace('-', "_"),
                    word.to_uppercase()
                )
            }),
            cdi_kind: self
                .cdi_kind
                .clone()
                .unwrap_or_else(|| format!("{name}.local/{}", word.to_lowercase())),
            device_word: word,
            env: self.env.clone(),
        })
    }
}

/// Device names under `dev_root`: one path component each.
pub fn check_device_names(key: &str, names: &[String]) -> Result<(), String> {
    match names
        .iter()
        .find(|n| n.is_empty() || n.contains('/') || *n == "." || *n == "..")
    {
        Some(bad) => Err(format!(
            "key `{key}`: {bad:?} is not a device name under dev_root"
        )),
        None => Ok(()),
    }
}

/// Checks that no two profiles read the same variable (each request must have one owner).
pub fn check_distinct(profiles: &[Profile]) -> Result<(), String> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for p in profiles {
        for var in p.variables().chain([p.cdi_env_prefix.as_str()]) {
            if let Some((_, other)) = seen.iter().find(|(v, _)| *v == var) {
                return Err(format!(
                    "profiles {other} and {} both use the variable {var}",
                    p.name
                ));
            }
            seen.push((var, &p.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascend() -> Profile {
        Profile::ascend(
            "davinci[0-9]*",
            &["davinci_manager".into()],
            &["svm0".into()],
        )
    }

    #[test]
    fn named_forms_match_as_today() {
        let a = ascend();
        assert!(a.named_form("npu") && a.named_form("Ascend910") && a.named_form("Ascend310P"));
        assert!(!a.named_form("Ascend") && !a.named_form("Ascend-9") && !a.named_form("gpu"));
        assert_eq!(a.describe_named_forms(), ["npu-N", "AscendXXX-N"]);
        assert!(!Profile::kunlun().named_form("xpu"));
    }

    #[test]
    fn virtual_chips_appear_under_the_chip_name() {
        assert_eq!(ascend().chip_name(7), "davinci7");
        assert_eq!(Profile::kunlun().chip_name(2), "xpu2");
    }

    #[test]
    fn requests_belong_to_their_family() {
        let k = Profile::kunlun();
        assert!(k.asks("CXPU_VISIBLE_DEVICES=0") && k.asks("CXPU_CDI_XPU_1=1"));
        assert!(!k.asks("ASCEND_VISIBLE_DEVICES=0") && !k.asks("CXPU_CDI_XPU_=1"));
    }

    fn table(text: &str) -> ProfileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_config_profile_gets_defaults_and_checked_values() {
        let p = table("request_env = \"ACME_VISIBLE_DEVICES\"\nchip_pattern = \"acme[0-9]*\"\n")
            .profile("acme")
            .unwrap();
        assert_eq!(
            (
                p.cdi_env_prefix.as_str(),
                p.cdi_kind.as_str(),
                p.device_word.as_str()
            ),
            ("ACME_CDI_ACME_", "acme.local/acme", "ACME")
        );
        for (text, name, wanted) in [
            (
                "request_env = \"acme\"\nchip_pattern = \"a*\"",
                "acme",
                "request_env",
            ),
            (
                "request_env = \"A\"\nchip_pattern = \"a[\"",
                "acme",
                "chip_pattern",
            ),
            (
                "request_env = \"A\"\nchip_pattern = \"a*\"",
                "ascend",
                "top-level keys",
            ),
            (
                "request_env = \"A\"\nchip_pattern = \"a*\"",
                "Acme",
                "profile name",
            ),
            (
                "request_env = \"A\"\nchip_pattern = \"a*\"\nmanagement_devices = [\"../x\"]",
                "acme",
                "management_devices",
            ),
            (
                "request_env = \"A\"\nchip_pattern = \"a*\"\ncdi_kind = \"x\"",
                "acme",
                "cdi_kind",
            ),
            (
                "request_env = \"A\"\nchip_pattern = \"a*\"\nnamed_forms = [\"a-b\"]",
                "acme",
                "named_forms",
            ),
        ] {
            let e = table(text).profile(name).unwrap_err();
            assert!(e.contains(wanted), "{text}: {e}");
        }
        assert!(
            toml::from_str::<ProfileConfig>("request_env = \"A\"\nchip_pattern = \"a\"\nbogus = 1")
                .is_err()
        );
    }

    #[test]
    fn two_profiles_cannot_share_a_variable() {
        let mut k = Profile::kunlun();
        assert!(check_distinct(&[ascend(), k.clone()]).is_ok());
        k.request_env = VISIBLE_DEVICES.into();
        let e = check_distinct(&[ascend(), k]).unwrap_err();
        assert!(e.contains("ASCEND_VISIBLE_DEVICES"), "{e}");
    }
}
