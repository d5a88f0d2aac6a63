//! Publishing one config item to one host ([`publish_host`]), and what happened on a host
//! ([`HostResult`], also what `config.check` returns).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::RunState;
use super::script::{publish_script, with_sudo};
use crate::cmdb::Host;
use crate::cmdb::config_items::{HostState, ItemVersion};
use crate::kit::ssh::client::shell_quote;

/// `text` with every secret value in `used` replaced by its placeholder (whole values, so a
/// multi-line key is masked before a diff splits it into lines).
fn mask(text: &str, used: &[(String, String)]) -> String {
    let mut t = text.to_string();
    let mut used: Vec<&(String, String)> = used.iter().filter(|(_, v)| !v.is_empty()).collect();
    used.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (name, v) in used {
        t = t.replace(v.as_str(), &format!("<secret:{name}>"));
    }
    t
}

/// The environment a host is published for: the one asked for, else its `env` tag.
pub(super) fn env_for(host: &Host, asked: Option<&str>) -> Result<String, String> {
    let tagged = host.tags.get("env").map(String::as_str);
    match (asked, tagged) {
        (Some(a), Some(t)) if a != t => {
            Err(format!("{} is tagged env={t}, and this publish is for env {a}: refusing to put {a}'s configuration there", host.name))
        }
        (Some(a), _) => Ok(a.to_string()),
        (None, Some(t)) => Ok(t.to_string()),
        (None, None) => Err(format!("{} has no `env` tag, and no env was given (opts.env)", host.name)),
    }
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// What happened on one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostResult {
    pub host: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// publish, rollback, repair, or (config.check) check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Whether the file on the host changed (false: it already had this content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The step that failed: write, owner, validate, backup, install, reload, health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// After a failure past the move, the old file was put back: `reloaded` (and the service
    /// reloaded with it), `reload-failed`, or `restored` (the item has no reload command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_sha256: Option<String>,
    /// config.check: in-sync, drifted, missing, or unknown (never published by opslet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// config.check: what differs (content, mode, owner, group, a link in its place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<bool>,
    /// Dry run: the change the publish would make, as a unified diff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The commands' own output (stderr) when something failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub planned: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

crate::kit::fanout::impl_outcome!(HostResult);

/// What publishing did on one host (`config.publish`), as a test fakes it and a transcript keeps
/// it: the outcome of the one SSH command that writes, validates, installs, reloads and checks.
/// A fake may give only what matters: `{}` or `{ changed = false }` succeeded; `{ failed_at =
/// "validate", restored = "reloaded", output = "..." }` failed (`ok` defaults to no `failed_at`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Published {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// false: the host had this content already (default true when it went well).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_sha256: Option<String>,
    /// Default: the published content's, when it went well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    /// The commands' own output (stderr).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// The file on a host now (`config.current`, what a dry-run publish diffs against): its
/// `content`, none (no file), or a symbolic `link` in its place.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Current {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
}

