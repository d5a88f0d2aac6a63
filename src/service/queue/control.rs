//! The control plane's side of the queue: publish a run (its package put by hash first), apply
//! what workers report to the job records and the one audit chain, forward cancels, and keep
//! the workers' heartbeats.
//!
//! The run service is synchronous (its callers are HTTP handlers and CLI commands), so the NATS
//! client lives on a small runtime of its own and the service waits for it where it must (a
//! publish is answered by JetStream before the run counts as accepted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::{EVENTS, Event, HEARTBEATS, Heartbeat, Link, QueueSettings, RunMessage};
use crate::error::Error;
use crate::runtime::context::LogSink;
use crate::runtime::limits::RunLimits;
use crate::runtime::{RunOutcome, RunStatus};
use crate::service::jobs::{JobStatus, Jobs};
use crate::service::metrics::Metrics;
use crate::store::Store;
use crate::store::audit::AuditEvent;

/// A run published and not ended, as the control plane that published it knows it.
pub struct Pending {
    pub done: tokio::sync::oneshot::Sender<RunOutcome>,
    /// The job's log, and a caller's own sink.
    pub sink: LogSink,
    /// The quota slots the run holds, given back when it ends.
    pub slots: Box<dyn Send>,
    pub name: String,
    pub applet: String,
    pub hash: String,
    pub limits: RunLimits,
    /// The run's event key, the digest of its credential for secrets (set as it is published).
    pub key: String,
}

/// A worker as its heartbeats tell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerInfo {
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// Seconds since its last heartbeat.
    pub seen_ago_s: f64,
}

