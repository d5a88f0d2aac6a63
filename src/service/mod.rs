//! The run service: the one place where any trigger — the CLI, an HTTP request, a webhook
//! delivery, the web console, a job re-run after a restart, `opslet config watch` — turns "this
//! applet, these params, this caller" into a validated run, a job record, events and an outcome.
//!
//! ```text
//!   trigger ──> Submission ──prepare──> Prepared ──submit──> job (queued) ──pool──> Runtime::run
//!                 (source,     resolve,               quotas,              run thread   │
//!                  params,     package,               job record,                       ▼
//!                  caller)     validate               events            job (ended), metrics
//!                                          └──run_here──> Runtime::run on the caller's thread (CLI)
//! ```
//!
//! The edges (`http`, `cli`) parse their input into a [`Submission`], call the service and render
//! what comes back; neither builds a `RunRequest` of its own.

pub mod approvals;
pub mod artifacts;
pub mod dev;
pub mod hooks;
pub mod jobs;
mod metrics;
pub mod notify;
mod pool;
pub mod queue;
pub mod schedule;
pub mod testing;
mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::applet::AppletPackage;
use crate::auth::Auth;
use crate::error::{Error, ParamError};
use crate::registry::{Reference, Registry};
use crate::runtime::context::{Caller, LogLine, LogSink};
use crate::runtime::{CancelToken, Origin, RunOutcome, RunRequest, Runtime};

pub use approvals::{Approval, Policy};
pub use hooks::{DeliveryError, Hook, Hooks};
pub use jobs::{Job, JobEvent, JobStatus, Jobs};
pub use metrics::Metrics;
pub use notify::Notifier;
pub use pool::RunPool;

/// Why the service did not accept or run a submission. Each variant is one answer at the edges
/// (an HTTP status, an exit code); `Core` carries the errors of the layers below.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Not found, invalid applet, invalid params, store and config errors.
    #[error(transparent)]
    Core(#[from] Error),
    /// One applet or one caller already has its share of the run slots.
    #[error("{0}")]
    Quota(String),
    /// The run queue is full.
    #[error("too many runs waiting; retry later")]
    QueueFull,
    /// A webhook delivery that is not signed, wrongly signed, stale or replayed (or names no
    /// hook: refused the same way, so hook names cannot be probed).
    #[error("delivery refused: {0}")]
    Delivery(#[source] DeliveryError),
    /// A webhook payload that is not JSON.
    #[error("the payload is not valid JSON: {0}")]
    Payload(#[source] serde_json::Error),
    /// The run thread ended without an outcome (a bug in host code).
    #[error("the run thread stopped")]
    Lost,
    /// The run queue (NATS) did not take the run: unreachable, or not answering in time.
    #[error("{0}")]
    QueueDown(String),
}

impl ServiceError {
    /// The error a CLI reports for a refusal (`Busy` when retrying later may help).
    pub fn into_error(self) -> Error {
        match self {
            ServiceError::Core(e) => e,
            ServiceError::Quota(m) => Error::Busy(m),
            ServiceError::QueueFull => Error::Busy("too many runs waiting; retry later".into()),
            ServiceError::QueueDown(m) => Error::Busy(m),
            other => Error::Internal(other.to_string()),
        }
    }

    /// Short machine-readable code (the HTTP edge says `bad_request` for usage and config
    /// errors, see `http::error`).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Core(e) => e.kind(),
            ServiceError::Quota(_) => "quota_exceeded",
            ServiceError::QueueFull => "queue_full",
            ServiceError::Delivery(DeliveryError::Replayed) => "replayed",
            ServiceError::Delivery(_) => "delivery_refused",
            ServiceError::Payload(_) => "bad_payload",
            ServiceError::Lost => "internal_error",
            ServiceError::QueueDown(_) => "queue_unavailable",
        }
    }
}

/// Where the applet of a submission comes from.
#[derive(Clone)]
pub enum Source {
    /// A published version in the registry.
    Registry(Reference),
    /// What the server serves under a name: under `serve --dev`, a dev folder of that name
    /// first, else the registry (runs asked for over HTTP).
    Served(Reference),
    /// An applet folder on this machine (the CLI).
    Folder(PathBuf),
    /// A package built by the caller (`opslet config watch`'s generated applet).
    Package(Arc<AppletPackage>),
}