/// Publishes `item` to one host (or, in a dry run, shows the diff). `action` is what the audit
/// log calls it: publish, rollback or repair.
pub(super) async fn publish_host(
    st: Arc<RunState>,
    item: Arc<ItemVersion>,
    host: Host,
    env: Result<String, String>,
    action: Option<&'static str>,
    timeout: Duration,
) -> HostResult {
    let t0 = Instant::now();
    let mut r = HostResult { host: host.name.clone(), version: Some(item.version), ..Default::default() };
    let items = match st.items.clone() {
        Ok(i) => i,
        Err(m) => {
            r.error = Some(m);
            return r;
        }
    };
    let previous = items.host_state(&item.name, &host.name).ok().flatten();
    let action = action.unwrap_or(match &previous {
        Some(p) if p.version > item.version => "rollback",
        _ => "publish",
    });
    r.action = Some(action.to_string());
    // A run whose approval was skipped because its plan showed no publish to an environment may
    // not publish there now (an applet whose dry run says less than it does).
    let env = env.and_then(|e| match st.ctx.unapproved_envs.contains(&e) {
        true => Err(format!(
            "a publish to env {e} needs approval, and this run's plan showed none there, so nobody approved one; run it again so that its plan shows the publish to {e}"
        )),
        false => Ok(e),
    });
    let env = match env {
        Ok(e) => e,
        Err(m) => {
            let _ = st.audit(action, &host.name, false, json!({ "item": item.name, "version": item.version, "error": m }));
            r.error = Some(m);
            return r;
        }
    };
    r.env = Some(env.clone());
    let inherited = st.ssh.snapshot().map(|s| s.inherited_groups(&host)).unwrap_or_default();
    let used = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let rendered = item
        .spec
        .path_for(&env, &host, &inherited)
        .and_then(|p| item.spec.render(&env, &host, &inherited, st.secret_fn(Arc::clone(&used))).map(|c| (p, c)));
    let (path, content) = match rendered {
        Ok(pc) => pc,
        Err(m) => {
            r.error = Some(format!("rendering {} v{} for {} ({env}): {m}", item.name, item.version, host.name));
            let _ =
                st.audit(action, &host.name, false, json!({ "item": item.name, "version": item.version, "env": env, "error": r.error }));
            return r;
        }
    };
    let new_sha = sha256(content.as_bytes());
    if st.ctx.dry_run {
        // Read what is there now (not through a link), to show the change with secrets masked.
        let p = shell_quote(&path);
        let read = with_sudo(
            &item.spec.sudo,
            &format!("if [ -L {p} ]; then echo link; elif [ -e {p} ]; then echo file; cat {p}; else echo none; fi"),
        );
        let real = async {
            let e = st.ssh.exec(&host, read, None, timeout).await?;
            let out = String::from_utf8_lossy(&e.stdout).into_owned();
            let (kind, current) = out.split_once('\n').unwrap_or((out.as_str(), ""));
            Ok(match kind {
                "link" => Current { content: None, link: true },
                "file" => Current { content: Some(current.to_string()), link: false },
                _ => Current::default(),
            })
        };
        let args = json!({ "item": item.name, "version": item.version, "env": env, "path": path });
        match crate::kit::exchange::call(&st.ctx, "config.current", &host.name, args, real).await {
            Ok(now) => {
                let current = now.content.as_deref().unwrap_or("");
                match now.link {
                    true => r.error = Some(format!("{path} on {} is a symbolic link; a publish would refuse it", host.name)),
                    false => {
                        if now.content.is_some() {
                            r.before_sha256 = Some(sha256(current.as_bytes()));
                        }
                        let used = used.lock();
                        r.changed = Some(current != content);
                        r.diff = Some(crate::cmdb::device_configs::unified_diff(
                            &mask(current, &used),
                            &mask(&content, &used),
                            &format!("{}:{path} (now)", host.name),
                            &format!("{} v{} ({env})", item.name, item.version),
                        ));
                        r.ok = true;
                        r.planned = true;
                        r.after_sha256 = Some(new_sha.clone());
                    }
                }
            }
            Err(m) => r.error = Some(format!("reading the current file: {m}")),
        }
        let _ = st.audit(
            action,
            &host.name,
            r.ok,
            json!({ "item": item.name, "version": item.version, "env": env, "planned": true, "before_sha256": r.before_sha256, "after_sha256": new_sha, "error": r.error }),
        );
        r.duration = t0.elapsed().as_secs_f64();
        return r;
    }
    let base_detail = json!({ "item": item.name, "version": item.version, "env": env, "path": path, "after_sha256": new_sha });
    let pending = crate::kit::Pending::new(&st.ctx, "config", action, &host.name, base_detail);
    let tag: String = st.ctx.run_id.chars().rev().take(12).collect();
    let script = with_sudo(&item.spec.sudo, &publish_script(&item, &path, &new_sha, &tag));
    // The one command that publishes, fed the file on stdin; in a test a fake answers instead.
    let real = async {
        let e = st.ssh.exec(&host, script, Some(bytes::Bytes::from(content.into_bytes())), timeout).await?;
        let mut a = Published { exit_code: e.exit_code, ..Default::default() };
        let out = String::from_utf8_lossy(&e.stdout);
        for line in out.lines() {
            let Some(rest) = line.strip_prefix("opslet: ") else { continue };
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            match k {
                "before" if !v.is_empty() => a.before_sha256 = Some(v.to_string()),
                "after" => a.after_sha256 = Some(v.to_string()),
                "unchanged" => {
                    a.changed = Some(false);
                    a.after_sha256 = a.before_sha256.clone();
                }
                "failed" => a.failed_at = Some(v.to_string()),
                "restored" => a.restored = Some(if v.is_empty() { "restored".into() } else { v.to_string() }),
                _ => {}
            }
        }
        a.ok = Some(e.exit_code == Some(0) && a.after_sha256.as_deref() == Some(new_sha.as_str()));
        a.output = String::from_utf8_lossy(&e.stderr).trim_end().chars().take(4000).collect();
        Ok(a)
    };
    let args = json!({ "item": item.name, "version": item.version, "env": env, "path": path, "action": action });
    let res = crate::kit::exchange::call(&st.ctx, "config.publish", &host.name, args, real).await;
    // Whether the host's file is known: after a lost connection or a timeout it is not.
    let mut known = true;
    match res {
        Err(m) => {
            known = false;
            r.error = Some(format!("{m}; what {} runs now is unknown: check it (config.check) before publishing again", host.name));
        }
        Ok(e) => {
            r.ok = e.ok.unwrap_or(e.failed_at.is_none());
            r.before_sha256 = e.before_sha256;
            r.after_sha256 = e.after_sha256.or_else(|| r.ok.then(|| new_sha.clone()));
            r.changed = e.changed;
            r.failed_at = e.failed_at;
            r.restored = e.restored;
            if r.ok && r.changed.is_none() {
                r.changed = Some(true);
            }
            if !r.ok {
                r.output = e.output;
                let exit = e.exit_code.map_or_else(|| "no exit status".to_string(), |c| format!("exit {c}"));
                r.error = Some(match (&r.failed_at, &r.restored) {
                    (Some(stage), Some(how)) => {
                        let put_back = if r.before_sha256.is_some() {
                            "the previous file was put back"
                        } else {
                            "the new file was removed (there was none before)"
                        };
                        match how.as_str() {
                            "failed" => {
                                known = false;
                                format!(
                                    "{stage} failed on {}, and putting the previous file back failed too: the host needs a look",
                                    host.name
                                )
                            }
                            "reloaded" => format!("{stage} failed on {}; {put_back} and the service reloaded with it", host.name),
                            "reload-failed" => format!("{stage} failed on {}; {put_back}, but reloading the service failed too", host.name),
                            _ => format!("{stage} failed on {}; {put_back}", host.name),
                        }
                    }
                    (Some(stage), None) => format!("{stage} failed on {}; the file in place was not touched", host.name),
                    _ => {
                        known = false;
                        format!("publishing on {} ended without the published content in place ({exit})", host.name)
                    }
                });
            }
        }
    }
    r.duration = t0.elapsed().as_secs_f64();
    // What the host runs now.
    let now = chrono::Utc::now();
    let run = Some(st.ctx.run_id.clone());
    let fresh = |status: &str, version: u32, sha: String| HostState {
        item: item.name.clone(),
        host: host.name.clone(),
        version,
        env: env.clone(),
        sha256: sha,
        status: status.into(),
        at: now,
        run: run.clone(),
        error: r.error.clone(),
        pending_version: None,
        pending_sha256: None,
    };
    let state = if r.ok {
        fresh("in-sync", item.version, new_sha.clone())
    } else {
        // The old file stays (or is back), or what is there is unknown: keep the record of the
        // version last published, marked.
        let status = if known { "failed" } else { "unknown" };
        let mut s = match previous.clone() {
            Some(p) => HostState { status: status.into(), at: now, run: run.clone(), error: r.error.clone(), ..p },
            None => fresh(status, 0, r.before_sha256.clone().unwrap_or_default()),
        };
        if !known {
            s.pending_version = Some(item.version);
            s.pending_sha256 = Some(new_sha.clone());
        } else {
            s.pending_version = None;
            s.pending_sha256 = None;
        }
        s
    };
    if let Err(e) = items.put_state(&state) {
        r.ok = false;
        r.error = Some(format!("could not record the host's state: {e}"));
    }
    let detail = json!({
        "item": item.name, "version": item.version, "env": env, "path": path,
        "before_sha256": r.before_sha256, "after_sha256": r.after_sha256, "changed": r.changed,
        "previous_version": previous.as_ref().map(|p| p.version),
        "failed_at": r.failed_at, "restored": r.restored, "error": r.error,
        "duration_ms": t0.elapsed().as_millis() as u64,
    });
    pending.finish();
    if let Err(m) = st.audit(action, &host.name, r.ok, detail) {
        r.ok = false;
        r.error = Some(m);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_tags_guard_against_the_wrong_environment() {
        let mut h = Host { name: "db1".into(), ..Default::default() };
        assert!(env_for(&h, None).unwrap_err().contains("no `env` tag"));
        assert_eq!(env_for(&h, Some("dev")).unwrap(), "dev");
        h.tags.insert("env".into(), "prod".into());
        assert_eq!(env_for(&h, None).unwrap(), "prod");
        assert!(env_for(&h, Some("dev")).unwrap_err().contains("tagged env=prod"));
    }
}
