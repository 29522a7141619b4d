//! What a container asks for, from its environment: one device profile's variables at a time
//! (the Ascend profile's are the Ascend ecosystem's, below; another family's have the same
//! syntax under its own names).
//!
//! - `ASCEND_VISIBLE_DEVICES`: unset, `""` or `void`: names no NPU; `none`: no chip, but the
//!   management nodes and driver mounts; `all`; a comma list of indices and inclusive ranges
//!   (`0-3,5`); or the named form (`npu-1`, `Ascend910-1`), not mixed. Sorted and
//!   de-duplicated.
//! - `ASCEND_RUNTIME_OPTIONS`: comma list of `NODRV`, `VIRTUAL`.
//! - `ASCEND_RUNTIME_MOUNTS`: comma list of mount-list names (default `base`).
//! - `ASCEND_ALLOW_LINK`: `True` allows symlinked mount sources.
//! - `ASCEND_CDI_NPU_<N>=<N>`: set by each device of our CDI spec (CDI merges env entries, so
//!   per-device variables accumulate where one list would be overwritten); joined with any
//!   `ASCEND_VISIBLE_DEVICES` list.
//!
//! Every error names the variable and the offending item.

use crate::node::profile::Profile;
pub use crate::node::profile::{
    ALLOW_LINK, CDI_NPU_PREFIX, RUNTIME_MOUNTS, RUNTIME_OPTIONS, VISIBLE_DEVICES,
};

/// Highest NPU index accepted; bounds range expansion long before memory matters.
pub const MAX_INDEX: u32 = 65535;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct RequestError {
    pub var: String,
    pub value: String,
    pub reason: String,
}

/// Which NPUs a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// `none`: no chip, only the management nodes and the driver mounts (node agents).
    None,
    All,
    /// Sorted, without duplicates, never empty.
    Indices(Vec<u32>),
}

