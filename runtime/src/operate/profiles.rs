//! `npu-ctk profiles`: the device profiles (built in and configured) with what this host has
//! of each - a profile whose nodes are not here is inactive and costs nothing.
use serde_json::{Value, json};

use crate::node::{
    config::Config,
    devices::{DeviceError, FamilyDevices, HostDevices},
};

pub struct Listing {
    host: HostDevices,
}

impl Listing {
    pub fn discover(config: &Config) -> Result<Self, DeviceError> {
        Ok(Self {
            host: HostDevices::discover(config)?,
        })
    }

    fn found(f: &FamilyDevices) -> String {
        if !f.is_active() {
            return "inactive (no node here)".into();
        }
        let mut parts = vec![format!(
            "{} {}s ({})",
            f.chips.len(),
            f.profile.device_word,
            f.describe_chips()
        )];
        if !f.virtual_chips.is_empty() {
            parts.push(format!("{} virtual", f.virtual_chips.len()));
        }
        parts.push(format!("{} management", f.management.len()));
        if !f.missing_management.is_empty() {
            let missing: Vec<String> = f
                .missing_management
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            parts.push(format!("MISSING {}", missing.join(" ")));
        }
        parts.join(", ")
    }

    pub fn table(&self) -> String {
        let mut lines = vec![format!(
            "{:<10} {:<24} {:<14} {:<20} FOUND",
            "PROFILE", "REQUEST VARIABLE", "CHIPS", "CDI KIND"
        )];
        for f in &self.host.families {
            let p = &f.profile;
            lines.push(format!(
                "{:<10} {:<24} {:<14} {:<20} {}",
                p.name,
                p.request_env,
                p.chip_pattern,
                p.cdi_kind,
                Self::found(f)
            ));
        }
        lines.join("\n")
    }

    pub fn json(&self) -> Value {
        let list: Vec<Value> = self
            .host
            .families
            .iter()
            .map(|f| {
                let p = &f.profile;
                json!({
                    "name": p.name,
                    "active": f.is_active(),
                    "request_env": p.request_env,
                    "named_forms": p.named_forms,
                    "chip_pattern": p.chip_pattern,
                    "virtual_pattern": p.virtual_pattern,
                    "management_devices": p.management_devices,
                    "optional_management_devices": p.optional_management_devices,
                    "options_env": p.options_env,
                    "mounts_env": p.mounts_env,
                    "mount_lists": p.mount_lists,
                    "cdi_kind": p.cdi_kind,
                    "cdi_env_prefix": p.cdi_env_prefix,
                    "chips": f.chips.keys().collect::<Vec<_>>(),
                    "virtual_chips": f.virtual_chips.keys().collect::<Vec<_>>(),
                    "management": f.management.iter().map(|n| &n.path).collect::<Vec<_>>(),
                    "missing_management": f.missing_management,
                })
            })
            .collect();
        json!(list)
    }
}
