//! Drift check and repair on one host ([`check_host`]): `config.check`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::RunState;
use super::publish::{HostResult, env_for, publish_host};
use super::script::with_sudo;
use crate::cmdb::Host;
use crate::cmdb::config_items::HostState;
use crate::kit::ssh::client::shell_quote;

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
    let state = match items.host_state(&name, &host.name) {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let Some(state) = state.filter(|s| s.version > 0 || s.pending_version.is_some()) else {
        r.ok = true;
        r.status = Some("unknown".into());
        r.error = Some(format!("opslet has not published {name} to {} yet", host.name));
        return r;
    };
    r.version = Some(state.version);
    r.env = Some(state.env.clone());
    // The version recorded (or, for a first publish whose outcome was lost, the one attempted).
    let v = if state.version > 0 { state.version } else { state.pending_version.unwrap_or(0) };
    let item = match items.get(&name, v) {
        Ok(Some(i)) => i,
        _ => {
            r.error = Some(format!("{name} v{v} is not in the cmdb"));
            return r;
        }
    };
    let inherited = st.ssh.snapshot().map(|s| s.inherited_groups(&host)).unwrap_or_default();
    let path = match item.spec.path_for(&state.env, &host, &inherited) {
        Ok(p) => p,
        Err(m) => {
            r.error = Some(m);
            return r;
        }
    };
    let p = shell_quote(&path);
    // The content's hash, then mode, owner and group (`stat`), of the file itself (not a link).
    let cmd = with_sudo(
        &item.spec.sudo,
        &format!("if [ -L {p} ]; then echo link; elif [ -e {p} ]; then sha256sum {p} | cut -d' ' -f1; stat -c '%a %U %G' {p}; fi"),
    );
    let (actual, meta) = match st.ssh.exec(&host, cmd, None, timeout).await {
        Ok(e) => {
            let out = String::from_utf8_lossy(&e.stdout).into_owned();
            let mut lines = out.lines();
            (lines.next().unwrap_or("").trim().to_string(), lines.next().unwrap_or("").trim().to_string())
        }
        Err(m) => {
            r.error = Some(m);
            r.duration = t0.elapsed().as_secs_f64();
            let _ = st.audit("check", &host.name, false, json!({ "item": name, "version": state.version, "error": r.error }));
            return r;
        }
    };
    // A publish whose outcome was lost may have landed after all: then the host runs that version.
    let landed = state.pending_sha256.as_deref() == Some(actual.as_str()) && !actual.is_empty();
    let state = if landed {
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
        s
    } else {
        state
    };
    r.version = Some(state.version);
    r.before_sha256 = Some(actual.clone());
    r.after_sha256 = Some(state.sha256.clone());
    r.drift = if actual.is_empty() {
        Some("the file is missing".into())
    } else if actual == "link" {
        Some("a symbolic link is in the file's place".into())
    } else if actual != state.sha256 {
        Some("the content differs".into())
    } else {
        meta_drift(&item.spec, &meta)
    };
    let status = match (&r.drift, actual.is_empty()) {
        (None, _) => "in-sync",
        (Some(_), true) => "missing",
        (Some(_), false) => "drifted",
    };
    r.status = Some(status.into());
    r.ok = true;
    let _ = st.audit(
        "check",
        &host.name,
        true,
        json!({ "item": name, "version": state.version, "expected_sha256": state.sha256, "actual_sha256": actual, "status": status, "drift": r.drift, "planned": st.ctx.dry_run }),
    );
    // Record what was found (a publish that happened meanwhile wins); a dry run records nothing.
    if !st.ctx.dry_run {
        let found = match status {
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
        if let Some(f) = found
            && !items.replace_state(&state, &f).unwrap_or(false)
        {
            r.error = Some(format!("{name} was published to {} while it was being checked; check again", host.name));
            r.duration = t0.elapsed().as_secs_f64();
            return r;
        }
    }
    if status != "in-sync" && repair {
        // The recorded version, in the recorded environment: refused if the host is now tagged
        // for another one.
        let env = env_for(&host, Some(&state.env));
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