/// Params as a trigger received them.
#[derive(Clone, Default)]
pub struct RawParams {
    /// Typed values (an HTTP body, `--params-json`, a webhook payload's mapping).
    pub json: Option<Map<String, Value>>,
    /// `--param k=v` strings, applied on top of `json`.
    pub pairs: Vec<(String, String)>,
}

/// When params are checked.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Check {
    /// Before anything is stored: a bad value refuses the submission with every bad field named
    /// (HTTP runs); the run then uses the checked params as they are.
    #[default]
    Before,
    /// By the run itself, which is then recorded in the audit log as `invalid_params` (the CLI,
    /// where every attempt is a run; webhook deliveries and jobs re-run after a restart, which
    /// have no one to answer with fields).
    InRun,
}

/// "Run this, with these params, for this caller."
#[derive(Clone)]
pub struct Submission {
    pub source: Source,
    pub params: RawParams,
    pub caller: Caller,
    pub dry_run: bool,
    /// Run a yanked version (named explicitly or current).
    pub allow_yanked: bool,
    pub check: Check,
    /// With workers: only those with this tag take the run (else the applet's `[run]
    /// worker_tag`, else `default`).
    pub worker_tag: Option<String>,
}

impl Submission {
    pub fn new(source: Source, caller: Caller) -> Submission {
        Submission {
            source,
            params: RawParams::default(),
            caller,
            dry_run: false,
            allow_yanked: false,
            check: Check::Before,
            worker_tag: None,
        }
    }
}

/// What happens to a run in place that does not stop at its wall-time limit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// Its end is recorded and the process ends with the limit's exit code.
    EndProcess,
    /// Nothing beyond the runtime's own limit checks.
    Wait,
}

/// A submission turned into a run request: the package resolved, params checked.
pub struct Prepared {
    pub request: RunRequest,
    /// What was asked for (`name`, `name@1.2.0`, a folder), for the job record.
    pub reference: String,
    /// The params as the job shows them (secrets redacted).
    pub shown: Map<String, Value>,
    /// Served from a `serve --dev` folder (not re-run after a restart).
    pub dev: bool,
    allow_yanked: bool,
    /// The workers' tag the run goes to (when runs go to workers).
    worker_tag: String,
    /// The schedule that made the run, and a note for its job (a catch-up run says why).
    pub schedule: Option<String>,
    pub note: Option<String>,
    /// Accounts besides the caller that asked for the run (who made or ran its schedule): none
    /// of them may approve it.
    pub asked_by: Vec<String>,
}

/// A submission that was accepted as a job.
pub struct Accepted {
    pub job_id: String,
    /// The outcome, when the run ends (never, for a run that waits for approval: its sender is
    /// dropped).
    pub done: tokio::sync::oneshot::Receiver<RunOutcome>,
    /// A risky run waits for approval: the request (its plan is being made).
    pub awaiting: Option<Approval>,
}

/// How many runs one applet and one caller may have queued or running at once (0: no limit
/// beyond the queue).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quotas {
    pub per_applet: usize,
    pub per_caller: usize,
}

/// The run service. Cheap to clone.
#[derive(Clone)]
pub struct RunService {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    registry: Option<Registry>,
    dispatch: Option<Dispatch>,
    /// Which runs wait for approval (`[approvals]`).
    policy: Policy,
    /// Held while an approval request is read and changed (decisions, expiry, its plan).
    decisions: parking_lot::Mutex<()>,
    /// What publishing through this service does with an applet's tests.
    publish_tests: crate::config::PublishTests,
}

/// What a server needs beyond running in place: jobs, run threads, quotas, hooks, metrics.
struct Dispatch {
    jobs: Jobs,
    pool: RunPool,
    hooks: Hooks,
    auth: Auth,
    dev: Option<dev::DevApplets>,
    quotas: Quotas,
    in_use: InUse,
    metrics: Arc<Metrics>,
    /// With `--queue nats://…`: runs go to workers through NATS instead of the run threads.
    queue: Option<queue::control::Control>,
    /// `[notify]` rules (None without rules and pending deliveries).
    notifier: Option<Notifier>,
    /// Jobs awaiting approval, with when their requests expire.
    awaiting: approvals::Awaiting,
}

