//! `npu-ctk device revoke|restore`: changing a running container's NPUs without a restart.
//!
//! Effective for the next open or mknod. No device cgroup (v1 or BPF) can take back a file
//! descriptor the container already holds: revoking does not close open NPU handles.
use crate::{
    enforce::isolation, node::config::Config, node::devices::HostDevices, node::rules::Grant,
    node::state, operate::error::Error,
};

/// What a revoke or restore did.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Done(Grant),
    /// Already in the requested state; nothing written.
    Unchanged(Grant),
}

impl Change {
    /// What `npu-ctk device revoke|restore` prints; `word` names the device (`NPU`).
    pub fn report(&self, id: &str, word: &str, npu: u32, allow: bool) -> String {
        let verb = if allow { "restored" } else { "revoked" };
        match self {
            Self::Done(grant) if allow => format!("{word} {npu} ({grant}) {verb} for {id}"),
            Self::Done(grant) => format!(
                "{word} {npu} ({grant}) {verb} for {id}\neffective for the next open or mknod; \
                 file descriptors the container already holds stay open"
            ),
            Self::Unchanged(grant) => {
                format!("{word} {npu} ({grant}) already {verb} for {id}; no change")
            }
        }
    }
}

/// Revokes (`allow = false`) or restores chip `npu` of `profile` of container `id`. Only what the container
/// was originally given can be restored.
pub fn set_npu(
    config: &Config,
    id: &str,
    profile: &str,
    npu: u32,
    allow: bool,
) -> Result<Change, Error> {
    let mut record = state::read(&config.state_dir, id)?
        .ok_or_else(|| Error::UnknownContainer(id.to_string()))?;
    let host = HostDevices::discover(config)?;
    let family = host
        .family(profile)
        .ok_or_else(|| Error::UnknownProfile(profile.to_string()))?;
    let grant = [family.chips.get(&npu), family.virtual_chips.get(&npu)]
        .into_iter()
        .flatten()
        .find_map(|node| record.grants.iter().find(|g| node.granted_by(g)).copied())
        .ok_or(Error::NotGranted {
            id: id.to_string(),
            npu,
        })?;
    let revoked = record.revoked.contains(&grant);
    if revoked != allow {
        return Ok(Change::Unchanged(grant));
    }
    if allow {
        record.revoked.retain(|g| *g != grant);
    } else {
        record.revoked.push(grant);
    }
    let now: Vec<Grant> = record
        .grants
        .iter()
        .filter(|g| !record.revoked.contains(g))
        .copied()
        .collect();
    isolation::set_grant(config, &record.enforced, &grant, allow, &now)?;
    state::write(&config.state_dir, &record)?;
    Ok(Change::Done(grant))
}
