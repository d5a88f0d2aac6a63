//! Notifications (docs/notifications.md): `[[notify.rule]]`s of opslet.toml turn job ends, runs
//! waiting for approval and config drift into deliveries to a signed webhook, email or a chat
//! webhook.
//!
//! ```text
//!   Jobs::finish ──on_end──┐
//!   audit tap (drift) ─────┼──> Notifier::emit ──rules──> Delivery (stored `pending`) ──task──> attempts
//!   approval_needed ───────┘                                    │ each attempt recorded; backoff doubles
//!                                                               └──> `delivered` / `failed`, audited
//! ```
//!
//! A delivery is stored before it is sent, so one still pending when the server stops is sent
//! after the next start. Every text and body is passed through a redactor of the stored secrets'
//! values when it is made and again when it is sent; secret params are redacted in jobs already.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::notify::{MAX_BACKOFF, NotifyConfig, NotifyEvent, NotifyRule, SmtpConfig, SmtpTls};
use crate::error::Error;
use crate::runtime::redact::Redactor;
use crate::store::audit::{AuditEvent, AuditRecord};
use crate::store::{SYSTEM_ACTOR, Store, Tree, keys};

use super::jobs::{Job, Jobs};

/// Delivery records kept; older ones that ended are removed as new ones come.
pub const KEEP: usize = 10_000;
/// Deliveries sent at once.
const SENDING_AT_ONCE: usize = 8;
/// Hosts named in one drift message (the count says how many there were).
const DRIFT_HOSTS_SHOWN: usize = 50;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// What is sent, as stored (never shown: a URL's path may be a credential).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "lowercase")]
enum Outgoing {
    /// A JSON POST signed with the stored secret `secret`; `sent_at` is added per attempt.
    Webhook {
        url: String,
        secret: String,
        payload: Value,
    },
    Chat {
        url: String,
        text: String,
    },
    Email {
        to: Vec<String>,
        subject: String,
        text: String,
    },
}

/// One notification to one channel, with each attempt's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// UUIDv7; also `X-Opslet-Delivery` of a webhook.
    pub id: String,
    /// The rule's name (or `rule[N]`).
    pub rule: String,
    /// `failure`, `success`, `limit`, `approval`, `drift` or `test`.
    pub event: String,
    /// `webhook`, `email` or `chat`.
    pub channel: String,
    /// The URL's scheme and host (the rest may be a credential), or the recipients.
    pub target: String,
    /// The job (or run) it is about.
    pub job: Option<String>,
    /// `name@version`.
    pub applet: Option<String>,
    /// The one-line summary (an email's subject).
    pub subject: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    send: Outgoing,
}

impl Delivery {
    /// The record as the API and `opslet notify list` show it (without what is sent).
    pub fn view(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("deliveries serialize");
        if let Some(m) = v.as_object_mut() {
            m.remove("send");
        }
        v
    }
}

fn decode(bytes: &[u8]) -> Result<Delivery, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Store(format!("a notification delivery record is unreadable: {e}")))
}