/// The settings of a dispatching (server) service.
pub struct DispatchSettings {
    /// Runs computing at once (their Lua code executing): the CPU slots.
    pub run_threads: usize,
    /// Runs in flight at once, waiting on hosts or computing.
    pub max_runs: usize,
    /// Runs that may wait for their first CPU slot.
    pub queue: usize,
    pub quotas: Quotas,
    /// `serve --dev DIR`.
    pub dev: Option<PathBuf>,
    /// `serve --queue nats://…`: run on `opslet worker` processes.
    pub workers: Option<queue::QueueSettings>,
    /// `[notify]` of opslet.toml.
    pub notify: crate::config::NotifyConfig,
    /// `[approvals]` of opslet.toml.
    pub approvals: Policy,
    /// `[publish] tests` of opslet.toml: what a bundle published over HTTP does with its tests.
    pub publish_tests: crate::config::PublishTests,
}

impl RunService {
    /// A service that runs in place (the CLI): no jobs, no run threads; a run `policy` holds for
    /// approval is refused (approvals wait in a server).
    pub fn new(runtime: Runtime, policy: Policy) -> Result<RunService, Error> {
        let registry = runtime.store().map(|s| Registry::new(s.clone())).transpose()?;
        Ok(RunService {
            inner: Arc::new(Inner {
                runtime,
                registry,
                dispatch: None,
                policy,
                decisions: Default::default(),
                publish_tests: crate::config::PublishTests::Required,
            }),
        })
    }

    /// A service that also dispatches jobs to run threads (`opslet serve`).
    pub fn dispatching(runtime: Runtime, settings: DispatchSettings) -> Result<RunService, Error> {
        let store = runtime.store().cloned().ok_or_else(|| Error::Internal("a dispatching run service needs a store".into()))?;
        let jobs = Jobs::new(store.clone())?;
        let notifier = Notifier::start(&settings.notify, &store, &jobs)?;
        let metrics: Arc<Metrics> = Default::default();
        let queue = match settings.workers {
            Some(q) => Some(queue::control::Control::start(q, store.clone(), jobs.clone(), Arc::clone(&metrics))?),
            None => None,
        };
        let dispatch = Dispatch {
            jobs,
            pool: RunPool::start(settings.run_threads, settings.max_runs, settings.queue),
            hooks: Hooks::new(store.clone())?,
            auth: Auth::new(store.clone())?,
            dev: settings.dev.as_deref().map(dev::DevApplets::watch).transpose()?,
            quotas: settings.quotas,
            in_use: Default::default(),
            metrics,
            queue,
            awaiting: Default::default(),
            notifier,
        };
        let (policy, publish_tests) = (settings.approvals, settings.publish_tests);
        Ok(RunService {
            inner: Arc::new(Inner {
                runtime,
                registry: Some(Registry::new(store)?),
                dispatch: Some(dispatch),
                policy,
                decisions: Default::default(),
                publish_tests,
            }),
        })
    }

