//! Jobs: runs accepted by the run service (from HTTP, webhooks, the console), persisted from
//! the moment they are accepted.
//!
//! A job is stored as `queued` (and flushed) before the request is answered, moves to `running`
//! when a run thread takes it, and to its final status with result and logs. On start, jobs left
//! `running` by a stopped server become `interrupted` and `queued` ones are run.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::runtime::context::LogLine;
use crate::runtime::{CancelToken, RunStatus};
use crate::store::Store;

/// A job as stored and as returned by the API (`params` only with secrets redacted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// What was asked for: `name`, `name@version` or `name@sha256:...`.
    pub reference: String,
    /// `name@version` that ran (once known).
    #[serde(default)]
    pub applet: String,
    pub user: String,
    pub status: JobStatus,
    pub dry_run: bool,
    pub params: Map<String, Value>,
    pub submitted_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// Content hash of the package that runs; a restart re-runs exactly this.
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub allow_yanked: bool,
    /// Served from `serve --dev`: not re-run after a restart.
    #[serde(default)]
    pub dev: bool,
    /// Async jobs (and webhook deliveries) are re-run after a restart; a synchronous caller
    /// has had its answer (an error) by then.
    #[serde(default, rename = "async")]
    pub is_async: bool,
    /// With workers: the tag of the workers that may take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_tag: Option<String>,
    /// Why a queued job has not started (no worker with its tag is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The schedule that fired it (see `schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// What the job's trigger said of it (a schedule's catch-up run: how many fires were missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A risky run's approval request: its plan, who may decide, the decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<super::approvals::Approval>,
}

impl Job {
    /// A new job for `req`, as asked for by `reference`, showing `params` (secrets redacted).
    pub fn queued(req: &crate::runtime::RunRequest, reference: &str, params: Map<String, Value>) -> Job {
        Job {
            id: req.run_id.clone(),
            reference: reference.to_string(),
            applet: req.package.id(),
            user: req.caller.user.clone(),
            status: JobStatus::Queued,
            dry_run: req.dry_run,
            params,
            submitted_at: Utc::now(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            logs: Vec::new(),
            hash: req.package.hash.clone(),
            allow_yanked: false,
            dev: false,
            is_async: false,
            worker_tag: None,
            waiting: None,
            schedule: None,
            note: None,
            approval: None,
        }
    }

    pub fn finished(&self) -> bool {
        self.status.finished()
    }
}

/// Where a job stands: waiting, running, or how it ended (a run's [`RunStatus`], or an end the
/// service gave it without a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// A risky run waiting for its approvals (see `approvals`).
    AwaitingApproval,
    Queued,
    Running,
    Ok,
    Error,
    LimitExceeded,
    InvalidParams,
    InvalidApplet,
    Cancelled,
    /// The server stopped while it ran, or before a run that could not be re-run started.
    Interrupted,
    /// Never run: the queue was full, the caller may no longer run it, or an approver rejected it.
    Rejected,
    /// Never run: its approval request expired.
    Expired,
}

impl JobStatus {
    /// Every status, in the order a job can pass through them.
    pub const ALL: [JobStatus; 12] = [
        JobStatus::AwaitingApproval,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Ok,
        JobStatus::Error,
        JobStatus::LimitExceeded,
        JobStatus::InvalidParams,
        JobStatus::InvalidApplet,
        JobStatus::Cancelled,
        JobStatus::Interrupted,
        JobStatus::Rejected,
        JobStatus::Expired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Interrupted => "interrupted",
            JobStatus::Rejected => "rejected",
            JobStatus::AwaitingApproval => "awaiting_approval",
            JobStatus::Expired => "expired",
            JobStatus::Ok => RunStatus::Ok.name(),
            JobStatus::Error => RunStatus::Error.name(),
            JobStatus::LimitExceeded => RunStatus::LimitExceeded.name(),
            JobStatus::InvalidParams => RunStatus::InvalidParams.name(),
            JobStatus::InvalidApplet => RunStatus::InvalidApplet.name(),
            JobStatus::Cancelled => RunStatus::Cancelled.name(),
        }
    }

    pub fn finished(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running | JobStatus::AwaitingApproval)
    }

    /// Parses a status name as the API takes it in filters (`?status=ok`).
    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|j| j.name() == s)
    }
}

