//! The `config` host module: publish config items (src/cmdb/config_items.rs) to hosts over SSH,
//! safely, and find and repair drift.
//!
//! Lua: `config.get`, `config.versions`, `config.render`, `config.status` (read);
//! `config.publish(name, selector, opts)` and `config.check(name, selector, {repair=})`
//! (docs/lua/config.md). Publishing one host is one SSH command fed the rendered file on stdin
//! ([`publish_script`]): write a temp file beside the target, validate it, keep the current file,
//! move the new one into place (a rename: atomic), reload, check health; on any failure after
//! the move, put the old file back and reload again. Hosts go in batches with a canary and a
//! failure limit, as for `ssh.run`. What each host runs is recorded in the cmdb; every publish,
//! rollback and repair is audited with the file's hashes before and after.
//!
//! Permission: `config = ["read"]`, `["read", "publish"]`, or `{ items = [...], hosts = [...],
//! actions = [...] }`. The commands that run are the item's (validate, reload, health), which
//! only `opslet config set` (audited) can change: `publish` grants running them, nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};
use serde::Serialize;
use serde_json::json;

use crate::cmdb::Host;
use crate::cmdb::config_items::{ConfigItems, HostState, ItemVersion, SecretFn, SudoSpec};
use crate::config::Config;
use crate::error::Error;
use crate::kit::fanout::{self as batch, Plan};
use crate::kit::ssh::Access;
use crate::kit::ssh::SshSettings;
use crate::kit::ssh::client::shell_quote;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;

pub struct ConfigModule {
    ssh: Arc<SshSettings>,
}

impl ConfigModule {
    pub fn new(ssh: SshSettings) -> ConfigModule {
        ConfigModule { ssh: Arc::new(ssh) }
    }
}

/// This module's calls, for their errors (`config.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("config");

const ACTIONS: &[&str] = &["read", "publish"];

#[derive(Debug, Clone)]
struct Scope {
    items: Vec<String>,
    hosts: Vec<String>,
    publish: bool,
}

impl Scope {
    fn parse(grant: &Grant) -> Result<Scope, String> {
        if let toml::Value::Table(t) = &grant.scope
            && let Some(k) = t.keys().find(|k| !["items", "hosts", "actions"].contains(&k.as_str()))
        {
            return Err(format!("unknown key `{k}` (known: items, hosts, actions)"));
        }
        let actions = grant.actions();
        if actions.is_empty() {
            return Err("give the actions: [\"read\"] or [\"read\", \"publish\"]".into());
        }
        if let Some(a) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(format!("unknown action `{a}` (known: {})", ACTIONS.join(", ")));
        }
        let (items, hosts) = match &grant.scope {
            toml::Value::Table(_) => (grant.list("items"), grant.list("hosts")),
            _ => (Vec::new(), Vec::new()),
        };
        let items = if items.is_empty() { vec!["*".to_string()] } else { items };
        let hosts = if hosts.is_empty() { vec!["*".to_string()] } else { hosts };
        for h in hosts.iter().filter(|h| *h != "*") {
            crate::cmdb::Selector::parse(h).map_err(|m| format!("hosts: `{h}`: {m}"))?;
        }
        Ok(Scope { items, hosts, publish: actions.iter().any(|a| a == "publish") })
    }

    fn allows_item(&self, name: &str) -> bool {
        self.items.iter().any(|p| crate::util::pattern_matches(p, name))
    }
}

struct RunState {
    ctx: Arc<RunCtx>,
    scope: Scope,
    ssh: Access,
    /// The items and host states, opened once per run.
    items: Result<ConfigItems, String>,
}

impl RunState {
    fn items(&self, call: &str) -> mlua::Result<ConfigItems> {
        self.items.clone().map_err(|m| LUA.err(call, m))
    }

    /// The item's version (the latest when None), if the permission reaches the item.
    fn item(&self, call: &str, name: &str, version: Option<u32>) -> mlua::Result<ItemVersion> {
        if !self.scope.allows_item(name) {
            return Err(LUA.err(
                call,
                format!("permission denied: config item `{name}` is outside the applet's config items ({})", self.scope.items.join(", ")),
            ));
        }
        self.items(call)?.resolve(name, version).map_err(|e| LUA.err(call, e))
    }

    fn hosts(&self, call: &str, selector: &str) -> mlua::Result<Vec<Host>> {
        let snap = self.ssh.snapshot().map_err(|m| LUA.err(call, m))?;
        let hosts = snap.select(selector).map_err(|e| LUA.err(call, e))?;
        if let Some(h) = hosts.iter().find(|h| !self.ssh.allows(&h.name)) {
            return Err(LUA.err(
                call,
                format!(
                    "permission denied: {} is outside the applet's config hosts ({}); nothing was sent",
                    h.name,
                    self.scope.hosts.join(", ")
                ),
            ));
        }
        Ok(hosts)
    }