    /// Runs an applet's own tests before it is published through this service (a bundle over
    /// HTTP): see `testing::gate`.
    pub fn test_before_publish(
        &self,
        package: &AppletPackage,
    ) -> Result<(Option<crate::registry::model::TestSummary>, Option<String>), Error> {
        testing::gate(&self.inner.runtime, self.inner.publish_tests, package)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    fn dispatch(&self) -> Result<&Dispatch, Error> {
        self.inner.dispatch.as_ref().ok_or_else(|| Error::Internal("this run service does not dispatch jobs".into()))
    }

    fn registry(&self) -> Result<&Registry, Error> {
        self.inner.registry.as_ref().ok_or_else(|| Error::Internal("the run service has no store for its registry".into()))
    }

    /// The job store (a dispatching service only).
    pub fn jobs(&self) -> Result<&Jobs, Error> {
        Ok(&self.dispatch()?.jobs)
    }

    /// Webhook definitions (a dispatching service only).
    pub fn hooks(&self) -> Result<&Hooks, Error> {
        Ok(&self.dispatch()?.hooks)
    }

    /// The notifier, when `[notify]` has rules (a dispatching service only): approvals tell it
    /// of runs that wait (`Notifier::approval_needed`).
    pub fn notifier(&self) -> Option<&Notifier> {
        self.inner.dispatch.as_ref().and_then(|d| d.notifier.as_ref())
    }

    /// Run counters for `/metrics` (a dispatching service only).
    pub fn metrics(&self) -> Result<&Metrics, Error> {
        Ok(&self.dispatch()?.metrics)
    }

    /// The workers heard from lately, when runs go to workers (`serve --queue nats://…`).
    pub fn workers(&self) -> Option<Vec<queue::control::WorkerInfo>> {
        self.inner.dispatch.as_ref().and_then(|d| d.queue.as_ref()).map(|q| q.workers())
    }

    /// The package a source names, and whether it came from a dev folder.
    fn package(&self, source: &Source, allow_yanked: bool) -> Result<(Arc<AppletPackage>, bool), Error> {
        match source {
            Source::Package(p) => Ok((Arc::clone(p), false)),
            Source::Folder(path) => Ok((Arc::new(AppletPackage::load_dir(path)?), false)),
            Source::Registry(r) => self.published(r, allow_yanked),
            Source::Served(r) => {
                let dev = match (self.inner.dispatch.as_ref().and_then(|d| d.dev.as_ref()), r) {
                    (Some(dev), Reference::Current(name)) => dev.get(name),
                    _ => None,
                };
                match dev {
                    Some(Ok(p)) => Ok((p, true)),
                    Some(Err(e)) => Err(Error::Applet(vec![crate::error::Diagnostic::new(r.name(), e)])),
                    None => self.published(r, allow_yanked),
                }
            }
        }
    }

    fn published(&self, r: &Reference, allow_yanked: bool) -> Result<(Arc<AppletPackage>, bool), Error> {
        let reg = self.registry()?;
        let meta = reg.resolve(r, allow_yanked)?;
        Ok((reg.package_shared(&meta)?, false))
    }

    /// Resolves the applet and checks the params (unless the run is to check them): the one
    /// way a trigger gets a run request.
    pub fn prepare(&self, sub: Submission) -> Result<Prepared, Error> {
        let (package, dev) = self.package(&sub.source, sub.allow_yanked)?;
        let reference = match &sub.source {
            Source::Registry(r) | Source::Served(r) => r.to_string(),
            Source::Folder(p) => p.display().to_string(),
            Source::Package(p) => p.id(),
        };
        // Before anything stores or repeats them: no stored secret's value in the params.
        self.inner
            .runtime
            .check_secret_values(&package.manifest, &sub.caller, sub.params.json.as_ref(), &sub.params.pairs)
            .map_err(Error::Params)?;
        let mut request = RunRequest::new(Arc::clone(&package), sub.caller);
        request.dry_run = sub.dry_run;
        request.origin = match &sub.source {
            Source::Folder(p) => Origin::Folder { path: std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string() },
            Source::Served(_) if dev => Origin::Dev,
            Source::Registry(r) | Source::Served(r) => Origin::Registry { reference: r.to_string() },
            Source::Package(_) => Origin::Package,
        };
        let shown = match sub.check {
            Check::InRun => {
                let shown =
                    sub.params.json.as_ref().map(|given| crate::applet::params::redacted(&package.manifest, given)).unwrap_or_default();
                request.params_json = sub.params.json;
                request.params_pairs = sub.params.pairs;
                shown
            }
            Check::Before => {
                let given = sub.params.json.unwrap_or_default();
                // Host selectors must pick hosts: said now, per field, not when the job runs,
                // and together with every other bad field.
                let validated = crate::applet::params::resolve_then(&package.manifest, Some(&given), &sub.params.pairs, |p| {
                    self.inner.runtime.check_selectors(&package.manifest, p)
                })
                .map_err(|errs| Error::Params(redact_errors(&package, &given, &sub.params.pairs, errs)))?;
                let shown = crate::applet::params::redacted(&package.manifest, &validated);
                // The raw params are what a restart re-runs with; the run uses the checked ones.
                request.params_json = Some(given);
                request.params_pairs = sub.params.pairs;
                request.validated = Some(validated);
                shown
            }
        };
        // The run's tag, else the applet's, else the route of the hosts it picks, else `default`.
        let worker_tag = sub
            .worker_tag
            .or_else(|| package.manifest.run.worker_tag.clone())
            .or_else(|| self.route_by_hosts(&package.manifest, request.validated.as_ref()))
            .unwrap_or_else(|| queue::DEFAULT_TAG.into());
        Ok(Prepared {
            request,
            reference,
            shown,
            dev,
            allow_yanked: sub.allow_yanked,
            worker_tag,
            schedule: None,
            note: None,
            asked_by: Vec::new(),
        })
    }

    /// With workers and `[[workers.route]]`: the tag of the first route whose hosts include every
    /// host the run's host-selector params pick (checked params only; None when it picks none).
    fn route_by_hosts(&self, manifest: &crate::applet::Manifest, params: Option<&Map<String, Value>>) -> Option<String> {
        let routes = self.inner.dispatch.as_ref()?.queue.as_ref()?.routes();
        let params = params?;
        if routes.is_empty() {
            return None;
        }
        let selectors: Vec<&str> = manifest.host_selectors(params).into_iter().flat_map(|(_, sels)| sels).collect();
        if selectors.is_empty() {
            return None;
        }
        let snapshot = crate::cmdb::Cmdb::new(self.inner.runtime.store()?.clone()).and_then(|c| c.snapshot()).ok()?;
        let names = |sel: &str| -> Option<std::collections::BTreeSet<String>> {
            snapshot.select(sel).ok().map(|hs| hs.into_iter().map(|h| h.name).collect())
        };
        let mut picked = std::collections::BTreeSet::new();
        for sel in selectors {
            picked.extend(names(sel)?);
        }
        routes.iter().find(|(hosts, _)| names(hosts).is_some_and(|r| picked.is_subset(&r))).map(|(_, tag)| tag.clone())
    }

    /// Runs a prepared request on the calling thread (the CLI). With [`Overrun::EndProcess`], a
    /// watchdog ends the process if the run overruns its wall-time limit by [`watchdog::GRACE`]
    /// (`opslet run`); with [`Overrun::Wait`] nothing does (`opslet config watch`, which must
    /// outlive one bad publish). The caller flushes the store before the process exits.
    pub fn run_here(
        &self,
        rt: &tokio::runtime::Runtime,
        prepared: Prepared,
        cancel: CancelToken,
        sink: Option<LogSink>,
        overrun: Overrun,
    ) -> Result<RunOutcome, Error> {
        if let Some(why) = self.held(&prepared.request) {
            return Err(Error::NeedsApproval(format!(
                "{} needs approval ({why}); approvals wait in the server: start `opslet serve` and run it again there, where it waits as a job (or run it with --dry-run to see its plan)",
                prepared.request.package.manifest.id()
            )));
        }
        let mut req = prepared.request;
        req.cancel = cancel;
        req.log_sink = sink;
        let dog = (overrun == Overrun::EndProcess).then(|| watchdog::Watchdog::start(&self.inner.runtime, &req));
        let outcome = rt.block_on(self.inner.runtime.run(req));
        if let Some(dog) = dog {
            dog.stop();
        }
        Ok(outcome)
    }

    /// Why a run must wait for approval (None: it need not): the rules it falls under.
    fn held(&self, req: &RunRequest) -> Option<String> {
        if req.dry_run {
            return None;
        }
        let risks = self.inner.policy.risks(&req.package.manifest);
        (!risks.is_empty()).then(|| risks.iter().map(|r| r.why()).collect::<Vec<_>>().join("; "))
    }

    /// The approval policy (`opslet show`, the API's applet pages).
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Stores a prepared run as a `queued` job (durably, before anyone is answered) and queues it
    /// for a run thread. A run that cannot be queued leaves the job `rejected` with the reason.
    pub fn submit(&self, prepared: Prepared, is_async: bool) -> Result<Accepted, ServiceError> {
        let d = self.dispatch()?;
        if self.held(&prepared.request).is_some() {
            return self.hold(d, prepared);
        }
        let Prepared { request, reference, shown, dev, allow_yanked, worker_tag, schedule, note, asked_by: _ } = prepared;
        // A refusal (quota, full queue) stores nothing: it is answered, and audited at the edge.
        let slots = Slots::take(d, &request.package.manifest.name, &request.caller.user)?;
        match &d.queue {
            Some(q) if !q.connected() => return Err(ServiceError::QueueDown("the run queue (NATS) is unreachable; retry later".into())),
            Some(_) => {}
            None if !d.pool.has_room() => return Err(ServiceError::QueueFull),
            None => {}
        }
        let mut job = Job::queued(&request, &reference, shown);
        (job.schedule, job.note) = (schedule, note);
        (job.allow_yanked, job.dev, job.is_async) = (allow_yanked, dev, is_async);
        if d.queue.is_some() {
            job.worker_tag = Some(worker_tag.clone());
        }
        // The params as given are what a restart re-runs with (`k=v` pairs never reach a job).
        let empty = Map::new();
        d.jobs.accept(&job, request.params_json.as_ref().unwrap_or(&empty), request.cancel.clone())?;
        match self.start(d, request, slots, &worker_tag) {
            Ok(done) => Ok(Accepted { job_id: job.id, done, awaiting: None }),
            Err(e) => {
                let _ = d.jobs.finish(&job.id, JobStatus::Rejected, None, Some(e.to_string()), Vec::new());
                Err(e)
            }
        }
    }

    /// Asks a job in flight to stop. Returns false when it is not in flight.
    pub fn cancel(&self, job_id: &str) -> bool {
        let Some(d) = self.inner.dispatch.as_ref() else { return false };
        if self.withdraw(d, job_id) {
            return true;
        }
        let live = d.jobs.cancel(job_id);
        if let (true, Some(q)) = (live, &d.queue) {
            q.cancel(job_id);
        }
        live
    }

    /// Queues a job's run on a run thread; `slots` are its share of the quotas, given back when
    /// the run ends (or with the work, if the queue refuses it).
    fn start(
        &self,
        d: &Dispatch,
        mut req: RunRequest,
        slots: Slots,
        worker_tag: &str,
    ) -> Result<tokio::sync::oneshot::Receiver<RunOutcome>, ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (service, id, applet) = (self.clone(), req.run_id.clone(), req.package.id());
        let sink_jobs = d.jobs.clone();
        let sink_id = id.clone();
        // The job's log, and the caller's own sink too (a CLI that streams the lines).
        let also = req.log_sink.take();
        req.log_sink = Some(Arc::new(move |line: &LogLine| {
            sink_jobs.log(&sink_id, line);
            if let Some(also) = &also {
                also(line);
            }
        }));
        let name = req.package.manifest.name.clone();
        if let Some(q) = &d.queue {
            return self.publish(d, q, req, slots, name, worker_tag, (tx, rx));
        }
        let metrics = Arc::clone(&d.metrics);
        let work: pool::Work = Box::new(move |thread| {
            let Ok(d) = service.dispatch() else { return };
            // Until the run has its first CPU slot, its job is queued.
            let started = || {
                metrics.queued.fetch_sub(1, Ordering::Relaxed);
                metrics.running.fetch_add(1, Ordering::Relaxed);
                let _ = d.jobs.started(&id, &applet);
            };
            let Some(outcome) = thread.block_on(service.inner.runtime.run(req), started) else {
                // Shutting down before it started: the job stays queued for the next start.
                return;
            };
            metrics.running.fetch_sub(1, Ordering::Relaxed);
            metrics.record(&name, outcome.status, outcome.duration);
            let (result, error) = match &outcome.result {
                Ok(v) => (Some(v.clone()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let _ = d.jobs.finish(&id, outcome.status.into(), result, error, outcome.logs.clone());
            drop(slots);
            tracing::info!(job = %id, applet = %applet, status = outcome.status.name(), duration_ms = outcome.duration.as_millis() as u64, "job ended");
            let _ = tx.send(outcome);
        });
        d.metrics.queued.fetch_add(1, Ordering::Relaxed);
        d.pool.submit(work).map_err(|_| {
            // The work (and the slots it holds) was dropped with the refusal.
            d.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            ServiceError::QueueFull
        })?;
        Ok(rx)
    }

    /// Hands a run to the workers: its message to JetStream, its outcome from their events.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        d: &Dispatch,
        q: &queue::control::Control,
        req: RunRequest,
        slots: Slots,
        name: String,
        tag: &str,
        (tx, rx): (tokio::sync::oneshot::Sender<RunOutcome>, tokio::sync::oneshot::Receiver<RunOutcome>),
    ) -> Result<tokio::sync::oneshot::Receiver<RunOutcome>, ServiceError> {
        let manifest = &req.package.manifest;
        let msg = queue::RunMessage {
            run_id: req.run_id.clone(),
            applet: req.package.id(),
            hash: req.package.hash.clone(),
            caller: req.caller.clone(),
            dry_run: req.dry_run,
            validated: req.validated.clone(),
            params_json: req.params_json.clone(),
            params_pairs: req.params_pairs.clone(),
            origin: req.origin.clone(),
            tag: tag.to_string(),
            retry: manifest.run.retry,
            // Set by the control plane as it publishes.
            secret_token: String::new(),
            cmdb: None,
            unapproved_envs: req.unapproved_envs.clone(),
        };
        let pending = queue::control::Pending {
            done: tx,
            sink: req.log_sink.clone().expect("the job's log sink is set before a run is queued"),
            slots: Box::new(slots),
            name,
            applet: req.package.id(),
            hash: req.package.hash.clone(),
            limits: self.inner.runtime.limits_for(manifest),
            key: String::new(),
        };
        d.metrics.queued.fetch_add(1, Ordering::Relaxed);
        let run_id = req.run_id.clone();
        q.publish(msg, Arc::clone(&req.package), pending).map_err(|e| {
            d.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            ServiceError::QueueDown(e)
        })?;
        // Queued all the same; the job says what it waits for.
        if let Some(why) = q.nobody_takes(tag) {
            let _ = d.jobs.waiting(&run_id, &why);
        }
        Ok(rx)
    }

    /// A webhook delivery: the signature checked, the payload mapped onto params, run as an
    /// async job as `hook:NAME`.
    pub fn deliver(
        &self,
        name: &str,
        timestamp: Option<&str>,
        signature: Option<&str>,
        delivery: Option<&str>,
        body: &[u8],
    ) -> Result<Accepted, ServiceError> {
        let d = self.dispatch()?;
        // Unsigned is said before the hook is looked up, and an unknown hook is answered like a
        // wrong signature: the answers do not tell which hook names exist.
        if timestamp.is_none() || signature.is_none() {
            return Err(ServiceError::Delivery(DeliveryError::Unsigned));
        }
        let hook = d.hooks.get(name)?.ok_or(ServiceError::Delivery(DeliveryError::NoSuchHook))?;
        d.hooks.verify(&hook, timestamp, signature, delivery, body).map_err(ServiceError::Delivery)?;
        let payload: Value = serde_json::from_slice(body).map_err(ServiceError::Payload)?;
        let mut sub =
            Submission::new(Source::Registry(Reference::parse(&hook.applet)?), Caller { user: format!("hook:{name}"), via: "hook".into() });
        sub.params.json = Some(Hooks::params(&hook, &payload));
        // A delivery's params are checked by its run: a payload cannot be answered with fields.
        sub.check = Check::InRun;
        self.submit(self.prepare(sub)?, true)
    }

    /// After a start: jobs a stopped server left running become `interrupted`, and the queued
    /// ones are run again, exactly the version that was accepted, if their caller may still run
    /// it. Returns (restarted, queued).
    pub fn recover(&self) -> Result<(usize, usize), Error> {
        let d = self.dispatch()?;
        let queued = match &d.queue {
            // The runs JetStream took are there: workers run the queued ones and report the
            // running ones' ends (or their loss); those jobs only need their live state back.
            // A job the stopped server stored but JetStream never took is queued again below.
            Some(_) => {
                let store = self.inner.runtime.store().ok_or_else(|| Error::Internal("no store".into()))?;
                let published = store.tree(crate::store::keys::QUEUE_PUBLISHED);
                let mut untaken = Vec::new();
                for job in d.jobs.open_jobs()?.into_iter().filter(|j| j.status != JobStatus::AwaitingApproval) {
                    if job.status == JobStatus::Queued && !published.contains_key(job.id.as_bytes())? {
                        untaken.push(job);
                    } else {
                        d.jobs.relive(&job.id, CancelToken::default());
                    }
                }
                untaken
            }
            None => d.jobs.recover()?,
        };
        self.recover_approvals(d)?;
        let mut restarted = 0;
        for job in &queued {
            if job.dev || !job.is_async {
                let why = if job.dev {
                    "a dev applet's job is not re-run after a restart"
                } else {
                    "the server stopped before this synchronous run started"
                };
                d.jobs.finish(&job.id, JobStatus::Interrupted, None, Some(why.into()), Vec::new())?;
                continue;
            }
            // The caller must still exist and still be allowed to run it (hooks run as `hook:NAME`).
            let name = job.reference.split('@').next().unwrap_or_default();
            if !self.may_still_run(d, job)? {
                let why = format!("{} may no longer run {name}", job.user);
                d.jobs.finish(&job.id, JobStatus::Rejected, None, Some(why), Vec::new())?;
                continue;
            }
            let via = if job.user.starts_with("hook:") { "hook" } else { "http" };
            let mut req = match self.prepare(self.again(d, job, via)?) {
                Ok(p) => p.request,
                Err(e) => {
                    d.jobs.finish(&job.id, JobStatus::Error, None, Some(format!("could not be restarted: {e}")), Vec::new())?;
                    continue;
                }
            };
            req.run_id = job.id.clone();
            d.jobs.relive(&job.id, req.cancel.clone());
            // A job accepted before an approval rule covered it (and never approved) waits now.
            if job.approval.is_none() && self.held(&req).is_some() {
                self.hold_again(d, job, &req);
                continue;
            }
            let started = Slots::take(d, &req.package.manifest.name, &req.caller.user)
                .and_then(|slots| self.start(d, req, slots, job.worker_tag.as_deref().unwrap_or(queue::DEFAULT_TAG)));
            match started {
                Ok(_) => restarted += 1,
                Err(e) => {
                    d.jobs.finish(&job.id, JobStatus::Rejected, None, Some(format!("not restarted: {e}")), Vec::new())?;
                }
            }
        }
        Ok((restarted, queued.len()))
    }

    /// The submission that runs `job` again, as its caller came (`via`): exactly the package it
    /// was accepted with (by hash), its kept params, checked by the run (after a restart, an
    /// approval).
    fn again(&self, d: &Dispatch, job: &Job, via: &str) -> Result<Submission, Error> {
        let name = job.reference.split('@').next().unwrap_or_default();
        let reference =
            if job.hash.is_empty() { Reference::parse(&job.reference)? } else { Reference::Hash(name.to_string(), job.hash.clone()) };
        let mut sub = Submission::new(Source::Registry(reference), Caller { user: job.user.clone(), via: via.into() });
        sub.params.json = Some(d.jobs.raw_params(&job.id)?);
        (sub.dry_run, sub.allow_yanked, sub.check, sub.worker_tag) = (job.dry_run, job.allow_yanked, Check::InRun, job.worker_tag.clone());
        Ok(sub)
    }

    /// Shutdown: queued jobs stay queued for the next start; running ones get `grace` to finish,
    /// then are cancelled (and recorded as such).
    pub async fn drain(&self, grace: Duration) {
        let Ok(d) = self.dispatch() else { return };
        if d.queue.is_some() {
            // Runs are on workers: they go on without this process.
            return;
        }
        d.pool.drain();
        let running = || d.metrics.running.load(Ordering::Relaxed) > 0;
        let deadline = tokio::time::Instant::now() + grace;
        while running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if running() {
            let n = d.jobs.cancel_all();
            tracing::warn!(jobs = n, "shutdown: cancelling runs that did not finish in time");
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            while running() && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The quota slots a queued or running job holds; given back when dropped (when the run ends,
/// or with the work the queue refused).
struct Slots {
    in_use: InUse,
    keys: [String; 2],
}

/// Runs queued or running, per `applet:NAME` and `user:NAME`.
type InUse = Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>;

impl Slots {
    fn take(d: &Dispatch, applet: &str, caller: &str) -> Result<Slots, ServiceError> {
        let keys = [format!("applet:{applet}"), format!("user:{caller}")];
        let mut in_use = d.in_use.lock();
        let limits = [(d.quotas.per_applet, applet, "applet"), (d.quotas.per_caller, caller, "caller")];
        for (key, (limit, who, per)) in keys.iter().zip(limits) {
            if limit > 0 && in_use.get(key).copied().unwrap_or(0) >= limit {
                return Err(ServiceError::Quota(format!(
                    "{who} already has {limit} runs queued or running (the limit per {per}); retry later"
                )));
            }
        }
        for key in &keys {
            *in_use.entry(key.clone()).or_default() += 1;
        }
        drop(in_use);
        Ok(Slots { in_use: Arc::clone(&d.in_use), keys })
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock();
        for key in &self.keys {
            if let Some(n) = in_use.get_mut(key) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Param errors with the values of secret params (as given) removed.
fn redact_errors(
    package: &AppletPackage,
    given: &Map<String, Value>,
    pairs: &[(String, String)],
    errs: Vec<ParamError>,
) -> Vec<ParamError> {
    let is_secret = |k: &str| package.manifest.params.get(k).is_some_and(|s| s.secret);
    let mut secrets: Vec<String> = given
        .iter()
        .filter(|(k, _)| is_secret(k))
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    secrets.extend(pairs.iter().filter(|(k, _)| is_secret(k)).map(|(_, v)| v.clone()));
    let r = crate::runtime::redact::Redactor::new(secrets);
    errs.into_iter().map(|e| ParamError { param: e.param, message: r.apply(&e.message).into_owned() }).collect()
}
