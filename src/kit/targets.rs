//! What a run may reach: the cmdb as the run started, and the hosts a permission's selectors
//! pick in it. Shared by the modules that reach hosts (ssh, config, netdev, ipmi), so each
//! checks scope the same way and words refusals the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::cmdb::{Cmdb, Host, Snapshot};
use crate::runtime::context::RunCtx;

pub struct Targets {
    /// `ssh`, `netdev`, ...: the Lua global, for messages.
    module: &'static str,
    /// `hosts`, `devices`: the permission's key, for messages.
    what: &'static str,
    /// The permission's selectors.
    selectors: Vec<String>,
    /// The cmdb as the run started: targets, scope and logins all come from it, so an applet
    /// that may also write the cmdb cannot move hosts into its scope mid-run.
    pub snapshot: Result<Arc<Snapshot>, String>,
    /// Names the selectors pick.
    allowed: BTreeSet<String>,
}

impl Targets {
    pub fn new(ctx: &RunCtx, module: &'static str, what: &'static str, selectors: Vec<String>) -> Targets {
        let snapshot = match &ctx.store {
            None => Err("this run has no data store (no cmdb to find hosts in)".to_string()),
            Some(store) => Cmdb::new(store.clone()).and_then(|c| c.snapshot()).map(Arc::new).map_err(|e| e.to_string()),
        };
        let mut t = Targets { module, what, selectors, snapshot, allowed: BTreeSet::new() };
        t.allowed = t.selectors.iter().flat_map(|s| t.pick(s)).collect();
        t
    }

    /// The names `selector` picks (none when it picks nothing or the cmdb is unreadable).
    pub fn pick(&self, selector: &str) -> Vec<String> {
        match &self.snapshot {
            Ok(snap) => snap.select(selector).map(|hs| hs.into_iter().map(|h| h.name).collect()).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Per host name, the index of the first entry (of `entries`' selectors) that picks it:
    /// which `[[MODULE.credentials]]` entry logs in where.
    pub fn first_match<'a>(&self, entries: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (i, sel) in entries.enumerate() {
            for name in self.pick(sel) {
                out.entry(name).or_insert(i);
            }
        }
        out
    }

    pub fn allows(&self, name: &str) -> bool {
        self.allowed.contains(name)
    }

    fn err(&self, call: &str, m: impl std::fmt::Display) -> mlua::Error {
        mlua::Error::runtime(format!("{}.{call}: {m}", self.module))
    }

    /// The hosts `selector` picks, all inside the permission; else an error naming those outside.
    pub fn select(&self, call: &str, selector: &str) -> mlua::Result<Vec<Host>> {
        let snap = self.snapshot.as_ref().map_err(|m| self.err(call, m))?;
        let hosts = snap.select(selector).map_err(|e| self.err(call, e))?;
        let outside: Vec<&str> = hosts.iter().filter(|h| !self.allows(&h.name)).map(|h| h.name.as_str()).collect();
        if !outside.is_empty() {
            let shown =
                if outside.len() > 5 { format!("{} and {} more", outside[..5].join(", "), outside.len() - 5) } else { outside.join(", ") };
            return Err(self.err(
                call,
                format!(
                    "permission denied: {shown} {} outside the applet's {} {} ({}); nothing was sent",
                    if outside.len() == 1 { "is" } else { "are" },
                    self.module,
                    self.what,
                    self.selectors.join(", ")
                ),
            ));
        }
        Ok(hosts)
    }

    /// One host by cmdb name, inside the permission.
    pub fn one(&self, call: &str, name: &str) -> mlua::Result<Host> {
        let snap = self.snapshot.as_ref().map_err(|m| self.err(call, m))?;
        let host = snap.host(name).cloned().ok_or_else(|| self.err(call, format!("no host `{name}` in the cmdb")))?;
        if !self.allows(&host.name) {
            return Err(self.err(
                call,
                format!(
                    "permission denied: {name} is outside the applet's {} {} ({}); nothing was sent",
                    self.module,
                    self.what,
                    self.selectors.join(", ")
                ),
            ));
        }
        Ok(host)
    }
}

/// Runs `work` on each host per `plan` (canary, batches, concurrency, stop-after) on the I/O
/// threads, showing progress as `call` (`ssh.run`, `config.publish`); results in the order of
/// `hosts`.
pub async fn fan_out_hosts<R, F, Fut>(ctx: &Arc<RunCtx>, call: String, hosts: Vec<Host>, plan: &super::fanout::Plan, work: F) -> Vec<R>
where
    R: super::fanout::Outcome,
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let by_name: HashMap<String, Host> = hosts.into_iter().map(|h| (h.name.clone(), h)).collect();
    let (shown, name) = (Arc::clone(ctx), call.clone());
    let progress = move |c: super::fanout::Counts| {
        shown.progress(crate::runtime::context::Progress {
            call: name.clone(),
            total: c.total,
            ok: c.ok,
            failed: c.failed,
            skipped: c.skipped,
            pending: c.pending(),
        })
    };
    let results =
        super::fanout::fan_out(names, plan, super::io::io_runtime().handle(), move |n| work(by_name[&n].clone()), &progress).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let skipped = results.iter().filter(|r| r.is_skipped()).count();
    ctx.record_targets(&call, ok, results.len() - ok - skipped, skipped);
    results
}

/// What a run read for each `[[MODULE.credentials]]` entry (logins from secrets, CA files),
/// read once per run however many hosts use the entry; failures are kept too.
pub struct PerEntry<T: Clone> {
    read: parking_lot::Mutex<HashMap<usize, Result<T, String>>>,
}

impl<T: Clone> Default for PerEntry<T> {
    fn default() -> Self {
        PerEntry { read: parking_lot::Mutex::default() }
    }
}

impl<T: Clone> PerEntry<T> {
    pub fn get(&self, entry: usize, read: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        if let Some(v) = self.read.lock().get(&entry) {
            return v.clone();
        }
        let v = read();
        self.read.lock().insert(entry, v.clone());
        v
    }
}

/// Checks entry `i` of `[[MODULE.credentials]]`: its selector (under `key`: `hosts`, `devices`)
/// parses and it names a user; `has_login` is whether it names a password or key secret (None
/// where the type itself requires one).
pub fn check_credential(module: &str, i: usize, key: &str, selector: &str, user: &str, has_login: Option<bool>) -> Result<(), String> {
    let at = format!("{module}.credentials[{i}] ({key} = \"{selector}\")");
    crate::cmdb::Selector::parse(selector).map_err(|m| format!("{at}: {key}: {m}"))?;
    if user.trim().is_empty() {
        return Err(format!("{at}: user is empty"));
    }
    if has_login == Some(false) {
        return Err(format!("{at}: give password_secret or key_secret (the name of a secret set with `opslet secret set`)"));
    }
    Ok(())
}