    fn require_publish(&self, call: &str) -> mlua::Result<()> {
        if self.scope.publish {
            Ok(())
        } else {
            Err(LUA.err(
                call,
                "permission denied: the applet's manifest does not grant `publish` (add it: [permissions] config = [\"read\", \"publish\"])",
            ))
        }
    }

    /// Reads secrets for a template; every value read is kept in `used` (to mask it in diffs).
    fn secret_fn(&self, used: Arc<parking_lot::Mutex<Vec<(String, String)>>>) -> SecretFn {
        let ctx = Arc::clone(&self.ctx);
        Arc::new(move |name: &str| {
            let v = crate::kit::read_secret(&ctx, "a config item template", name)?;
            used.lock().push((name.to_string(), v.clone()));
            Ok(v)
        })
    }

    fn audit(&self, action: &str, host: &str, ok: bool, detail: serde_json::Value) -> Result<(), String> {
        self.ctx.record_action("config", action, host, ok, detail).map_err(|e| format!("could not record the action in the audit log: {e}"))
    }
}

/// Secrets as `<secret:NAME>`: what `config.render` gives an applet, which never holds them.
fn placeholder_secrets() -> SecretFn {
    Arc::new(|name: &str| Ok(format!("<secret:{name}>")))
}

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
fn env_for(host: &Host, asked: Option<&str>) -> Result<String, String> {
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

/// `cmd` with `{file}` and `{path}` replaced by quoted paths, in one pass (a path that itself
/// holds `{path}` is not substituted again).
fn fill(cmd: &str, file: &str, path: &str) -> String {
    let mut out = String::with_capacity(cmd.len());
    let mut rest = cmd;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{file}") {
            out.push_str(&shell_quote(file));
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{path}") {
            out.push_str(&shell_quote(path));
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The shell program that publishes one file, fed the file on stdin. Lines on stdout starting
/// with `opslet:` say what happened; the commands' own output goes to stderr.
fn publish_script(item: &ItemVersion, path: &str, new_sha: &str, tag: &str) -> String {
    let s = &item.spec;
    let (dir, base) = path.rsplit_once('/').map(|(d, b)| (if d.is_empty() { "/" } else { d }, b)).unwrap_or(("/", path));
    let tmp = format!("{dir}/.{base}.opslet-{tag}.tmp");
    let bak = format!("{dir}/.{base}.opslet-{tag}.bak");
    let q = shell_quote;
    let own = |f: &str| {
        let mut c = format!("chmod {} {f}", q(&s.mode));
        match (&s.owner, &s.group) {
            (Some(o), Some(g)) => c.push_str(&format!(" && chown {}:{} {f}", q(o), q(g))),
            (Some(o), None) => c.push_str(&format!(" && chown {} {f}", q(o))),
            (None, Some(g)) => c.push_str(&format!(" && chgrp {} {f}", q(g))),
            (None, None) => {}
        }
        c
    };
    let mut out = String::new();
    let mut line = |l: &str| {
        out.push_str(l);
        out.push('\n');
    };
    line(&format!("t={}; tmp={}; bak={}; d={}", q(path), q(&tmp), q(&bak), q(dir)));
    // One publish of this file at a time on the host: a lock on its folder (no extra file).
    line("exec 9<\"$d\" || { echo 'opslet: failed lock'; cat >/dev/null; exit 19; }");
    line("if command -v flock >/dev/null 2>&1; then flock -w 60 9 || { echo 'opslet: failed lock'; cat >/dev/null; exit 19; }; fi");
    // A symlink in its place could send the write anywhere.
    line(
        "if [ -L \"$t\" ]; then echo 'opslet: failed symlink'; echo \"$t is a symbolic link; opslet does not write through links\" >&2; cat >/dev/null; exit 18; fi",
    );
    line("before=$(sha256sum \"$t\" 2>/dev/null | cut -d' ' -f1); echo \"opslet: before $before\"");
    // The same content: only mode and owner are made right; nothing is reloaded.
    line(&format!(
        "if [ \"$before\" = {} ]; then cat >/dev/null; {} >&2 || {{ echo 'opslet: failed owner'; exit 21; }}; echo 'opslet: unchanged'; exit 0; fi",
        q(new_sha),
        own("\"$t\"")
    ));
    line("umask 077");
    line("cat >\"$tmp\" || { echo 'opslet: failed write'; rm -f \"$tmp\"; exit 20; }");
    line(&format!("{} >&2 || {{ echo 'opslet: failed owner'; rm -f \"$tmp\"; exit 21; }}", own("\"$tmp\"")));
    if let Some(v) = s.validate.as_deref().filter(|v| v.contains("{file}")) {
        line(&format!("( {} ) >&2 || {{ echo 'opslet: failed validate'; rm -f \"$tmp\"; exit 22; }}", fill(v, &tmp, path)));
    }
    line(
        "had=0; if [ -e \"$t\" ]; then had=1; cp -p \"$t\" \"$bak\" || { echo 'opslet: failed backup'; rm -f \"$tmp\" \"$bak\"; exit 23; }; fi",
    );
    line("mv -f \"$tmp\" \"$t\" || { echo 'opslet: failed install'; rm -f \"$tmp\" \"$bak\"; exit 24; }");
    let reload = s.reload.as_deref().map(|r| fill(r, path, path));
    // After the move, any failure puts the old file back (a first publish: removes the new one)
    // and reloads with it.
    line("restore() {");
    line(
        "  if [ $had = 1 ]; then mv -f \"$bak\" \"$t\" || { echo 'opslet: restored failed'; return; }; else rm -f \"$t\" || { echo 'opslet: restored failed'; return; }; fi",
    );
    match &reload {
        Some(r) => {
            line(&format!("  if ( {r} ) >&2; then echo 'opslet: restored reloaded'; else echo 'opslet: restored reload-failed'; fi"))
        }
        None => line("  echo 'opslet: restored'"),
    }
    line("}");
    if let Some(v) = s.validate.as_deref().filter(|v| !v.contains("{file}")) {
        line(&format!("( {} ) >&2 || {{ echo 'opslet: failed validate'; restore; exit 22; }}", fill(v, path, path)));
    }
    if let Some(r) = &reload {
        line(&format!("( {r} ) >&2 || {{ echo 'opslet: failed reload'; restore; exit 25; }}"));
    }
    if let Some(h) = s.health.as_deref() {
        line(&format!("( {} ) >&2 || {{ echo 'opslet: failed health'; restore; exit 26; }}", fill(h, path, path)));
    }
    line("rm -f \"$bak\"");
    line("echo \"opslet: after $(sha256sum \"$t\" | cut -d' ' -f1)\"");
    out
}

/// `body` run with the item's sudo setting.
fn with_sudo(sudo: &Option<SudoSpec>, body: &str) -> String {
    let user = match sudo {
        None | Some(SudoSpec::Root(false)) => return format!("sh -c {}", shell_quote(body)),
        Some(SudoSpec::Root(true)) => "root".to_string(),
        Some(SudoSpec::User(u)) => u.clone(),
    };
    format!("sudo -n -u {} -- sh -c {}", shell_quote(&user), shell_quote(body))
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

struct PublishOpts {
    env: Option<String>,
    timeout: Duration,
    plan: Plan,
}

fn parse_publish_opts(
    call: &str,
    opts: Option<Table>,
    settings: &SshSettings,
    extra: &[&str],
) -> mlua::Result<(PublishOpts, HashMap<String, Value>)> {
    // config.check publishes only the recorded environment.
    let takes_env = call != "check";
    let mut o = PublishOpts {
        env: None,
        timeout: settings.timeout,
        plan: Plan { concurrency: settings.concurrency, batch: None, canary: 0, stop_after: None },
    };
    let mut rest = HashMap::new();
    let Some(opts) = opts else { return Ok((o, rest)) };
    for pair in opts.pairs::<String, Value>() {
        let (k, v) = pair?;
        if batch::plan_option(&format!("config.{call}"), &k, v.clone(), &mut o.plan, &mut o.timeout, settings.concurrency)? {
            continue;
        }
        match k.as_str() {
            "env" if takes_env => match v {
                Value::String(s) => o.env = Some(s.to_str()?.to_string()),
                other => return Err(LUA.err(call, format!("opts.env: expected a string, got {}", other.type_name()))),
            },
            other if extra.contains(&other) => {
                rest.insert(other.to_string(), v);
            }
            other => {
                let mut known = if takes_env { vec!["env"] } else { vec![] };
                known.extend(["timeout", "concurrency", "batch", "canary", "stop_after"]);
                known.extend(extra);
                return Err(LUA.err(call, format!("unknown option `{other}` (known: {})", known.join(", "))));
            }
        }
    }
    Ok((o, rest))
}

/// Publishes `item` to one host (or, in a dry run, shows the diff). `action` is what the audit
/// log calls it: publish, rollback or repair.
async fn publish_host(
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
        match st.ssh.exec(&host, read, None, timeout).await {
            Ok(e) => {
                let out = String::from_utf8_lossy(&e.stdout).into_owned();
                let (kind, current) = out.split_once('\n').unwrap_or((out.as_str(), ""));
                match kind {
                    "link" => r.error = Some(format!("{path} on {} is a symbolic link; a publish would refuse it", host.name)),
                    _ => {
                        if kind == "file" {
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
    let res = st.ssh.exec(&host, script, Some(bytes::Bytes::from(content.into_bytes())), timeout).await;
    // Whether the host's file is known: after a lost connection or a timeout it is not.
    let mut known = true;
    match res {
        Err(m) => {
            known = false;
            r.error = Some(format!("{m}; what {} runs now is unknown: check it (config.check) before publishing again", host.name));
        }
        Ok(e) => {
            let out = String::from_utf8_lossy(&e.stdout);
            for line in out.lines() {
                let Some(rest) = line.strip_prefix("opslet: ") else { continue };
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                match k {
                    "before" if !v.is_empty() => r.before_sha256 = Some(v.to_string()),
                    "after" => r.after_sha256 = Some(v.to_string()),
                    "unchanged" => {
                        r.changed = Some(false);
                        r.after_sha256 = r.before_sha256.clone();
                    }
                    "failed" => r.failed_at = Some(v.to_string()),
                    "restored" => r.restored = Some(if v.is_empty() { "restored".into() } else { v.to_string() }),
                    _ => {}
                }
            }
            r.ok = e.exit_code == Some(0) && r.after_sha256.as_deref() == Some(new_sha.as_str());
            if r.ok && r.changed.is_none() {
                r.changed = Some(true);
            }
            if !r.ok {
                r.output = String::from_utf8_lossy(&e.stderr).trim_end().chars().take(4000).collect();
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

/// Compares the file on one host with what opslet published there; repairs drift when asked.
async fn check_host(st: Arc<RunState>, name: String, host: Host, repair: bool, timeout: Duration) -> HostResult {
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

async fn fan<F, Fut>(st: &Arc<RunState>, call: &'static str, hosts: Vec<Host>, plan: &Plan, work: F) -> Vec<HostResult>
where
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = HostResult> + Send + 'static,
{
    crate::kit::targets::fan_out_hosts(&st.ctx, format!("config.{call}"), hosts, plan, work).await
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    // Config items are published over the hosts' SSH logins: `[ssh]`.
    Ok(Arc::new(ConfigModule::new(SshSettings::from_config(config)?)))
}

impl HostModule for ConfigModule {
    fn name(&self) -> &'static str {
        "config"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(&Grant { module: "config", scope: scope.clone() }).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant).map_err(|m| LUA.err("permission", m))?;
        let ssh = Access::new(Arc::clone(&self.ssh), Arc::clone(ctx), scope.hosts.clone());
        let items = match &ctx.store {
            Some(store) => ConfigItems::open(store).map_err(|e| e.to_string()),
            None => Err("this run has no data store".to_string()),
        };
        let state = Arc::new(RunState { ctx: Arc::clone(ctx), scope, ssh, items });
        let t = lua.create_table()?;

        let st = Arc::clone(&state);
        t.set(
            "get",
            lua.create_function(move |lua, (name, opts): (String, Option<Table>)| {
                let version = match &opts {
                    Some(o) => o.get::<Option<u32>>("version")?,
                    None => None,
                };
                let v = st.item("get", &name, version)?;
                let mut j = serde_json::to_value(&v.spec).map_err(mlua::Error::external)?;
                j["version"] = json!(v.version);
                j["author"] = json!(v.author);
                j["message"] = json!(v.message);
                j["created_at"] = json!(v.created_at);
                crate::kit::json_to_lua(lua, &j)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "versions",
            lua.create_function(move |lua, name: String| {
                st.item("versions", &name, None)?;
                let h = st.items("versions")?.history(&name).map_err(|e| LUA.err("versions", e))?;
                let list: Vec<_> = h
                    .iter()
                    .map(|v| json!({ "version": v.version, "author": v.author, "message": v.message, "created_at": v.created_at, "diff": v.diff }))
                    .collect();
                crate::kit::to_lua(lua, &list)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "render",
            lua.create_function(move |_, (name, host, opts): (String, String, Option<Table>)| {
                let (mut env, mut version) = (None, None);
                if let Some(o) = opts {
                    env = o.get::<Option<String>>("env")?;
                    version = o.get::<Option<u32>>("version")?;
                }
                let item = st.item("render", &name, version)?;
                let snap = st.ssh.snapshot().map_err(|m| LUA.err("render", m))?;
                let h = snap.host(&host).cloned().ok_or_else(|| LUA.err("render", format!("no host `{host}` in the cmdb")))?;
                if !st.ssh.allows(&h.name) {
                    return Err(LUA.err(
                        "render",
                        format!("permission denied: {host} is outside the applet's config hosts ({})", st.scope.hosts.join(", ")),
                    ));
                }
                let env = env_for(&h, env.as_deref()).map_err(|m| LUA.err("render", m))?;
                // Secrets stay out of the applet: they render as <secret:NAME>.
                item.spec
                    .render(&env, &h, &snap.inherited_groups(&h), placeholder_secrets())
                    .map_err(|m| LUA.err("render", format!("{name} v{} for {host} ({env}): {m}", item.version)))
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "status",
            lua.create_function(move |lua, name: String| {
                st.item("status", &name, None)?;
                let mut s = st.items("status")?.states(&name).map_err(|e| LUA.err("status", e))?;
                s.retain(|x| st.ssh.allows(&x.host));
                crate::kit::to_lua(lua, &s)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "publish",
            lua.create_async_function(move |lua, (name, selector, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    st.require_publish("publish")?;
                    let (o, rest) = parse_publish_opts("publish", opts, st.ssh.settings(), &["version"])?;
                    let version = match rest.get("version") {
                        None | Some(Value::Nil) => None,
                        Some(Value::Integer(i)) if *i > 0 && *i <= i64::from(u32::MAX) => Some(*i as u32),
                        Some(other) => {
                            return Err(LUA.err(
                                "publish",
                                format!("opts.version: expected a version number, got {}", crate::runtime::builtins::log::display(other)),
                            ));
                        }
                    };
                    let item = Arc::new(st.item("publish", &name, version)?);
                    let hosts = st.hosts("publish", &selector)?;
                    let timeout = o.timeout;
                    let env = o.env.clone();
                    let st2 = Arc::clone(&st);
                    let results = fan(&st, "publish", hosts, &o.plan, move |h| {
                        let e = env_for(&h, env.as_deref());
                        publish_host(Arc::clone(&st2), Arc::clone(&item), h, e, None, timeout)
                    })
                    .await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "check",
            lua.create_async_function(move |lua, (name, selector, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let (o, rest) = parse_publish_opts("check", opts, st.ssh.settings(), &["repair"])?;
                    let repair = match rest.get("repair") {
                        None | Some(Value::Nil) => false,
                        Some(Value::Boolean(b)) => *b,
                        Some(other) => {
                            return Err(LUA.err("check", format!("opts.repair: expected true or false, got {}", other.type_name())));
                        }
                    };
                    if repair {
                        st.require_publish("check")?;
                    }
                    st.item("check", &name, None)?;
                    let hosts = st.hosts("check", &selector)?;
                    let timeout = o.timeout;
                    let st2 = Arc::clone(&st);
                    let results =
                        fan(&st, "check", hosts, &o.plan, move |h| check_host(Arc::clone(&st2), name.clone(), h, repair, timeout)).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdb::config_items::ItemSpec;

    fn item(validate: &str) -> ItemVersion {
        let spec = ItemSpec::parse(
            "x.toml",
            &format!("name = \"app\"\npath = \"/etc/my app/app.conf\"\nvalidate = \"{validate}\"\nreload = \"systemctl reload app\"\ntemplate = \"x\"\n"),
            None,
        )
        .unwrap();
        ItemVersion {
            name: "app".into(),
            version: 1,
            author: "a".into(),
            message: "m".into(),
            created_at: chrono::Utc::now(),
            spec,
            diff: String::new(),
        }
    }

    #[test]
    fn the_script_validates_the_candidate_before_the_move_when_it_can() {
        let s = publish_script(&item("app --check {file}"), "/etc/my app/app.conf", "abc", "r1");
        let validate = s.find("app --check '/etc/my app/.app.conf.opslet-r1.tmp'").expect("validated as the temp file");
        assert!(validate < s.find("mv -f \"$tmp\" \"$t\"").unwrap(), "{s}");
        // Without {file}, the installed file is validated, and a failure restores the old one.
        let s = publish_script(&item("app --check"), "/etc/my app/app.conf", "abc", "r1");
        let mv = s.find("mv -f \"$tmp\" \"$t\"").unwrap();
        let validate = s.find("( app --check ) >&2 || { echo 'opslet: failed validate'; restore;").unwrap();
        assert!(mv < validate, "{s}");
        assert!(s.contains("t='/etc/my app/app.conf'"));
    }

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
