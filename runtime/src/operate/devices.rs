//! `npu-ctk devices`: the NPU-related nodes found under `dev_root`, as a table or JSON.
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

    fn rows(&self) -> Vec<(String, &DeviceNode)> {
        let host = &self.host;
        let mut rows: Vec<(String, &DeviceNode)> = Vec::new();
        rows.extend(host.chips.iter().map(|(i, n)| (format!("npu {i}"), n)));
        rows.extend(
            host.virtual_chips
                .iter()
                .map(|(i, n)| (format!("virtual npu {i}"), n)),
        );
        rows.extend(
            host.management
                .iter()
                .map(|n| ("management".to_string(), n)),
        );
        rows
    }

    pub fn json(&self) -> Value {
        let list: Vec<_> = self
            .rows()
            .iter()
            .map(|(role, n)| {
                json!({"role": role, "path": n.path, "type": n.dev_type.letter().to_string(),
                    "major": n.major, "minor": n.minor})
            })
            .collect();
        json!({
            "devices": list,
            "missing_management": self.host.missing_management,
        })
    }

    pub fn table(&self) -> String {
        let rows = self.rows();
        let mut lines = vec![format!(
            "{:<16} {:<28} {:<4} MAJOR:MINOR",
            "ROLE", "PATH", "TYPE"
        )];
        for (role, n) in &rows {
            lines.push(format!(
                "{role:<16} {:<28} {:<4} {}:{}",
                n.path.display(),
                n.dev_type.letter(),
                n.major,
                n.minor
            ));
        }
        for missing in &self.host.missing_management {
            lines.push(format!(
                "{:<16} {:<28} MISSING",
                "management",
                missing.display()
            ));
        }
        if rows.is_empty() {
            lines.push(format!("no NPU devices under {}", self.dev_root.display()));
        }
        lines.join("\n")
    }
}