pub struct Control {
    link: Link,
    store: Store,
    /// Bumped by every cmdb change (the audit log's tap sees them); the copy workers get is
    /// made again when it moved.
    cmdb_generation: Arc<std::sync::atomic::AtomicU64>,
    cmdb_copy: Mutex<Option<(u64, String)>>,
    /// The NATS client's runtime (taken out when the control plane is dropped).
    rt: Option<tokio::runtime::Runtime>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
    workers: Arc<Mutex<HashMap<String, (Heartbeat, Instant)>>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How long the service waits for JetStream to take a run.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

impl Control {
    /// Connects and starts applying worker events to `jobs` and `store`'s audit chain.
    pub fn start(settings: QueueSettings, store: Store, jobs: Jobs, metrics: Arc<Metrics>) -> Result<Control, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("opslet-queue")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("the queue's runtime: {e}")))?;
        let link = rt.block_on(Link::connect(settings, "opslet-control-plane"))?;
        let cmdb_generation = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let bump = Arc::clone(&cmdb_generation);
        store.audit().set_tap(Some(Arc::new(move |rec| {
            if rec.kind.starts_with("cmdb.") {
                bump.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        })));
        let control = Control {
            link,
            store: store.clone(),
            cmdb_generation,
            cmdb_copy: Mutex::new(None),
            rt: Some(rt),
            pending: Default::default(),
            workers: Default::default(),
        };
        let apply = Apply { store, jobs, metrics, pending: Arc::clone(&control.pending) };
        let handle = control.handle();
        let link = control.link.clone();
        handle.spawn(async move {
            loop {
                if let Err(e) = consume_events(&link, &apply).await {
                    tracing::warn!(error = %e, "reading worker events stopped; starting again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let (link, workers) = (control.link.clone(), Arc::clone(&control.workers));
        handle.spawn(async move {
            loop {
                if let Ok(mut sub) = link.client.subscribe(format!("{HEARTBEATS}.*")).await {
                    while let Some(m) = sub.next().await {
                        if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&m.payload) {
                            workers.lock().insert(beat.id.clone(), (beat, Instant::now()));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let (link, pending, store) = (control.link.clone(), Arc::clone(&control.pending), control.store.clone());
        handle.spawn(async move {
            loop {
                if let Ok(mut sub) = link.client.subscribe(super::SECRETS).await {
                    while let Some(m) = sub.next().await {
                        let Some(reply) = m.reply.clone() else { continue };
                        let answer = answer_secret(&pending, &store, &m.payload).await;
                        let _ = link.client.publish(reply, serde_json::to_vec(&answer).unwrap_or_default().into()).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(control)
    }

    /// The name of the cmdb copy workers get now, put in the object store when it changed.
    fn cmdb_copy(&self) -> Result<(String, Option<Vec<u8>>), Error> {
        let generation = self.cmdb_generation.load(std::sync::atomic::Ordering::Acquire);
        if let Some((g, name)) = self.cmdb_copy.lock().as_ref()
            && *g == generation
        {
            return Ok((name.clone(), None));
        }
        let cmdb = crate::cmdb::Cmdb::new(self.store.clone())?;
        let copy = super::CmdbCopy { hosts: cmdb.hosts()?, groups: cmdb.groups()? };
        let body = serde_json::to_vec(&copy).expect("a cmdb copy serializes");
        use sha2::Digest;
        let name = format!("cmdb-{}", hex::encode(sha2::Sha256::digest(&body)));
        Ok((name, Some(body)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.rt.as_ref().expect("the queue runtime lives as long as the control plane").handle().clone()
    }

    /// Runs `fut` on the queue's runtime and waits for it (from any thread, async or not).
    fn wait<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(PUBLISH_TIMEOUT + Duration::from_secs(1)).ok()
    }

    /// `[[workers.route]]`: (host selector, tag).
    pub fn routes(&self) -> &[(String, String)] {
        &self.link.settings.routes
    }

    /// Whether NATS is reachable now.
    pub fn connected(&self) -> bool {
        self.link.connected()
    }

    /// Publishes a run for a worker with its tag; the package goes to the object store first.
    /// `Err` says why the queue did not take it (the run is then not pending).
    pub fn publish(&self, mut msg: RunMessage, package: Arc<crate::applet::AppletPackage>, mut pending: Pending) -> Result<(), String> {
        if !self.connected() {
            return Err(format!("the run queue (NATS at {}) is unreachable; retry later", super::split_login(&self.link.settings.url).0));
        }
        let token = {
            let mut b = [0u8; 24];
            getrandom::fill(&mut b).map_err(|e| format!("no randomness for the run's credential: {e}"))?;
            hex::encode(b)
        };
        pending.key = super::event_key(&token);
        msg.secret_token = token;
        let (cmdb_name, cmdb_body) = self.cmdb_copy().map_err(|e| format!("copying the cmdb for workers: {e}"))?;
        msg.cmdb = Some(cmdb_name.clone());
        let (run_id, key) = (msg.run_id.clone(), pending.key.clone());
        // Pending before the publish: a fast worker's first event must find it.
        self.pending.lock().insert(run_id.clone(), pending);
        let link = self.link.clone();
        let generation = self.cmdb_generation.load(std::sync::atomic::Ordering::Acquire);
        let cmdb_put = cmdb_body.is_some();
        let name_for_put = cmdb_name.clone();
        let published = self.wait(async move {
            let body = serde_json::to_vec(&msg).expect("a run message serializes");
            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                link.put_package(&package).await.map_err(|e| e.to_string())?;
                if let Some(c) = &cmdb_body {
                    link.put_blob(&name_for_put, c).await.map_err(|e| e.to_string())?;
                }
                let ack = link
                    .js
                    .send_publish(
                        super::run_subject(&msg.tag),
                        async_nats::jetstream::message::PublishMessage::build().payload(body.into()).message_id(&msg.run_id),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            })
            .await;
            match sent {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("the run queue (NATS) did not take the run: {e}")),
                Err(_) => Err("the run queue (NATS) did not answer in time; retry later".to_string()),
            }
        });
        let outcome = published.unwrap_or_else(|| Err("the run queue (NATS) did not answer in time; retry later".into()));
        match &outcome {
            Err(_) => {
                self.pending.lock().remove(&run_id);
            }
            Ok(()) => {
                if cmdb_put {
                    *self.cmdb_copy.lock() = Some((generation, cmdb_name));
                }
                // Taken: a restart does not publish it again, and still knows its credential.
                let published = self.store.tree(crate::store::keys::QUEUE_PUBLISHED);
                if let Err(e) = published.insert(run_id.as_bytes(), key.as_bytes()) {
                    tracing::warn!(job = %run_id, error = %e, "recording a published run");
                }
            }
        }
        outcome
    }

    /// Asks whichever worker runs `run_id` to stop it.
    pub fn cancel(&self, run_id: &str) {
        let (client, id) = (self.link.client.clone(), run_id.to_string());
        self.handle().spawn(async move {
            let _ = client.publish(super::CANCEL, id.into()).await;
            let _ = client.flush().await;
        });
    }

    /// Why no worker takes runs of `tag` now, if none does.
    pub fn nobody_takes(&self, tag: &str) -> Option<String> {
        let workers = self.workers();
        if workers.iter().any(|w| w.beat.tags.iter().any(|t| t == tag)) {
            return None;
        }
        let known: Vec<String> = workers.iter().map(|w| format!("{} [{}]", w.beat.id, w.beat.tags.join(", "))).collect();
        Some(format!(
            "no worker with tag `{tag}` is connected; the run waits in the queue until one is (connected: {})",
            if known.is_empty() { "none".to_string() } else { known.join("; ") }
        ))
    }

    /// Workers heard from in the last three heartbeats.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let mut w = self.workers.lock();
        w.retain(|_, (_, at)| at.elapsed() < super::HEARTBEAT * 3);
        let mut out: Vec<WorkerInfo> =
            w.values().map(|(beat, at)| WorkerInfo { beat: beat.clone(), seen_ago_s: at.elapsed().as_secs_f64() }).collect();
        out.sort_by(|a, b| a.beat.id.cmp(&b.beat.id));
        out
    }
}

/// A run's event key (the digest of its credential): from the run in flight, or as stored when
/// an earlier process of this control plane published it (with `open_only`, while its job is
/// open).
async fn run_key(pending: &Mutex<HashMap<String, Pending>>, store: &Store, run_id: &str, open_only: bool) -> Option<String> {
    if let Some(p) = pending.lock().get(run_id) {
        return Some(p.key.clone());
    }
    let (store, id) = (store.clone(), run_id.to_string());
    tokio::task::spawn_blocking(move || -> Option<String> {
        if open_only && !store.tree(crate::store::keys::JOBS_OPEN).contains_key(id.as_bytes()).ok()? {
            return None;
        }
        let stored = store.tree(crate::store::keys::QUEUE_PUBLISHED).get(id.as_bytes()).ok()??;
        Some(String::from_utf8_lossy(&stored).into_owned())
    })
    .await
    .ok()
    .flatten()
}

/// Answers a worker's request for a secret: only for a run in flight, with its credential.
async fn answer_secret(pending: &Mutex<HashMap<String, Pending>>, store: &Store, body: &[u8]) -> super::SecretAnswer {
    let refuse = |why: &str| super::SecretAnswer { value: None, error: Some(why.to_string()) };
    let Ok(req) = serde_json::from_slice::<super::SecretRequest>(body) else { return refuse("the request does not parse") };
    match run_key(pending, store, &req.run_id, true).await {
        Some(t) if !req.token.is_empty() && crate::util::same_secret(&t, &super::event_key(&req.token)) => {}
        // Unknown run, ended run, or a wrong credential: the same answer.
        _ => {
            tracing::warn!(job = %crate::util::truncate(&req.run_id, 64), "a secret request without a live run's credential was refused");
            return refuse("no run in flight has this credential");
        }
    }
    let store = store.clone();
    let name = req.name.clone();
    let got = tokio::task::spawn_blocking(move || crate::secrets::Secrets::open(store).and_then(|s| s.get(&name))).await;
    match got {
        Ok(Ok(Some(v))) => match String::from_utf8(v) {
            Ok(v) => super::SecretAnswer { value: Some(v), error: None },
            Err(_) => refuse(&format!("secret `{}` is not text", req.name)),
        },
        Ok(Ok(None)) => super::SecretAnswer { value: None, error: None },
        Ok(Err(e)) => refuse(&e.to_string()),
        Err(e) => refuse(&e.to_string()),
    }
}

/// The workers as Prometheus text: how many per tag set, and each one's runs in flight.
pub fn render_workers(workers: &[WorkerInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::from("# HELP opslet_workers Workers heard from lately, by their tags.\n# TYPE opslet_workers gauge\n");
    let mut by_tags: std::collections::BTreeMap<String, usize> = Default::default();
    for w in workers {
        *by_tags.entry(w.beat.tags.join(",")).or_default() += 1;
    }
    for (tags, n) in by_tags {
        let _ = writeln!(out, "opslet_workers{{tags=\"{tags}\"}} {n}");
    }
    out.push_str("# HELP opslet_worker_runs_in_flight Runs a worker executes now.\n# TYPE opslet_worker_runs_in_flight gauge\n");
    for w in workers {
        let _ = writeln!(out, "opslet_worker_runs_in_flight{{worker=\"{}\"}} {}", w.beat.id, w.beat.in_flight);
    }
    out
}

/// What applying a worker's event needs.
struct Apply {
    store: Store,
    jobs: Jobs,
    metrics: Arc<Metrics>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

/// Reads the events stream with the control plane's durable consumer and applies each event,
/// then acknowledges it (an event applied and not acknowledged comes again and is skipped).
async fn consume_events(link: &Link, apply: &Apply) -> Result<(), String> {
    let stream = link.js.get_stream(EVENTS).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .get_or_create_consumer(
            "control-plane",
            pull::Config {
                durable_name: Some("control-plane".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let header = |name: &str| m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
        let id = header(async_nats::header::NATS_MESSAGE_ID.as_ref());
        let signature = header(super::SIGNATURE).unwrap_or_default();
        let run_id = m.subject.as_str().strip_prefix("opslet.events.").unwrap_or_default().to_string();
        // Only the worker that took the run can report for it.
        let key = run_key(&apply.pending, &apply.store, &run_id, false).await;
        let signed = match (&id, &key) {
            (Some(id), Some(key)) => crate::util::same_secret(&super::sign_event(key, id, &m.payload), &signature),
            _ => false,
        };
        if !signed {
            tracing::warn!(subject = %m.subject, "an event not signed for its run was dropped (a forged or stray report)");
            let _ = m.ack().await;
            continue;
        }
        match (id, serde_json::from_slice::<Event>(&m.payload)) {
            (Some(id), Ok(ev)) => {
                let store = apply.store.clone();
                let (jobs, metrics, pending) = (apply.jobs.clone(), Arc::clone(&apply.metrics), Arc::clone(&apply.pending));
                // Store writes are blocking: off the async threads.
                let applied = tokio::task::spawn_blocking(move || Apply { store, jobs, metrics, pending }.apply(&run_id, &id, ev)).await;
                match applied {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        // Not acknowledged: it comes again after the ack wait.
                        tracing::error!(error = %e, "applying a worker's event failed; it will be retried");
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "applying a worker's event panicked"),
                }
            }
            _ => tracing::warn!(subject = %m.subject, "an event without an id or that does not parse; dropped"),
        }
        let _ = m.ack().await;
    }
    Ok(())
}

impl Apply {
    fn apply(&self, run_id: &str, id: &str, ev: Event) -> Result<(), Error> {
        let marks = self.store.tree(crate::store::keys::QUEUE_APPLIED);
        match ev {
            Event::Audit { kind, actor, via, applet, status, data } => {
                let ev = AuditEvent { kind, run_id: Some(run_id.to_string()), actor, via, applet, status, data };
                self.store.audit().append_once(ev, &marks, id.as_bytes())?;
                return Ok(());
            }
            _ if marks.contains_key(id.as_bytes())? => return Ok(()),
            Event::Started { worker } => {
                let applet = self.pending.lock().get(run_id).map(|p| p.applet.clone());
                let applet = match applet {
                    Some(a) => a,
                    None => self.jobs.get(run_id)?.map(|j| j.applet).unwrap_or_default(),
                };
                self.metrics.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                self.metrics.running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.jobs.started(run_id, &applet)?;
                tracing::info!(job = %run_id, worker = %worker, "job started on a worker");
            }
            Event::Log { line } => {
                let sink = self.pending.lock().get(run_id).map(|p| Arc::clone(&p.sink));
                match sink {
                    Some(sink) => sink(&line),
                    None => self.jobs.log(run_id, &line),
                }
                // Log lines are not marked: they are many, and one seen twice costs nothing.
                return Ok(());
            }
            Event::End(end) => {
                let pending = self.pending.lock().remove(run_id);
                let lost = !end.worker.is_empty();
                let job = self.jobs.get(run_id)?;
                let was_running = job.as_ref().is_some_and(|j| j.status == JobStatus::Running);
                let gauge = if was_running { &self.metrics.running } else { &self.metrics.queued };
                gauge.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let job_status = if lost { JobStatus::Interrupted } else { end.status.into() };
                let error = end.error.clone().map(super::WireError::into_error);
                let shown_error = error.as_ref().map(|e| e.to_string());
                if lost {
                    // The run's own end never came: close it in the chain.
                    let applet = job.map(|j| j.applet);
                    let _ = self.store.audit().end_if_open(
                        run_id,
                        AuditEvent {
                            kind: "run.end".into(),
                            run_id: Some(run_id.to_string()),
                            actor: None,
                            via: Some("queue".into()),
                            applet,
                            status: Some("interrupted".into()),
                            data: serde_json::json!({ "error": shown_error, "worker": end.worker }),
                        },
                    )?;
                }
                self.jobs.finish(run_id, job_status, end.result.clone(), shown_error, end.logs.clone())?;
                if let Some(p) = pending {
                    let duration = Duration::from_millis(end.duration_ms);
                    self.metrics.record(&p.name, end.status, duration);
                    let outcome = RunOutcome {
                        run_id: run_id.to_string(),
                        applet: p.applet,
                        hash: p.hash,
                        status: if lost { RunStatus::Error } else { end.status },
                        result: match (end.result, error) {
                            (Some(v), None) => Ok(v),
                            (_, Some(e)) => Err(e),
                            (None, None) => Ok(serde_json::Value::Null),
                        },
                        traceback: end.traceback,
                        logs: end.logs,
                        duration,
                        cpu: Duration::from_millis(end.cpu_ms),
                        limits: p.limits,
                        notes: end.notes,
                        targets: end.targets,
                        plan: Vec::new(),
                    };
                    drop(p.slots);
                    let _ = p.done.send(outcome);
                }
            }
        }
        marks.insert(id.as_bytes(), b"")?;
        Ok(())
    }
}