impl Selection {
    /// The chip indices asked for, as `HostDevices::select` takes them: `None` for every chip.
    pub fn indices(&self) -> Option<&[u32]> {
        match self {
            Self::None => Some(&[]),
            Self::All => None,
            Self::Indices(i) => Some(i),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub devices: Selection,
    /// `NODRV`: devices only, no driver mounts.
    pub no_driver: bool,
    /// `VIRTUAL`: host `vdavinciN` appears as `davinciN`.
    pub virtual_devices: bool,
    /// Mount-list names, in request order, without duplicates.
    pub mount_lists: Vec<String>,
    /// Whether the container named its mount lists (else `base` is the default).
    pub mount_lists_explicit: bool,
    pub allow_link: bool,
}

/// The last value of `name` in an OCI `process.env` list.
pub fn env_value<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|entry| {
        entry
            .split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

impl Request {
    /// Parses `profile`'s request in `env`; `Ok(None)` for a container that asked for none of
    /// its devices.
    pub fn from_env(env: &[String], profile: &Profile) -> Result<Option<Self>, RequestError> {
        let cdi = cdi_devices(env, &profile.cdi_env_prefix)?;
        let devices = match (env_value(env, &profile.request_env), cdi.is_empty()) {
            (None | Some("") | Some("void"), true) => return Ok(None),
            (None | Some("") | Some("void"), false) => Selection::Indices(cdi),
            (Some(value), _) => match parse_devices(value, profile)? {
                Selection::All => Selection::All,
                Selection::None if cdi.is_empty() => Selection::None,
                Selection::None => Selection::Indices(cdi),
                Selection::Indices(mut v) => {
                    v.extend(cdi);
                    v.sort_unstable();
                    v.dedup();
                    Selection::Indices(v)
                }
            },
        };
        let mut request = Self {
            devices,
            no_driver: false,
            virtual_devices: false,
            mount_lists: profile.mount_lists.clone(),
            mount_lists_explicit: false,
            allow_link: false,
        };
        if let Some(var) = &profile.options_env
            && let Some(value) = env_value(env, var).filter(|v| !v.is_empty())
        {
            let valid = if profile.virtual_pattern.is_some() {
                "NODRV, VIRTUAL"
            } else {
                "NODRV"
            };
            for item in value.split(',') {
                match item.trim() {
                    "NODRV" => request.no_driver = true,
                    "VIRTUAL" if profile.virtual_pattern.is_some() => {
                        request.virtual_devices = true;
                    }
                    other => {
                        return Err(error(
                            var,
                            value,
                            format!("unknown option {other:?} (valid: {valid})"),
                        ));
                    }
                }
            }
        }
        if let Some(var) = &profile.mounts_env
            && let Some(value) = env_value(env, var)
        {
            request.mount_lists.clear();
            request.mount_lists_explicit = true;
            for item in value.split(',') {
                let name = item.trim();
                let valid = !name.is_empty()
                    && name != "."
                    && name != ".."
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !valid {
                    return Err(error(
                        var,
                        value,
                        format!(
                            "invalid mount-list name {name:?} (letters, digits, '.', '_', '-')"
                        ),
                    ));
                }
                if !request.mount_lists.iter().any(|n| n == name) {
                    request.mount_lists.push(name.to_string());
                }
            }
        }
        if let Some(var) = &profile.allow_link_env {
            request.allow_link = match env_value(env, var) {
                None | Some("") | Some("False") | Some("false") => false,
                Some("True") | Some("true") => true,
                Some(other) => {
                    return Err(error(var, other, "expected True or False".into()));
                }
            };
        }
        Ok(Some(request))
    }
}

/// Indices named by `<prefix>N=N` entries, sorted; each value must repeat its name.
fn cdi_devices(env: &[String], prefix: &str) -> Result<Vec<u32>, RequestError> {
    let mut out = Vec::new();
    for entry in env {
        let Some((name, value)) = entry.split_once('=') else {
            continue;
        };
        let Some(suffix) = name.strip_prefix(prefix) else {
            continue;
        };
        match (parse_index(suffix), parse_index(value)) {
            (Some(a), Some(b)) if a == b => out.push(a),
            _ => {
                return Err(RequestError {
                    var: prefix.into(),
                    value: entry.clone(),
                    reason: format!("expected {prefix}<N>=<N>"),
                });
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn error(var: &str, value: &str, reason: String) -> RequestError {
    RequestError {
        var: var.into(),
        value: value.to_string(),
        reason,
    }
}

/// One decimal index: ASCII digits only (no sign, no unicode digits), at most MAX_INDEX.
fn parse_index(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|i| *i <= MAX_INDEX)
}

/// `<form>-N` for one of `profile`'s named forms: returns (name, N).
fn parse_named<'a>(item: &'a str, profile: &Profile) -> Option<(&'a str, u32)> {
    let (name, index) = item.rsplit_once('-')?;
    let index = parse_index(index)?;
    profile.named_form(name).then_some((name, index))
}

fn parse_devices(value: &str, profile: &Profile) -> Result<Selection, RequestError> {
    let fail = |reason: String| Err(error(&profile.request_env, value, reason));
    match value {
        "all" => return Ok(Selection::All),
        "none" => return Ok(Selection::None),
        _ => {}
    }
    let mut indices = Vec::new();
    let mut named: Option<&str> = None;
    let mut numeric = false;
    for raw in value.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            return fail("empty item in the list".into());
        }
        if item == "none" || item == "all" {
            return fail(format!("{item:?} cannot be combined with other items"));
        }
        if let Some(i) = parse_index(item) {
            numeric = true;
            indices.push(i);
        } else if let Some((start, end)) = item.split_once('-')
            && let (Some(start), Some(end)) = (parse_index(start), parse_index(end))
        {
            if start > end {
                return fail(format!("range {item:?} is reversed"));
            }
            numeric = true;
            indices.extend(start..=end);
        } else if let Some((name, i)) = parse_named(item, profile) {
            if named.is_some_and(|n| n != name) {
                return fail(format!(
                    "{item:?} names another chip than {:?}",
                    named.unwrap_or_default()
                ));
            }
            named = Some(name);
            indices.push(i);
        } else {
            let mut forms = vec!["all".to_string(), "N".into(), "N-M".into()];
            forms.extend(profile.describe_named_forms());
            let last = forms.pop().unwrap_or_default();
            return fail(format!(
                "malformed item {item:?} (expected {} or {last}, N <= {MAX_INDEX})",
                forms.join(", ")
            ));
        }
        if numeric && named.is_some() {
            return fail("numeric and named items cannot be mixed".into());
        }
    }
    indices.sort_unstable();
    indices.dedup();
    Ok(Selection::Indices(indices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ascend() -> Profile {
        crate::node::config::Config::default().profiles().remove(0)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<String> {
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    fn devices(value: &str) -> Result<Selection, RequestError> {
        Request::from_env(&env(&[(VISIBLE_DEVICES, value)]), &ascend()).map(|r| r.unwrap().devices)
    }

    fn indices(value: &str) -> Vec<u32> {
        match devices(value).unwrap() {
            Selection::Indices(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_an_npu_container() {
        for e in [
            env(&[]),
            env(&[(VISIBLE_DEVICES, "")]),
            env(&[(VISIBLE_DEVICES, "void")]),
        ] {
            assert_eq!(Request::from_env(&e, &ascend()).unwrap(), None);
        }
    }

    #[test]
    fn lists_ranges_and_named_forms() {
        assert_eq!(devices("all").unwrap(), Selection::All);
        assert_eq!(devices("none").unwrap(), Selection::None);
        assert_eq!(indices("3"), [3]);
        assert_eq!(indices("0-3,5"), [0, 1, 2, 3, 5]);
        assert_eq!(indices("5,1,3,1,2-3"), [1, 2, 3, 5]);
        assert_eq!(indices(" 1 , 2 "), [1, 2]);
        assert_eq!(indices("npu-1,npu-0"), [0, 1]);
        assert_eq!(indices("Ascend910-2,Ascend910-7"), [2, 7]);
        assert_eq!(indices("Ascend310P-0"), [0]);
        assert_eq!(indices("4-4"), [4]);
    }

    #[test]
    fn malformed_requests_name_the_item() {
        for (value, needle) in [
            ("x", "\"x\""),
            ("-1", "\"-1\""),
            ("1,,2", "empty item"),
            ("1,", "empty item"),
            ("   ", "empty item"),
            ("3-1", "reversed"),
            ("0-99999", "\"0-99999\""),
            ("4294967296", "\"4294967296\""),
            ("99999999999999999999", "\"99999999999999999999\""),
            ("1,npu-2", "mixed"),
            ("none,1", "cannot be combined"),
            ("1,none", "cannot be combined"),
            ("all,1", "cannot be combined"),
            ("npu-2,1", "mixed"),
            ("npu-1,Ascend910-2", "another chip"),
            ("Ascend-1", "\"Ascend-1\""),
            ("ascend910-1", "\"ascend910-1\""),
            ("gpu-1", "\"gpu-1\""),
            ("ALL", "\"ALL\""),
            ("١", "\"١\""),
            ("+1", "\"+1\""),
            ("1.5", "\"1.5\""),
            ("0x1", "\"0x1\""),
            ("1-", "\"1-\""),
            ("-", "\"-\""),
            ("1-2-3", "\"1-2-3\""),
            ("npu-", "\"npu-\""),
            ("npu--1", "\"npu--1\""),
            ("1 2", "\"1 2\""),
            ("all,1", "\"all\""),
        ] {
            let e = devices(value).unwrap_err();
            assert_eq!(e.var, VISIBLE_DEVICES);
            let text = e.to_string();
            assert!(text.contains(needle), "{value:?}: {text}");
            assert!(text.starts_with("ASCEND_VISIBLE_DEVICES="), "{text}");
        }
    }

    #[test]
    fn options() {
        let r = |opts: &str| {
            Request::from_env(
                &env(&[(VISIBLE_DEVICES, "0"), (RUNTIME_OPTIONS, opts)]),
                &ascend(),
            )
        };
        let v = r("VIRTUAL,NODRV").unwrap().unwrap();
        assert!(v.no_driver && v.virtual_devices);
        let v = r("NODRV").unwrap().unwrap();
        assert!(v.no_driver && !v.virtual_devices);
        assert!(!r("").unwrap().unwrap().no_driver);
        for bad in ["nodrv", "NODRV,", "FOO", "NODRV,,VIRTUAL"] {
            let e = r(bad).unwrap_err();
            assert_eq!(e.var, RUNTIME_OPTIONS, "{bad}");
        }
    }

    #[test]
    fn mount_lists() {
        let r = |v: &str| {
            Request::from_env(
                &env(&[(VISIBLE_DEVICES, "0"), (RUNTIME_MOUNTS, v)]),
                &ascend(),
            )
        };
        assert_eq!(
            Request::from_env(&env(&[(VISIBLE_DEVICES, "0")]), &ascend())
                .unwrap()
                .unwrap()
                .mount_lists,
            ["base"]
        );
        assert_eq!(
            r("base,extra,base").unwrap().unwrap().mount_lists,
            ["base", "extra"]
        );
        for bad in ["../etc", "a/b", "..", ".", "", "base,", "x y"] {
            let e = r(bad).unwrap_err();
            assert_eq!(e.var, RUNTIME_MOUNTS, "{bad}");
        }
    }

    #[test]
    fn allow_link() {
        let r = |v: &str| {
            Request::from_env(&env(&[(VISIBLE_DEVICES, "0"), (ALLOW_LINK, v)]), &ascend())
        };
        assert!(r("True").unwrap().unwrap().allow_link);
        assert!(!r("False").unwrap().unwrap().allow_link);
        assert_eq!(r("yes").unwrap_err().var, ALLOW_LINK);
    }

    #[test]
    fn cdi_variables_accumulate() {
        let e = env(&[
            ("ASCEND_CDI_NPU_3", "3"),
            ("PATH", "/bin"),
            ("ASCEND_CDI_NPU_1", "1"),
        ]);
        assert_eq!(
            Request::from_env(&e, &ascend()).unwrap().unwrap().devices,
            Selection::Indices(vec![1, 3])
        );
        let e = env(&[("ASCEND_CDI_NPU_1", "1"), (VISIBLE_DEVICES, "0,1")]);
        assert_eq!(
            Request::from_env(&e, &ascend()).unwrap().unwrap().devices,
            Selection::Indices(vec![0, 1])
        );
        for bad in [
            ("ASCEND_CDI_NPU_1", "2"),
            ("ASCEND_CDI_NPU_x", "x"),
            ("ASCEND_CDI_NPU_1", ""),
        ] {
            assert_eq!(
                Request::from_env(&env(&[bad]), &ascend()).unwrap_err().var,
                CDI_NPU_PREFIX
            );
        }
    }

    #[test]
    fn last_env_entry_wins() {
        let e = vec![
            format!("{VISIBLE_DEVICES}=1"),
            "PATH=/bin".into(),
            format!("{VISIBLE_DEVICES}=2"),
        ];
        assert_eq!(
            Request::from_env(&e, &ascend()).unwrap().unwrap().devices,
            Selection::Indices(vec![2])
        );
    }

    #[test]
    fn another_family_reads_its_own_variables() {
        let k = Profile::kunlun();
        let r = |pairs: &[(&str, &str)]| Request::from_env(&env(pairs), &k);
        let devices = |v: &str| r(&[("CXPU_VISIBLE_DEVICES", v)]).unwrap().unwrap().devices;
        assert_eq!(devices("0,2-3"), Selection::Indices(vec![0, 2, 3]));
        assert_eq!(devices("all"), Selection::All);
        assert_eq!(devices("none"), Selection::None);
        let e = r(&[("CXPU_VISIBLE_DEVICES", "npu-1")]).unwrap_err();
        assert_eq!(e.var, "CXPU_VISIBLE_DEVICES");
        assert!(
            e.reason.contains("expected all, N or N-M, N <= 65535"),
            "{e}"
        );
        // Ascend's variables are not Kunlun's, and Kunlun has no options variable.
        assert_eq!(r(&[(VISIBLE_DEVICES, "1")]).unwrap(), None);
        let req = r(&[("CXPU_VISIBLE_DEVICES", "1"), (RUNTIME_OPTIONS, "bogus")])
            .unwrap()
            .unwrap();
        assert_eq!(req.mount_lists, ["kunlun"]);
        assert!(!req.no_driver && !req.virtual_devices);
        assert_eq!(
            r(&[("CXPU_CDI_XPU_3", "3")]).unwrap().unwrap().devices,
            Selection::Indices(vec![3])
        );
        let e = r(&[("CXPU_CDI_XPU_3", "4")]).unwrap_err();
        assert_eq!(e.var, "CXPU_CDI_XPU_");
    }
}
