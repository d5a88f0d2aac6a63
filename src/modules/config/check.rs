//! Drift check and repair on one host ([`check_host`]): `config.check`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::RunState;
use super::publish::{HostResult, env_for, publish_host};
use super::script::with_sudo;
use crate::cmdb::Host;
use crate::cmdb::config_items::HostState;
use crate::kit::ssh::client::shell_quote;

/// What `config.check` found on one host, as a test fakes it and a transcript keeps it. A fake
/// may give only `status` (in-sync, drifted, missing, unknown) or only `drift`; `version`, `env`
/// and the hashes default to what opslet recorded for the host, if anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checked {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// What differs: "the content differs", "mode is 0600, the item says 0644", ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The file's hash on the host ("" when it is missing, "link" for a link in its place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The hash opslet published there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_sha256: Option<String>,
}

/// The host's recorded state, if opslet published (or tried to publish) the item there.
fn recorded(items: &crate::cmdb::config_items::ConfigItems, name: &str, host: &str) -> Result<Option<HostState>, String> {
    Ok(items.host_state(name, host).map_err(|e| e.to_string())?.filter(|s| s.version > 0 || s.pending_version.is_some()))
}

/// A publish whose outcome was lost may have landed after all: then the host runs that version.
fn landed(state: &HostState, actual: &str) -> bool {
    state.pending_sha256.as_deref() == Some(actual) && !actual.is_empty()
}