/// Deliveries, newest first, optionally only those with `status`.
pub fn list(store: &Store, status: Option<DeliveryStatus>, limit: usize) -> Result<Vec<Delivery>, Error> {
    let mut out = Vec::new();
    for item in store.tree(keys::NOTIFY_DELIVERIES).iter().rev() {
        let (_, v) = item?;
        let d = decode(&v)?;
        if status.is_none_or(|s| d.status == s) {
            out.push(d);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// One delivery by id.
pub fn get(store: &Store, id: &str) -> Result<Option<Delivery>, Error> {
    store.tree(keys::NOTIFY_DELIVERIES).get(id.as_bytes())?.map(|b| decode(&b)).transpose()
}

/// Something a rule may be told of.
pub struct Event {
    pub kind: NotifyEvent,
    /// The job or run it is about.
    pub run_id: String,
    /// `name@version` (or what was asked for).
    pub applet: String,
    pub user: String,
    /// The job, where there is one.
    pub job: Option<Job>,
    /// What a message says after the applet and job: `failed`, `waits for approval`, ...
    pub what: String,
    /// The first line of the error or reason, for the summary.
    pub why: Option<String>,
    /// More lines of the text body (`key: value`).
    pub lines: Vec<(String, String)>,
    /// The webhook body's `detail`.
    pub detail: Value,
}

/// Sends notifications. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: NotifyConfig,
    store: Store,
    tree: Tree,
    rt: parking_lot::Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    http: reqwest::Client,
    smtp_ca: Option<Vec<u8>>,
    sending: Arc<tokio::sync::Semaphore>,
    /// Drift `config.check` found, per run, until the run ends.
    drift: parking_lot::Mutex<HashMap<String, Vec<Value>>>,
    /// Deliveries stored since the last pruning.
    since_prune: AtomicU32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.lock().take() {
            rt.shutdown_background();
        }
    }
}

/// The event a job's end is, if any (by status name, so statuses added later are not events
/// until they are named here).
fn job_event(job: &Job) -> Option<(NotifyEvent, &'static str)> {
    Some(match job.status.name() {
        "ok" => (NotifyEvent::Success, "succeeded"),
        "limit_exceeded" => (NotifyEvent::Limit, "hit a limit"),
        "error" => (NotifyEvent::Failure, "failed"),
        "invalid_params" => (NotifyEvent::Failure, "failed (invalid params)"),
        "invalid_applet" => (NotifyEvent::Failure, "failed (invalid applet)"),
        "interrupted" => (NotifyEvent::Failure, "was interrupted"),
        "rejected" => (NotifyEvent::Failure, "was rejected"),
        "expired" => (NotifyEvent::Failure, "expired waiting for approval"),
        _ => return None,
    })
}

fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let cut = crate::util::truncate(line, 200);
    if cut.len() < line.len() { format!("{cut}…") } else { cut.to_string() }
}

/// A URL without its path, query and login (any of which may be a credential).
fn shown_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(p) => match p.port() {
            Some(port) => format!("{}://{}:{port}/…", p.scheme(), p.host_str().unwrap_or("")),
            None => format!("{}://{}/…", p.scheme(), p.host_str().unwrap_or("")),
        },
        Err(_) => "(unreadable URL)".into(),
    }
}

fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "applet": job.applet,
        "reference": job.reference,
        "hash": job.hash,
        "user": job.user,
        "status": job.status.name(),
        "dry_run": job.dry_run,
        "params": job.params,
        "error": job.error,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    })
}

impl Event {
    /// The event of a job that ended, if its status is one.
    pub fn job_ended(job: &Job) -> Option<Event> {
        let (kind, what) = job_event(job)?;
        let mut lines = vec![("status".to_string(), job.status.name().to_string())];
        if let (Some(s), Some(f)) = (job.started_at.or(Some(job.submitted_at)), job.finished_at) {
            let ms = (f - s).num_milliseconds().max(0);
            lines.push(("duration".into(), format!("{}.{:03}s", ms / 1000, ms % 1000)));
        }
        Some(Event {
            kind,
            run_id: job.id.clone(),
            applet: if job.applet.is_empty() { job.reference.clone() } else { job.applet.clone() },
            user: job.user.clone(),
            job: Some(job.clone()),
            what: what.into(),
            why: job.error.as_deref().map(first_line),
            lines,
            detail: json!({}),
        })
    }

    /// A run that waits for approval: why (the rules it matched), and how many approvals it needs.
    pub fn approval_needed(job: &Job, reasons: &[String], needed: usize) -> Event {
        Event {
            kind: NotifyEvent::Approval,
            run_id: job.id.clone(),
            applet: if job.applet.is_empty() { job.reference.clone() } else { job.applet.clone() },
            user: job.user.clone(),
            job: Some(job.clone()),
            what: "waits for approval".into(),
            why: reasons.first().map(|r| first_line(r)),
            lines: vec![("approvals needed".into(), needed.to_string()), ("reasons".into(), reasons.join("; "))],
            detail: json!({ "reasons": reasons, "needed": needed }),
        }
    }
}

