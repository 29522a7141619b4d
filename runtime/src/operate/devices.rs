//! `npu-ctk devices`: the accelerator nodes of every profile found under `dev_root`, as a
//! table or JSON.
use serde_json::{Value, json};

use crate::node::{
    config::Config,
    devices::{DeviceError, DeviceNode, HostDevices},
};

/// The host's NPU nodes with the role each plays.
pub struct Listing {
    host: HostDevices,
    dev_root: std::path::PathBuf,
}

impl Listing {
    pub fn discover(config: &Config) -> Result<Self, DeviceError> {
        Ok(Self {
            host: HostDevices::discover(config)?,
            dev_root: config.dev_root.clone(),
        })
    }

    /// Each node with its role and profile: Ascend's as `npu N`, `virtual npu N` and
    /// `management`, another family's under its own word (`xpu N`, `xpu management`).
    fn rows(&self) -> Vec<(String, &str, &DeviceNode)> {
        let mut rows = Vec::new();
        for f in &self.host.families {
            let name = f.profile.name.as_str();
            let word = f.profile.device_word.to_lowercase();
            let management = if name == "ascend" {
                "management".to_string()
            } else {
                format!("{word} management")
            };
            rows.extend(
                f.chips
                    .iter()
                    .map(|(i, n)| (format!("{word} {i}"), name, n)),
            );
            rows.extend(
                f.virtual_chips
                    .iter()
                    .map(|(i, n)| (format!("virtual {word} {i}"), name, n)),
            );
            rows.extend(f.management.iter().map(|n| (management.clone(), name, n)));
        }
        rows
    }

    /// Required management nodes that are absent: Ascend's always (the product's own
    /// family), another profile's when the host has some of its nodes.
    fn missing(&self) -> Vec<(String, &std::path::Path)> {
        self.host
            .families
            .iter()
            .filter(|f| f.profile.name == "ascend" || f.is_active())
            .flat_map(|f| {
                let role = if f.profile.name == "ascend" {
                    "management".to_string()
                } else {
                    format!("{} management", f.profile.device_word.to_lowercase())
                };
                f.missing_management
                    .iter()
                    .map(move |p| (role.clone(), p.as_path()))
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        let list: Vec<_> = self
            .rows()
            .iter()
            .map(|(role, profile, n)| {
                json!({"role": role, "profile": profile, "path": n.path,
                    "type": n.dev_type.letter().to_string(), "major": n.major, "minor": n.minor})
            })
            .collect();
        let missing: Vec<_> = self.missing().into_iter().map(|(_, p)| p).collect();
        json!({
            "devices": list,
            "missing_management": missing,
        })
    }

    pub fn table(&self) -> String {
        let rows = self.rows();
        let mut lines = vec![format!(
            "{:<16} {:<28} {:<4} MAJOR:MINOR",
            "ROLE", "PATH", "TYPE"
        )];
        for (role, _, n) in &rows {
            lines.push(format!(
                "{role:<16} {:<28} {:<4} {}:{}",
                n.path.display(),
                n.dev_type.letter(),
                n.major,
                n.minor
            ));
        }
        for (role, missing) in self.missing() {
            lines.push(format!("{role:<16} {:<28} MISSING", missing.display()));
        }
        if rows.is_empty() {
            lines.push(format!("no NPU devices under {}", self.dev_root.display()));
        }
        lines.join("\n")
    }
}