impl From<RunStatus> for JobStatus {
    fn from(s: RunStatus) -> JobStatus {
        match s {
            RunStatus::Ok => JobStatus::Ok,
            RunStatus::Error => JobStatus::Error,
            RunStatus::LimitExceeded => JobStatus::LimitExceeded,
            RunStatus::InvalidParams => JobStatus::InvalidParams,
            RunStatus::InvalidApplet => JobStatus::InvalidApplet,
            RunStatus::Cancelled => JobStatus::Cancelled,
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened to a running job (server-sent events).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum JobEvent {
    Status { status: JobStatus },
    Log { line: LogLine },
    End { job: Box<Job> },
}

struct Live {
    /// The job as stored, while this process is the only writer of it (None after a restart
    /// until it is read): updates need not read it back.
    job: Option<Job>,
    cancel: CancelToken,
    events: tokio::sync::broadcast::Sender<JobEvent>,
    /// Log lines so far, for subscribers who join late.
    logs: Vec<LogLine>,
}

/// The job store plus what only exists while a job runs (cancel token, event channel).
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    tree: crate::store::Tree,
    /// Params as given, kept to re-run queued jobs after a restart; never returned.
    raw: crate::store::Tree,
    /// Ids of the jobs not ended yet.
    open: crate::store::Tree,
    live: Arc<Mutex<HashMap<String, Live>>>,
    /// Called with each job as it ends (see [`Jobs::on_end`]).
    ended: Arc<parking_lot::RwLock<Vec<EndHook>>>,
}

/// See [`Jobs::on_end`].
pub type EndHook = Arc<dyn Fn(&Job) + Send + Sync>;

/// A stored job; one that does not parse is named.
fn decode(id: &str, bytes: &[u8]) -> Result<Job, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Store(format!("job {id} is unreadable: {e}")))
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("jobs serialize")
}

impl Jobs {
    pub fn new(store: Store) -> Result<Jobs, Error> {
        Ok(Jobs {
            tree: store.tree(crate::store::keys::JOBS),
            raw: store.tree(crate::store::keys::JOB_PARAMS),
            open: store.tree(crate::store::keys::JOBS_OPEN),
            store,
            live: Arc::new(Mutex::new(HashMap::new())),
            ended: Default::default(),
        })
    }