impl Notifier {
    /// The notifier of a server: sends what `config`'s rules match, watches `jobs` end and the
    /// audit log for drift, and resumes deliveries a stopped server left pending. None when
    /// there are no rules and nothing is pending.
    pub fn start(config: &NotifyConfig, store: &Store, jobs: &Jobs) -> Result<Option<Notifier>, Error> {
        let tree = store.tree(keys::NOTIFY_DELIVERIES);
        let pending = pending_ids(&tree)?;
        if config.rule.is_empty() && pending.is_empty() {
            return Ok(None);
        }
        let n = Notifier::new(config, store)?;
        let weak = Arc::downgrade(&n.inner);
        jobs.on_end(Arc::new(move |job: &Job| {
            if let Some(inner) = weak.upgrade()
                && let Some(ev) = Event::job_ended(job)
            {
                Notifier { inner }.emit(ev);
            }
        }));
        let weak = Arc::downgrade(&n.inner);
        store.audit().add_tap(Arc::new(move |rec: &AuditRecord| tap(&weak, rec)));
        for id in pending {
            n.spawn(id);
        }
        Ok(Some(n))
    }

    /// A notifier without watches (`start` adds them).
    pub fn new(config: &NotifyConfig, store: &Store) -> Result<Notifier, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("opslet-notify")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("the notifier's runtime: {e}")))?;
        let http = crate::kit::http::client(crate::kit::http::Options {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            trust: crate::kit::http::Trust::System,
            redirects: false,
            read_timeout: None,
        })
        .map_err(|m| Error::Config(format!("notify: {m}")))?;
        let smtp_ca = match config.smtp.as_ref().and_then(|s| s.ca.as_ref()) {
            Some(p) => Some(std::fs::read(p).map_err(|e| Error::Config(format!("invalid config: notify.smtp.ca {}: {e}", p.display())))?),
            None => None,
        };
        let handle = rt.handle().clone();
        Ok(Notifier {
            inner: Arc::new(Inner {
                config: config.clone(),
                tree: store.tree(keys::NOTIFY_DELIVERIES),
                store: store.clone(),
                rt: parking_lot::Mutex::new(Some(rt)),
                handle,
                http,
                smtp_ca,
                sending: Arc::new(tokio::sync::Semaphore::new(SENDING_AT_ONCE)),
                drift: Default::default(),
                since_prune: AtomicU32::new(u32::MAX / 2),
            }),
        })
    }

    /// A run waits for approval: `reasons` (the approval rules it matched, in words) and the
    /// number of approvals it needs. Rules with `on = ["approval"]` are told.
    pub fn approval_needed(&self, job: &Job, reasons: &[String], needed: usize) {
        self.emit(Event::approval_needed(job, reasons, needed));
    }

    /// Stores a delivery for each rule `ev` matches and starts sending them. Returns their ids.
    pub fn emit(&self, ev: Event) -> Vec<String> {
        let name = ev.applet.split('@').next().unwrap_or_default().to_string();
        let chosen: Vec<usize> = (0..self.inner.config.rule.len())
            .filter(|i| {
                let r = self.inner.config.rule[*i].get_ref();
                r.on.contains(&ev.kind) && r.matches_applet(&name)
            })
            .collect();
        if chosen.is_empty() {
            return Vec::new();
        }
        let redactor = self.redactor();
        let mut ids = Vec::new();
        for i in chosen {
            let rule = self.inner.config.rule[i].get_ref();
            let d = self.delivery(&self.inner.config.rule_name(i), rule, &ev, &redactor);
            match self.store(&d) {
                Ok(()) => ids.push(d.id.clone()),
                Err(e) => tracing::warn!(error = %e, rule = %d.rule, "a notification could not be stored; it is not sent"),
            }
        }
        for id in &ids {
            self.spawn(id.clone());
        }
        ids
    }

    /// Sends a test message through the rule named `rule` (`opslet notify test`). Returns the
    /// delivery's id.
    pub fn test(&self, rule: &str, actor: &str) -> Result<String, Error> {
        let i = (0..self.inner.config.rule.len())
            .find(|i| self.inner.config.rule_name(*i) == rule)
            .ok_or_else(|| Error::NotFound(format!("no notify rule `{rule}` in opslet.toml")))?;
        let ev = Event {
            kind: NotifyEvent::Failure,
            run_id: String::new(),
            applet: "opslet".into(),
            user: actor.into(),
            job: None,
            what: "test message".into(),
            why: Some(format!("rule {rule} works")),
            lines: Vec::new(),
            detail: json!({ "test": true }),
        };
        let mut d = self.delivery(&self.inner.config.rule_name(i), self.inner.config.rule[i].get_ref(), &ev, &self.redactor());
        d.event = "test".into();
        if let Outgoing::Webhook { payload, .. } = &mut d.send {
            payload["event"] = json!("test");
        }
        self.store(&d)?;
        self.spawn(d.id.clone());
        Ok(d.id)
    }

    fn redactor(&self) -> Redactor {
        redactor_of(&self.inner.store)
    }

    fn delivery(&self, rule_name: &str, rule: &NotifyRule, ev: &Event, redactor: &Redactor) -> Delivery {
        let id = uuid::Uuid::now_v7().to_string();
        let dry = if ev.job.as_ref().is_some_and(|j| j.dry_run) { " (dry run)" } else { "" };
        let run = if ev.run_id.is_empty() { String::new() } else { format!(" (job {})", ev.run_id) };
        let why = ev.why.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
        let subject = redactor.apply(&format!("opslet: {}{dry} {}{run} for {}{why}", ev.applet, ev.what, ev.user)).into_owned();
        let mut text = format!("{subject}\n\nevent:      {}\napplet:     {}\n", ev.kind.name(), ev.applet);
        if let Some(j) = &ev.job {
            text += &format!("reference:  {}\nhash:       {}\n", j.reference, j.hash);
        }
        text += &format!("user:       {}\n", ev.user);
        if !ev.run_id.is_empty() {
            text += &format!("job:        {}\n", ev.run_id);
        }
        if let Some(j) = &ev.job {
            if j.dry_run {
                text += "dry run:    yes\n";
            }
            text += &format!("submitted:  {}\n", j.submitted_at.to_rfc3339());
            if let Some(f) = j.finished_at {
                text += &format!("finished:   {}\n", f.to_rfc3339());
            }
        }
        for (k, v) in &ev.lines {
            text += &format!("{:<11} {v}\n", format!("{k}:"));
        }
        if let Some(e) = ev.job.as_ref().and_then(|j| j.error.as_deref()) {
            text += &format!("\nerror:\n{}\n", crate::util::truncate(e, 4000));
        }
        let text = redactor.apply(&text).into_owned();
        let (send, target) = if let Some(url) = &rule.webhook {
            let payload = json!({
                "delivery": id,
                "event": ev.kind.name(),
                "rule": rule_name,
                "summary": subject,
                "applet": ev.applet,
                "user": ev.user,
                "job": ev.job.as_ref().map(job_json),
                "run_id": (!ev.run_id.is_empty()).then_some(&ev.run_id),
                "detail": ev.detail,
            });
            let secret = rule.secret.clone().unwrap_or_default();
            (Outgoing::Webhook { url: url.clone(), secret, payload: redactor.apply_json(payload) }, shown_url(url))
        } else if let Some(to) = &rule.email {
            (Outgoing::Email { to: to.clone(), subject: subject.clone(), text }, to.join(", "))
        } else {
            let url = rule.chat.clone().unwrap_or_default();
            let target = shown_url(&url);
            (Outgoing::Chat { url, text }, target)
        };
        let now = Utc::now();
        Delivery {
            id,
            rule: rule_name.to_string(),
            event: ev.kind.name().into(),
            channel: rule.channel().into(),
            target,
            job: (!ev.run_id.is_empty()).then(|| ev.run_id.clone()),
            applet: Some(ev.applet.clone()),
            subject,
            status: DeliveryStatus::Pending,
            attempts: 0,
            max_attempts: self.inner.config.attempts,
            last_error: None,
            created_at: now,
            updated_at: now,
            next_at: Some(now),
            delivered_at: None,
            send,
        }
    }

    fn store(&self, d: &Delivery) -> Result<(), Error> {
        self.inner.tree.insert(d.id.as_bytes(), serde_json::to_vec(d).expect("deliveries serialize"))?;
        if self.inner.since_prune.fetch_add(1, Ordering::Relaxed) >= 256 {
            self.inner.since_prune.store(0, Ordering::Relaxed);
            if let Err(e) = prune(&self.inner.tree, KEEP) {
                tracing::warn!(error = %e, "pruning old notification deliveries");
            }
        }
        Ok(())
    }

    fn spawn(&self, id: String) {
        let inner = Arc::clone(&self.inner);
        self.inner.handle.spawn(async move {
            if let Err(e) = deliver(&inner, &id).await {
                tracing::warn!(delivery = %id, error = %e, "a notification delivery stopped");
            }
        });
    }
}