/// Compares the file on one host with what opslet published there; repairs drift when asked.
pub(super) async fn check_host(st: Arc<RunState>, name: String, host: Host, repair: bool, timeout: Duration) -> HostResult {
    let t0 = Instant::now();
    let mut r = HostResult { host: host.name.clone(), action: Some("check".into()), ..Default::default() };
    let items = match st.items.clone() {
        Ok(i) => i,
        Err(m) => {
            r.error = Some(m);
            return r;
        }
    };
    // Reading the host: one call, which a test's fake answers at this level (status, drift).
    let real = async {
        let Some(state) = recorded(&items, &name, &host.name)? else {
            return Ok(Checked { status: Some("unknown".into()), ..Default::default() });
        };
        // The version recorded (or, for a first publish whose outcome was lost, the one attempted).
        let v = if state.version > 0 { state.version } else { state.pending_version.unwrap_or(0) };
        let item = match items.get(&name, v) {
            Ok(Some(i)) => i,
            _ => return Err(format!("{name} v{v} is not in the cmdb")),
        };
        let inherited = st.ssh.snapshot().map(|s| s.inherited_groups(&host)).unwrap_or_default();
        let path = item.spec.path_for(&state.env, &host, &inherited)?;
        let p = shell_quote(&path);
        // The content's hash, then mode, owner and group (`stat`), of the file itself (not a link).
        let cmd = with_sudo(
            &item.spec.sudo,
            &format!("if [ -L {p} ]; then echo link; elif [ -e {p} ]; then sha256sum {p} | cut -d' ' -f1; stat -c '%a %U %G' {p}; fi"),
        );
        let e = st.ssh.exec(&host, cmd, None, timeout).await?;
        let out = String::from_utf8_lossy(&e.stdout).into_owned();
        let mut lines = out.lines();
        let (actual, meta) = (lines.next().unwrap_or("").trim().to_string(), lines.next().unwrap_or("").trim().to_string());
        let (version, expected) = match landed(&state, &actual) {
            true => (state.pending_version.unwrap_or(state.version), actual.clone()),
            false => (state.version, state.sha256.clone()),
        };
        let drift = if actual.is_empty() {
            Some("the file is missing".into())
        } else if actual == "link" {
            Some("a symbolic link is in the file's place".into())
        } else if actual != expected {
            Some("the content differs".into())
        } else {
            meta_drift(&item.spec, &meta)
        };
        let status = match (&drift, actual.is_empty()) {
            (None, _) => "in-sync",
            (Some(_), true) => "missing",
            (Some(_), false) => "drifted",
        };
        Ok(Checked {
            status: Some(status.into()),
            drift,
            version: Some(version),
            env: Some(state.env.clone()),
            sha256: Some(actual),
            expected_sha256: Some(expected),
        })
    };
    let found = match crate::kit::exchange::call(&st.ctx, "config.check", &host.name, json!({ "item": name }), real).await {
        Ok(f) => f,
        Err(m) => {
            r.error = Some(m);
            r.duration = t0.elapsed().as_secs_f64();
            let _ = st.audit("check", &host.name, false, json!({ "item": name, "error": r.error }));
            return r;
        }
    };
    if found.status.as_deref() == Some("unknown") {
        r.ok = true;
        r.status = Some("unknown".into());
        r.error = Some(format!("opslet has not published {name} to {} yet", host.name));
        return r;
    }
    // What opslet recorded (none in a test that did not publish first).
    let state = match recorded(&items, &name, &host.name) {
        Ok(s) => s,
        Err(m) => {
            r.error = Some(m);
            return r;
        }
    };
    let actual = found.sha256.clone().unwrap_or_default();
    let state = match state {
        Some(state) if landed(&state, &actual) => {
            let s = HostState {
                version: state.pending_version.unwrap_or(state.version),
                sha256: actual.clone(),
                status: "in-sync".into(),
                error: None,
                pending_version: None,
                pending_sha256: None,
                at: chrono::Utc::now(),
                ..state.clone()
            };
            if !st.ctx.dry_run && !items.replace_state(&state, &s).unwrap_or(false) {
                r.error = Some(format!("{name} was published to {} while it was being checked; check again", host.name));
                return r;
            }
            Some(s)
        }
        other => other,
    };
    let status = found.status.clone().unwrap_or_else(|| if found.drift.is_some() { "drifted".into() } else { "in-sync".into() });
    r.drift = found.drift.clone().or_else(|| match status.as_str() {
        "missing" => Some("the file is missing".into()),
        "drifted" => Some("the content differs".into()),
        _ => None,
    });
    r.version = found.version.or(state.as_ref().map(|s| s.version));
    r.env = found.env.clone().or(state.as_ref().map(|s| s.env.clone()));
    r.before_sha256 = found.sha256.clone();
    r.after_sha256 = found.expected_sha256.clone().or(state.as_ref().map(|s| s.sha256.clone()));
    r.status = Some(status.clone());
    r.ok = true;
    let _ = st.audit(
        "check",
        &host.name,
        true,
        json!({ "item": name, "version": r.version, "expected_sha256": r.after_sha256, "actual_sha256": found.sha256, "status": status, "drift": r.drift, "planned": st.ctx.dry_run }),
    );
    // Record what was found (a publish that happened meanwhile wins); a dry run records nothing.
    if !st.ctx.dry_run
        && let Some(state) = &state
    {
        let f = match status.as_str() {
            "in-sync" if state.status == "drifted" || state.status == "unknown" => Some(HostState {
                status: "in-sync".into(),
                error: None,
                pending_version: None,
                pending_sha256: None,
                at: chrono::Utc::now(),
                ..state.clone()
            }),
            "missing" | "drifted" => Some(HostState {
                status: "drifted".into(),
                at: chrono::Utc::now(),
                run: Some(st.ctx.run_id.clone()),
                error: r.drift.clone(),
                ..state.clone()
            }),
            _ => None,
        };
        if let Some(f) = f
            && !items.replace_state(state, &f).unwrap_or(false)
        {
            r.error = Some(format!("{name} was published to {} while it was being checked; check again", host.name));
            r.duration = t0.elapsed().as_secs_f64();
            return r;
        }
    }
    if status != "in-sync" && repair {
        // The recorded version (the latest, when a test's fake checked a host opslet has no
        // record of), in the recorded environment: refused if the host is now tagged for another.
        let item = match r.version.filter(|v| *v > 0) {
            Some(v) => items.get(&name, v).ok().flatten(),
            None => items.resolve(&name, None).ok(),
        };
        let Some(item) = item else {
            r.ok = false;
            r.error = Some(format!("{name} v{} is not in the cmdb", r.version.unwrap_or(0)));
            r.duration = t0.elapsed().as_secs_f64();
            return r;
        };
        let env = env_for(&host, r.env.as_deref());
        let fixed = publish_host(Arc::clone(&st), Arc::new(item), host.clone(), env, Some("repair"), timeout).await;
        r.repaired = Some(fixed.ok && !fixed.planned);
        r.ok = fixed.ok;
        r.error = fixed.error;
        r.failed_at = fixed.failed_at;
        r.restored = fixed.restored;
        r.output = fixed.output;
        r.diff = fixed.diff;
        r.planned = fixed.planned;
    }
    r.duration = t0.elapsed().as_secs_f64();
    r
}

/// How `stat -c '%a %U %G'` output differs from the item's mode, owner and group (None: it
/// does not, or there is nothing to compare).
fn meta_drift(spec: &crate::cmdb::config_items::ItemSpec, meta: &str) -> Option<String> {
    let mut it = meta.split_whitespace();
    let (mode, owner, group) = (it.next()?, it.next()?, it.next()?);
    let mut out = Vec::new();
    if u32::from_str_radix(mode, 8).ok() != u32::from_str_radix(&spec.mode, 8).ok() {
        out.push(format!("mode is {mode:0>4}, the item says {}", spec.mode));
    }
    if let Some(o) = &spec.owner
        && o != owner
    {
        out.push(format!("owner is {owner}, the item says {o}"));
    }
    if let Some(g) = &spec.group
        && g != group
    {
        out.push(format!("group is {group}, the item says {g}"));
    }
    (!out.is_empty()).then(|| out.join("; "))
}