    /// Records an accepted job, in one write; an async job durably, before it is answered (a
    /// sync job is answered after its run, whose start is made durable with everything before it).
    pub fn accept(&self, job: &Job, raw_params: &Map<String, Value>, cancel: CancelToken) -> Result<(), Error> {
        self.store.transaction(|tx| {
            // Params as given (secrets included) are kept only where a restart needs them.
            if job.is_async && !job.dev {
                tx.insert(&self.raw, job.id.as_bytes(), json(raw_params))?;
            }
            tx.insert(&self.tree, job.id.as_bytes(), json(job))?;
            tx.insert(&self.open, job.id.as_bytes(), b"")
        })?;
        if job.is_async {
            self.store.flush()?;
        }
        let (events, _) = tokio::sync::broadcast::channel(256);
        self.live.lock().insert(job.id.clone(), Live { job: Some(job.clone()), cancel, events, logs: Vec::new() });
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>, Error> {
        self.tree.get(id.as_bytes())?.map(|b| decode(id, &b)).transpose()
    }

    pub fn raw_params(&self, id: &str) -> Result<Map<String, Value>, Error> {
        Ok(self.raw.get(id.as_bytes())?.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default())
    }

    pub(super) fn update(&self, id: &str, f: impl FnOnce(&mut Job)) -> Result<Option<Job>, Error> {
        let cached = self.live.lock().get(id).and_then(|l| l.job.clone());
        let Some(mut job) = cached.map_or_else(|| self.get(id), |j| Ok(Some(j)))? else { return Ok(None) };
        f(&mut job);
        self.tree.put(id.as_bytes(), json(&job))?;
        if let Some(l) = self.live.lock().get_mut(id) {
            l.job = Some(job.clone());
        }
        Ok(Some(job))
    }

    pub fn started(&self, id: &str, applet: &str) -> Result<(), Error> {
        self.update(id, |j| {
            j.status = JobStatus::Running;
            j.applet = applet.into();
            j.started_at = Some(Utc::now());
            j.waiting = None;
        })?;
        self.emit(id, JobEvent::Status { status: JobStatus::Running });
        Ok(())
    }

    /// Notes why a queued job waits (it is said in the job until it starts).
    pub fn waiting(&self, id: &str, why: &str) -> Result<(), Error> {
        self.update(id, |j| {
            if j.status == JobStatus::Queued {
                j.waiting = Some(why.to_string());
            }
        })?;
        Ok(())
    }

    pub fn log(&self, id: &str, line: &LogLine) {
        if let Some(l) = self.live.lock().get_mut(id) {
            l.logs.push(line.clone());
            let _ = l.events.send(JobEvent::Log { line: line.clone() });
        }
    }

    /// Stores the outcome and closes the job's live state.
    pub fn finish(
        &self,
        id: &str,
        status: JobStatus,
        result: Option<Value>,
        error: Option<String>,
        logs: Vec<LogLine>,
    ) -> Result<(), Error> {
        // The outcome, and the job leaving the open ones (with its params), in one write.
        let cached = self.live.lock().get_mut(id).and_then(|l| l.job.take());
        let job = self.store.transaction(|tx| {
            let stored = match cached {
                Some(job) => Some(job),
                None => tx.get(&self.tree, id.as_bytes())?.map(|b| decode(id, &b)).transpose()?,
            };
            let job = match stored {
                Some(mut job) => {
                    job.status = status;
                    job.finished_at = Some(Utc::now());
                    job.result = result;
                    job.error = error;
                    job.logs = logs;
                    tx.insert(&self.tree, id.as_bytes(), json(&job))?;
                    Some(job)
                }
                None => None,
            };
            tx.remove(&self.raw, id.as_bytes())?;
            tx.remove(&self.open, id.as_bytes())?;
            Ok(job)
        })?;
        if let Some(job) = job {
            self.ended(&job);
            self.emit(id, JobEvent::End { job: Box::new(job) });
        }
        self.live.lock().remove(id);
        Ok(())
    }

    /// Calls `hook` with every job that ends from now on, after its end is stored (the
    /// notifier). A hook must be quick: it runs on the thread that ended the job.
    pub fn on_end(&self, hook: EndHook) {
        self.ended.write().push(hook);
    }

    fn ended(&self, job: &Job) {
        for hook in self.ended.read().iter() {
            hook(job);
        }
    }

    fn emit(&self, id: &str, ev: JobEvent) {
        if let Some(l) = self.live.lock().get(id) {
            let _ = l.events.send(ev);
        }
    }

    /// Events of a job still in flight, with the log lines written so far (None once it
    /// finished). Taken under one lock, so no line is missed or repeated.
    pub fn subscribe(&self, id: &str) -> Option<(Vec<LogLine>, tokio::sync::broadcast::Receiver<JobEvent>)> {
        self.live.lock().get(id).map(|l| (l.logs.clone(), l.events.subscribe()))
    }

    /// Cancels every job in flight (at shutdown); returns how many.
    pub fn cancel_all(&self) -> usize {
        let live = self.live.lock();
        for l in live.values() {
            l.cancel.cancel();
        }
        live.len()
    }

    /// Asks a job to stop. Returns false when it is not in flight.
    pub fn cancel(&self, id: &str) -> bool {
        match self.live.lock().get(id) {
            Some(l) => {
                l.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Jobs, newest first, filtered.
    pub fn list(&self, user: Option<&str>, status: Option<JobStatus>, applet: Option<&str>, limit: usize) -> Result<Vec<Job>, Error> {
        self.list_before(user, status, applet, None, limit)
    }

    /// Like [`Jobs::list`], only jobs older than the job `before` (a cursor: the last id of the
    /// page before).
    pub fn list_before(
        &self,
        user: Option<&str>,
        status: Option<JobStatus>,
        applet: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Job>, Error> {
        let mut out = Vec::new();
        let items = match before {
            Some(b) => self.tree.range(..b.as_bytes().to_vec()),
            None => self.tree.iter(),
        };
        // Job ids are UUIDv7: reverse key order is newest first.
        for item in items.rev() {
            let (_, v) = item?;
            let Ok(job) = serde_json::from_slice::<Job>(&v) else { continue };
            let applet_ok = applet.is_none_or(|a| job.applet.split('@').next() == Some(a) || job.reference.split('@').next() == Some(a));
            if user.is_none_or(|u| job.user == u) && status.is_none_or(|s| job.status == s) && applet_ok {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Jobs that have not ended (queued or running), as they are.
    pub fn open_jobs(&self) -> Result<Vec<Job>, Error> {
        self.index_open_jobs()?;
        let mut out = Vec::new();
        for id in self.open.iter().keys() {
            let id = String::from_utf8_lossy(&id?).into_owned();
            if let Some(job) = self.get(&id)?.filter(|j| !j.finished()) {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// After a restart: `running` jobs become `interrupted`; returns the `queued` ones to run.
    /// Reads only the jobs that had not ended, however long the history.
    pub fn recover(&self) -> Result<Vec<Job>, Error> {
        self.index_open_jobs()?;
        let mut queued = Vec::new();
        for id in self.open.iter().keys() {
            let id = String::from_utf8_lossy(&id?).into_owned();
            let job = match self.get(&id) {
                Ok(Some(job)) => job,
                Ok(None) => {
                    self.open.remove(id.as_bytes())?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "a job left open by the last server cannot be read; it is not run again");
                    self.open.remove(id.as_bytes())?;
                    continue;
                }
            };
            match job.status {
                JobStatus::Running => {
                    let ended = self.update(&job.id, |j| {
                        j.status = JobStatus::Interrupted;
                        j.finished_at = Some(Utc::now());
                        j.error = Some("the server stopped while this job ran".into());
                    })?;
                    self.open.remove(id.as_bytes())?;
                    if let Some(job) = ended {
                        self.ended(&job);
                    }
                }
                JobStatus::Queued => queued.push(job),
                // Waits on: its live state comes back with the approvals (`RunService::recover`).
                JobStatus::AwaitingApproval => {}
                _ => {
                    self.open.remove(id.as_bytes())?;
                }
            }
        }
        Ok(queued)
    }

    /// Builds the open-jobs index once for a data dir written before it existed.
    fn index_open_jobs(&self) -> Result<(), Error> {
        let meta = self.store.tree(crate::store::keys::META);
        if meta.contains_key(crate::store::keys::JOBS_OPEN_INDEXED)? {
            return Ok(());
        }
        for item in self.tree.iter() {
            let (k, v) = item?;
            if serde_json::from_slice::<Job>(&v).is_ok_and(|j| !j.finished()) {
                self.open.insert(&k, b"")?;
            }
        }
        meta.insert(crate::store::keys::JOBS_OPEN_INDEXED, b"1")?;
        Ok(())
    }

    /// An approved job goes to the run queue: `queued` (its live state kept, with the run's
    /// cancel token), and its followers are told.
    pub fn requeue(&self, id: &str, cancel: CancelToken) -> Result<(), Error> {
        self.update(id, |j| j.status = JobStatus::Queued)?;
        let mut live = self.live.lock();
        match live.get_mut(id) {
            Some(l) => l.cancel = cancel,
            None => {
                let (events, _) = tokio::sync::broadcast::channel(256);
                live.insert(id.to_string(), Live { job: None, cancel, events, logs: Vec::new() });
            }
        }
        drop(live);
        self.emit(id, JobEvent::Status { status: JobStatus::Queued });
        Ok(())
    }

    /// Tells a job's followers that it changed without a new status (an approval's plan or
    /// decision).
    pub fn touched(&self, id: &str) {
        if let Ok(Some(job)) = self.get(id) {
            self.emit(id, JobEvent::Status { status: job.status });
        }
    }

    /// Re-registers live state for a job that is run again after a restart.
    pub fn relive(&self, id: &str, cancel: CancelToken) {
        let (events, _) = tokio::sync::broadcast::channel(256);
        self.live.lock().insert(id.to_string(), Live { job: None, cancel, events, logs: Vec::new() });
    }

    /// Deletes jobs that finished longer than `keep` ago, with their results and logs. Job ids
    /// are UUIDv7, so the walk goes oldest first and stops at the first job submitted after the
    /// cut-off: it reads what it deletes (and the few old jobs still running), not the history.
    pub fn purge(&self, keep: chrono::Duration) -> Result<usize, Error> {
        let cutoff = Utc::now() - keep;
        let mut n = 0;
        for item in self.tree.iter() {
            let (k, v) = item?;
            let Ok(job) = serde_json::from_slice::<Job>(&v) else { continue };
            if job.submitted_at >= cutoff {
                break;
            }
            if job.finished() && job.finished_at.is_some_and(|t| t < cutoff) {
                self.tree.remove(&k)?;
                self.raw.remove(&k)?;
                // What the queue kept of it (runs done by workers), long past any redelivery.
                let applied = self.store.tree(crate::store::keys::QUEUE_APPLIED);
                let mut prefix = k.clone();
                prefix.push(b'.');
                for key in applied.scan_prefix(&prefix).keys() {
                    applied.remove(key?)?;
                }
                self.store.tree(crate::store::keys::QUEUE_PUBLISHED).remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