/// Ids of the deliveries not ended yet.
fn pending_ids(tree: &Tree) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        if decode(&v).is_ok_and(|d| d.status == DeliveryStatus::Pending) {
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
    }
    Ok(out)
}

/// Removes the oldest ended deliveries beyond the newest `keep`.
fn prune(tree: &Tree, keep: usize) -> Result<usize, Error> {
    let len = tree.len()?;
    if len <= keep {
        return Ok(0);
    }
    let mut over = len - keep;
    let mut removed = 0;
    let mut doomed = Vec::new();
    for item in tree.iter() {
        if over == 0 {
            break;
        }
        let (k, v) = item?;
        if decode(&v).map_or(true, |d| d.status != DeliveryStatus::Pending) {
            doomed.push(k);
            over -= 1;
        }
    }
    for k in doomed {
        tree.remove(&k)?;
        removed += 1;
    }
    Ok(removed)
}

/// The audit tap: `config.check` records that found drift are kept per run, and told as one
/// event when the run ends. Quick, and appends nothing (it runs under the append lock).
fn tap(weak: &Weak<Inner>, rec: &AuditRecord) {
    let Some(run_id) = &rec.run_id else { return };
    let Some(inner) = weak.upgrade() else { return };
    if rec.kind == "action" && rec.data["module"] == "config" && rec.data["action"] == "check" {
        let detail = &rec.data["detail"];
        if matches!(detail["status"].as_str(), Some("drifted" | "missing")) {
            let found = json!({
                "host": rec.data["target"],
                "item": detail["item"],
                "status": detail["status"],
                "drift": detail["drift"],
            });
            inner.drift.lock().entry(run_id.clone()).or_default().push(found);
        }
    } else if rec.kind == "run.end" {
        let Some(hosts) = inner.drift.lock().remove(run_id) else { return };
        let applet = rec.applet.clone().unwrap_or_default();
        let user = rec.actor.clone().unwrap_or_default();
        let run_id = run_id.clone();
        let handle = inner.handle.clone();
        let n = Notifier { inner };
        // Off the append lock: the job (if any) is read and the deliveries stored on the
        // notifier's own thread.
        handle.spawn_blocking(move || {
            let job = super::jobs::Jobs::new(n.inner.store.clone()).ok().and_then(|j| j.get(&run_id).ok().flatten());
            let names: Vec<String> = hosts
                .iter()
                .take(DRIFT_HOSTS_SHOWN)
                .map(|h| {
                    format!(
                        "{} ({}: {})",
                        h["host"].as_str().unwrap_or("?"),
                        h["item"].as_str().unwrap_or("?"),
                        h["status"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            let more = hosts.len().saturating_sub(DRIFT_HOSTS_SHOWN);
            let mut list = names.join(", ");
            if more > 0 {
                list += &format!(" and {more} more");
            }
            n.emit(Event {
                kind: NotifyEvent::Drift,
                run_id,
                applet,
                user,
                job,
                what: format!("found drift on {} host{}", hosts.len(), if hosts.len() == 1 { "" } else { "s" }),
                why: Some(first_line(&list)),
                lines: vec![("drift".into(), list)],
                detail: json!({ "hosts": hosts.iter().take(DRIFT_HOSTS_SHOWN).collect::<Vec<_>>(), "count": hosts.len() }),
            });
        });
    }
}

/// The redactor of every stored secret's value, as the store holds them now (a secret set
/// since the server started included).
fn redactor_of(store: &Store) -> Redactor {
    match crate::secrets::Secrets::values_of(store) {
        Ok(v) => Redactor::new(v),
        Err(e) => {
            tracing::warn!(error = %e, "reading the stored secrets to redact a notification");
            Redactor::default()
        }
    }
}

fn read(inner: &Inner, id: &str) -> Result<Option<Delivery>, Error> {
    inner.tree.get(id.as_bytes())?.map(|b| decode(&b)).transpose()
}

fn write(inner: &Inner, d: &Delivery) -> Result<(), Error> {
    inner.tree.insert(d.id.as_bytes(), serde_json::to_vec(d).expect("deliveries serialize")).map(|_| ())
}

/// The wait after failed attempt `n` (1-based): the backoff, doubled for each attempt before.
pub fn backoff(first: Duration, n: u32) -> Duration {
    first.saturating_mul(1u32 << (n.saturating_sub(1)).min(20)).min(MAX_BACKOFF)
}

/// Sends one delivery until it is delivered or out of attempts, recording each attempt.
async fn deliver(inner: &Arc<Inner>, id: &str) -> Result<(), Error> {
    loop {
        let Some(mut d) = read(inner, id)? else { return Ok(()) };
        if d.status != DeliveryStatus::Pending {
            return Ok(());
        }
        if let Some(at) = d.next_at
            && let Ok(wait) = (at - Utc::now()).to_std()
        {
            tokio::time::sleep(wait).await;
        }
        let permit = Arc::clone(&inner.sending).acquire_owned().await.map_err(|_| Error::Internal("the notifier stopped".into()))?;
        let outcome = attempt(inner, &d).await;
        drop(permit);
        let now = Utc::now();
        d.attempts += 1;
        d.updated_at = now;
        match outcome {
            Ok(()) => {
                d.status = DeliveryStatus::Delivered;
                d.delivered_at = Some(now);
                d.next_at = None;
                d.last_error = None;
            }
            Err(e) => {
                let redactor = redactor_of(&inner.store);
                d.last_error = Some(redactor.apply(&e).into_owned());
                if d.attempts >= d.max_attempts {
                    d.status = DeliveryStatus::Failed;
                    d.next_at = None;
                } else {
                    let wait = backoff(inner.config.backoff(), d.attempts);
                    d.next_at = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
                }
            }
        }
        write(inner, &d)?;
        if d.status != DeliveryStatus::Pending {
            let (kind, status) =
                if d.status == DeliveryStatus::Delivered { ("notify.delivered", "ok") } else { ("notify.failed", "error") };
            inner.store.audit().append(AuditEvent {
                kind: kind.into(),
                run_id: d.job.clone(),
                actor: Some(SYSTEM_ACTOR.into()),
                via: Some("notify".into()),
                applet: d.applet.clone(),
                status: Some(status.into()),
                data: json!({
                    "delivery": d.id,
                    "rule": d.rule,
                    "event": d.event,
                    "channel": d.channel,
                    "target": d.target,
                    "attempts": d.attempts,
                    "error": d.last_error,
                }),
            })?;
            return Ok(());
        }
    }
}

/// One attempt; the error says what went wrong, for the record.
async fn attempt(inner: &Inner, d: &Delivery) -> Result<(), String> {
    let redactor = redactor_of(&inner.store);
    match &d.send {
        Outgoing::Webhook { url, secret, payload } => {
            let key = crate::secrets::Secrets::open(inner.store.clone())
                .and_then(|s| s.text(secret, &format!("notify rule {}", d.rule)))
                .map_err(|e| e.to_string())?;
            let mut payload = payload.clone();
            payload["sent_at"] = json!(Utc::now());
            let body = serde_json::to_vec(&redactor.apply_json(payload)).expect("JSON serializes");
            let ts = Utc::now().timestamp();
            let sig = super::hooks::sign_delivery(&key, ts, &d.id, &body);
            let req = inner
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("user-agent", concat!("opslet/", env!("CARGO_PKG_VERSION")))
                .header("x-opslet-event", &d.event)
                .header("x-opslet-timestamp", ts.to_string())
                .header("x-opslet-delivery", &d.id)
                .header("x-opslet-signature", sig)
                .body(body);
            http_outcome(req.send().await).await
        }
        Outgoing::Chat { url, text } => {
            let body = serde_json::to_vec(&json!({ "text": redactor.apply(text) })).expect("JSON serializes");
            let req = inner
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("user-agent", concat!("opslet/", env!("CARGO_PKG_VERSION")))
                .body(body);
            http_outcome(req.send().await).await
        }
        Outgoing::Email { to, subject, text } => {
            let smtp = inner.config.smtp.as_ref().ok_or("there is no [notify.smtp] in opslet.toml any more")?;
            send_mail(inner, smtp, to, &redactor.apply(subject), &redactor.apply(text)).await
        }
    }
}

async fn http_outcome(r: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    let resp = r.map_err(|e| crate::util::error_chain(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(format!("HTTP {}: {}", status.as_u16(), first_line(&body)))
}

async fn send_mail(inner: &Inner, smtp: &SmtpConfig, to: &[String], subject: &str, text: &str) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let mut msg = Message::builder()
        .from(smtp.from.parse().map_err(|e| format!("from `{}`: {e}", smtp.from))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for a in to {
        msg = msg.to(a.parse().map_err(|e| format!("`{a}`: {e}"))?);
    }
    let msg = msg.body(text.to_string()).map_err(|e| format!("building the message: {e}"))?;
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(smtp.host.clone());
        if let Some(pem) = &inner.smtp_ca {
            b = b.add_root_certificate(Certificate::from_pem(pem).map_err(|e| format!("notify.smtp.ca: {e}"))?);
        }
        b.build_rustls().map_err(|e| format!("TLS settings: {e}"))
    };
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str()).port(smtp.port()).timeout(Some(smtp.timeout()));
    t = match smtp.tls {
        SmtpTls::Starttls => t.tls(Tls::Required(tls()?)),
        SmtpTls::Tls => t.tls(Tls::Wrapper(tls()?)),
        SmtpTls::None => t.tls(Tls::None),
    };
    if let (Some(user), Some(secret)) = (&smtp.user, &smtp.password_secret) {
        let password = crate::secrets::Secrets::open(inner.store.clone())
            .and_then(|s| s.text(secret, "notify.smtp.password_secret"))
            .map_err(|e| e.to_string())?;
        t = t.credentials(lettre::transport::smtp::authentication::Credentials::new(user.clone(), password));
    }
    t.build().send(msg).await.map(|_| ()).map_err(|e| format!("SMTP {}:{}: {}", smtp.host, smtp.port(), crate::util::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Duration::from_secs(2);
        assert_eq!(backoff(b, 1), Duration::from_secs(2));
        assert_eq!(backoff(b, 2), Duration::from_secs(4));
        assert_eq!(backoff(b, 4), Duration::from_secs(16));
        assert_eq!(backoff(b, 30), MAX_BACKOFF);
    }

    #[test]
    fn urls_are_shown_without_path_or_login() {
        assert_eq!(shown_url("https://u:p@chat.example.com/hooks/abc?x=1"), "https://chat.example.com/…");
        assert_eq!(shown_url("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080/…");
    }

    #[test]
    fn old_ended_deliveries_are_pruned_pending_ones_kept() {
        let store = Store::temporary().unwrap();
        let tree = store.tree(keys::NOTIFY_DELIVERIES);
        let now = Utc::now();
        for i in 0..10 {
            let d = Delivery {
                id: uuid::Uuid::now_v7().to_string(),
                rule: "r".into(),
                event: "failure".into(),
                channel: "chat".into(),
                target: "x".into(),
                job: None,
                applet: None,
                subject: "s".into(),
                status: if i == 0 { DeliveryStatus::Pending } else { DeliveryStatus::Delivered },
                attempts: 1,
                max_attempts: 5,
                last_error: None,
                created_at: now,
                updated_at: now,
                next_at: None,
                delivered_at: None,
                send: Outgoing::Chat { url: "http://x".into(), text: "t".into() },
            };
            tree.insert(d.id.as_bytes(), serde_json::to_vec(&d).unwrap()).unwrap();
        }
        assert_eq!(prune(&tree, 4).unwrap(), 6);
        assert_eq!(tree.len().unwrap(), 4);
        assert_eq!(pending_ids(&tree).unwrap().len(), 1, "the pending one is kept");
        assert_eq!(list(&store, Some(DeliveryStatus::Delivered), 100).unwrap().len(), 3);
    }

    #[test]
    fn drift_from_the_audit_log_becomes_one_event_per_run() {
        let store = Store::temporary().unwrap();
        let cfg = crate::config::Config::parse(
            "[[notify.rule]]\non = [\"drift\"]\nchat = \"http://127.0.0.1:9/x\"\n[notify]\nattempts = 1\n",
            "opslet.toml",
        )
        .unwrap();
        let jobs = Jobs::new(store.clone()).unwrap();
        let n = Notifier::start(&cfg.notify, &store, &jobs).unwrap().expect("rules make a notifier");
        let audit = store.audit();
        for (host, status) in [("web1", "drifted"), ("web2", "in-sync"), ("web3", "missing")] {
            audit
                .append(AuditEvent {
                    kind: "action".into(),
                    run_id: Some("run-1".into()),
                    actor: Some("alice".into()),
                    applet: Some("drift-check@1.0.0".into()),
                    data: json!({ "module": "config", "action": "check", "target": host, "detail": { "item": "nginx", "status": status, "drift": "the content differs" } }),
                    ..Default::default()
                })
                .unwrap();
        }
        audit
            .append(AuditEvent {
                kind: "run.end".into(),
                run_id: Some("run-1".into()),
                actor: Some("alice".into()),
                applet: Some("drift-check@1.0.0".into()),
                ..Default::default()
            })
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let d = loop {
            if let Some(d) = list(&store, None, 10).unwrap().into_iter().next() {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "no drift delivery");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(d.event, "drift");
        assert_eq!(d.job.as_deref(), Some("run-1"));
        assert!(d.subject.contains("found drift on 2 hosts") && d.subject.contains("web1") && d.subject.contains("web3"), "{}", d.subject);
        assert!(!d.subject.contains("web2"), "{}", d.subject);
        drop(n);
    }
}
