//! The stored device configurations: keeping the output of a profile's backup command as a
//! device's next version (`netdev.backup`), and reading them back (`netdev.versions`,
//! `netdev.saved`, `netdev.diff`).

use super::profile::Profile;
use super::{LUA, RunState};
use crate::cmdb::device_configs::{Backup, DeviceConfigs};

/// Keeps `text`, what `command` (the profile's backup command) printed on device `name`, as the
/// device's configuration: the version that holds it, and whether that version is new. A dry run
/// stores nothing and gives the version it would become.
pub(super) fn keep(state: &RunState, name: &str, profile: &Profile, command: &str, text: &str) -> Result<(Backup, bool), String> {
    let text = profile.stable(text);
    if text.trim().is_empty() {
        return Err(format!("`{command}` printed nothing"));
    }
    let store = state.ctx.lasting_store("device configuration backups")?;
    let configs = DeviceConfigs::open(store).map_err(|e| e.to_string())?;
    if state.ctx.dry_run {
        // Read, compare, store nothing: the version it would become.
        let latest = configs.latest(name).map_err(|e| e.to_string())?;
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        };
        let changed = latest.as_ref().is_none_or(|l| l.sha256 != sha);
        let version = latest.as_ref().map_or(1, |l| if changed { l.version + 1 } else { l.version });
        let b = Backup {
            device: name.to_string(),
            version,
            taken_at: chrono::Utc::now(),
            sha256: sha,
            bytes: text.len(),
            run: None,
            user: String::new(),
            text: String::new(),
        };
        return Ok((b, changed));
    }
    configs.put(name, &text, Some(&state.ctx.run_id), &state.ctx.caller.user).map_err(|e| e.to_string())
}

/// The run's stored configurations, for the calls that read them (they need `read`).
pub(super) fn stored(st: &RunState, call: &str) -> mlua::Result<DeviceConfigs> {
    if !st.scope.read {
        return Err(LUA.err(call, "permission denied: stored configurations need the `read` action in the applet's netdev permission"));
    }
    let store = st.ctx.lasting_store("device configuration backups").map_err(|m| LUA.err(call, m))?;
    DeviceConfigs::open(store).map_err(|e| LUA.err(call, e))
}
