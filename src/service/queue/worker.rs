//! `opslet worker`: pulls runs of its tags from JetStream and executes them on the same run
//! threads as `opslet serve` (the service's [`RunPool`]), reporting each run's start, log
//! lines, audit records and end as events.
//!
//! A run message is acknowledged only after its end has been reported; while the run goes on,
//! the worker tells JetStream it is still in progress. A worker that dies mid-run stops doing
//! that, so JetStream gives the message to another worker once the ack wait has passed: that
//! worker does not run it again (it may have done things on hosts already) unless the applet
//! says `retry = true`; it reports the run lost, and the control plane ends it `interrupted`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::{EndMsg, Event, HEARTBEATS, Heartbeat, Link, RUNS, RunMessage, WireError};
use crate::applet::AppletPackage;
use crate::error::Error;
use crate::runtime::context::LogLine;
use crate::runtime::{CancelToken, RunRequest, Runtime};
use crate::service::pool::RunPool;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Names this worker in heartbeats, events and logs.
    pub id: String,
    /// Tags whose runs it takes (`default` takes runs that ask for none).
    pub tags: Vec<String>,
    /// Runs computing at once (CPU slots) and in flight at most.
    pub cpu_slots: usize,
    pub max_runs: usize,
}

/// A run this worker executes now: where its events go, and how to stop it.
struct Running {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    cancel: CancelToken,
    /// The run's credential for secrets.
    secret_token: String,
}

type RunningMap = Arc<Mutex<HashMap<String, Running>>>;

/// How long a run waits for the control plane to answer a secret request.
const SECRET_TIMEOUT: Duration = Duration::from_secs(10);

/// Pulls and executes runs until `shutdown` resolves, then lets the runs in flight end.
pub async fn serve(
    link: Link,
    runtime: Runtime,
    settings: WorkerSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let pool = Arc::new(RunPool::start(settings.cpu_slots, settings.max_runs, settings.max_runs));
    let running: RunningMap = Default::default();
    // Secrets a run needs come from the control plane while it runs, asked for with the run's
    // credential; the run's thread waits for the answer.
    let runtime = {
        let (link, running, handle) = (link.clone(), Arc::clone(&running), tokio::runtime::Handle::current());
        runtime.with_secret_source(Arc::new(move |run_id: &str, name: &str| {
            let token = running.lock().get(run_id).map(|r| r.secret_token.clone()).ok_or("the run is not in flight on this worker")?;
            let body =
                serde_json::to_vec(&super::SecretRequest { run_id: run_id.into(), token, name: name.into() }).map_err(|e| e.to_string())?;
            let (tx, rx) = std::sync::mpsc::channel();
            let client = link.client.clone();
            handle.spawn(async move {
                let answer = tokio::time::timeout(SECRET_TIMEOUT, client.request(super::SECRETS, body.into())).await;
                let _ = tx.send(answer);
            });
            let answer = match rx.recv_timeout(SECRET_TIMEOUT + Duration::from_secs(1)) {
                Ok(Ok(Ok(m))) => serde_json::from_slice::<super::SecretAnswer>(&m.payload).map_err(|e| e.to_string())?,
                Ok(Ok(Err(e))) => return Err(format!("asking the control plane for secret `{name}`: {e}")),
                _ => return Err(format!("the control plane did not answer for secret `{name}` in time")),
            };
            match answer.error {
                Some(e) => Err(format!("secret `{name}`: {e}")),
                None => Ok(answer.value),
            }
        }))
    };
    let in_flight = Arc::new(AtomicUsize::new(0));
    let packages: Arc<Mutex<HashMap<String, Arc<AppletPackage>>>> = Default::default();

    // The runtime's audit records go out as events of the run that made them.
    let store = runtime.store().cloned().ok_or_else(|| Error::Internal("a worker's runtime needs its cache store".into()))?;
    let tap_running = Arc::clone(&running);
    store.audit().set_tap(Some(Arc::new(move |rec| {
        let Some(id) = &rec.run_id else { return };
        if let Some(r) = tap_running.lock().get(id) {
            let _ = r.events.send(Event::Audit {
                kind: rec.kind.clone(),
                actor: rec.actor.clone(),
                via: rec.via.clone(),
                applet: rec.applet.clone(),
                status: rec.status.clone(),
                data: rec.data.clone(),
            });
        }
    })));

    // Cancels reach every worker; the one running the run stops it.
    let cancels = {
        let mut sub = link.client.subscribe(super::CANCEL).await.map_err(|e| Error::Internal(format!("subscribing to cancels: {e}")))?;
        let running = Arc::clone(&running);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let id = String::from_utf8_lossy(&m.payload).into_owned();
                if let Some(r) = running.lock().get(&id) {
                    tracing::info!(job = %id, "cancel requested");
                    r.cancel.cancel();
                }
            }
        })
    };

    let beat = {
        let (client, settings, in_flight) = (link.client.clone(), settings.clone(), Arc::clone(&in_flight));
        let started_at = chrono::Utc::now();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        tokio::spawn(async move {
            loop {
                let b = Heartbeat {
                    id: settings.id.clone(),
                    tags: settings.tags.clone(),
                    in_flight: in_flight.load(Ordering::Relaxed),
                    started_at,
                    host: host.clone(),
                };
                let _ = client.publish(format!("{HEARTBEATS}.{}", settings.id), serde_json::to_vec(&b).unwrap_or_default().into()).await;
                tokio::time::sleep(super::HEARTBEAT).await;
            }
        })
    };

    let cmdb_loaded: Arc<tokio::sync::Mutex<Option<String>>> = Default::default();
    let stream = link.js.get_stream(RUNS).await.map_err(|e| Error::Internal(format!("the runs stream: {e}")))?;
    let mut pullers = Vec::new();
    for tag in &settings.tags {
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &format!("runs-{tag}"),
                pull::Config {
                    durable_name: Some(format!("runs-{tag}")),
                    filter_subject: super::run_subject(tag),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: link.settings.ack_wait,
                    max_deliver: 20,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Internal(format!("the consumer of tag `{tag}`: {e}")))?;
        let ctx = Ctx {
            link: link.clone(),
            runtime: runtime.clone(),
            pool: Arc::clone(&pool),
            running: Arc::clone(&running),
            in_flight: Arc::clone(&in_flight),
            packages: Arc::clone(&packages),
            settings: settings.clone(),
            cmdb_loaded: Arc::clone(&cmdb_loaded),
        };
        pullers.push(tokio::spawn(async move { ctx.pull(consumer).await }));
    }
    tracing::info!(worker = %settings.id, tags = ?settings.tags, "worker ready");
    shutdown.await;
    for p in &pullers {
        p.abort();
    }
    // Runs in flight end (or are cancelled by their own limits); their messages are acked then.
    while in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    beat.abort();
    cancels.abort();
    store.audit().set_tap(None);
    Ok(())
}

#[derive(Clone)]
struct Ctx {
    link: Link,
    runtime: Runtime,
    pool: Arc<RunPool>,
    running: RunningMap,
    in_flight: Arc<AtomicUsize>,
    packages: Arc<Mutex<HashMap<String, Arc<AppletPackage>>>>,
    settings: WorkerSettings,
    /// The cmdb copy in the cache store now.
    cmdb_loaded: Arc<tokio::sync::Mutex<Option<String>>>,
}

impl Ctx {
    /// Takes one run at a time while there is room for it.
    async fn pull(&self, consumer: PullConsumer) {
        loop {
            if self.in_flight.load(Ordering::Relaxed) >= self.settings.max_runs {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let batch = consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "pulling runs failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(m) = batch.next().await {
                match m {
                    Ok(m) => self.take(m).await,
                    Err(e) => tracing::warn!(error = %e, "a run message could not be read"),
                }
            }
        }
    }

    async fn take(&self, m: async_nats::jetstream::Message) {
        let msg: RunMessage = match serde_json::from_slice(&m.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::error!(error = %e, "a run message that does not parse; dropped");
                let _ = m.ack_with(AckKind::Term).await;
                return;
            }
        };
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
        let events = Events::new(self.link.clone(), &msg);
        if delivered > 1 && !msg.retry {
            // Another worker had it and went away: the run may have done things already.
            tracing::warn!(job = %msg.run_id, delivered, "a run whose worker was lost; reporting it, not running it again");
            let why = "its worker stopped while it ran; not run again (the applet does not declare `retry = true`)";
            let error = WireError { kind: "interrupted".into(), message: why.into(), fields: Vec::new(), limit: None };
            let end = EndMsg::without_run(crate::runtime::RunStatus::Error, error, &self.settings.id);
            // Numbered after anything the lost worker could have sent.
            if events.publish_at(u64::MAX / 2, Event::End(Box::new(end))).await.is_ok() {
                let _ = m.double_ack().await;
            }
            return;
        }
        let package = match self.package(&msg.hash).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(job = %msg.run_id, error = %e, "the run's package could not be had");
                let end = EndMsg::without_run(crate::runtime::RunStatus::InvalidApplet, WireError::of(&e), "");
                if events.publish(Event::End(Box::new(end))).await.is_ok() {
                    let _ = m.double_ack().await;
                }
                return;
            }
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancelToken::default();
        if let Err(e) = self.cmdb(msg.cmdb.as_deref()).await {
            tracing::warn!(job = %msg.run_id, error = %e, "the cmdb copy could not be had; the run sees the last one");
        }
        let secret_token = msg.secret_token.clone();
        self.running.lock().insert(msg.run_id.clone(), Running { events: tx.clone(), cancel: cancel.clone(), secret_token });
        // Events go out in order, each acknowledged by JetStream before the next.
        let sender = tokio::spawn(events.clone().drain(rx));
        // While the run goes on, JetStream hears that it is in progress.
        let m = Arc::new(m);
        let progress = {
            let (m, every) = (Arc::clone(&m), self.link.settings.ack_wait / 3);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            })
        };

        let mut req = RunRequest::new(package, msg.caller.clone());
        req.run_id = msg.run_id.clone();
        req.params_json = msg.params_json;
        req.params_pairs = msg.params_pairs;
        req.validated = msg.validated;
        req.dry_run = msg.dry_run;
        req.unapproved_envs = msg.unapproved_envs;
        req.origin = msg.origin;
        req.cancel = cancel;
        let log_tx = tx.clone();
        req.log_sink = Some(Arc::new(move |line: &LogLine| {
            let _ = log_tx.send(Event::Log { line: line.clone() });
        }));
        let (runtime, worker, run_id) = (self.runtime.clone(), self.settings.id.clone(), msg.run_id.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let start_tx = tx.clone();
        let end_tx = tx;
        let work: crate::service::pool::Work = Box::new(move |thread| {
            let started = || {
                let _ = start_tx.send(Event::Started { worker });
            };
            if let Some(o) = thread.block_on(runtime.run(req), started) {
                let (result, error) = match &o.result {
                    Ok(v) => (Some(v.clone()), None),
                    Err(e) => (None, Some(WireError::of(e))),
                };
                let end = EndMsg {
                    status: o.status,
                    result,
                    error,
                    traceback: o.traceback,
                    logs: o.logs,
                    duration_ms: o.duration.as_millis() as u64,
                    cpu_ms: o.cpu.as_millis() as u64,
                    notes: o.notes,
                    targets: o.targets,
                    worker: String::new(),
                };
                let _ = end_tx.send(Event::End(Box::new(end)));
            }
            let _ = done_tx.send(());
        });
        if self.pool.submit(work).is_err() {
            // Full after all: JetStream gives the run to a worker with room (or to this one later).
            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_millis(200)))).await;
            self.running.lock().remove(&msg.run_id);
            progress.abort();
            sender.abort();
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let (running, in_flight) = (Arc::clone(&self.running), Arc::clone(&self.in_flight));
        tokio::spawn(async move {
            let _ = done_rx.await;
            // Every event out (the channel closes with the last sender) before the ack.
            running.lock().remove(&run_id);
            let sent = sender.await;
            progress.abort();
            match sent {
                Ok(Ok(())) => {
                    let _ = m.double_ack().await;
                }
                _ => tracing::error!(job = %run_id, "the run's events could not all be sent; its message is left to be redelivered"),
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Makes the cache store's cmdb the copy `name` (when it is not already).
    async fn cmdb(&self, name: Option<&str>) -> Result<(), Error> {
        let Some(name) = name else { return Ok(()) };
        let mut current = self.cmdb_loaded.lock().await;
        if current.as_deref() == Some(name) {
            return Ok(());
        }
        let body = self.link.get_blob(name).await?;
        let copy: super::CmdbCopy = serde_json::from_slice(&body).map_err(|e| Error::Store(format!("{name} is unreadable: {e}")))?;
        let store = self.runtime.store().cloned().ok_or_else(|| Error::Internal("no cache store".into()))?;
        tokio::task::spawn_blocking(move || crate::cmdb::Cmdb::new(store)?.load_copy(&copy.hosts, &copy.groups))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        *current = Some(name.to_string());
        Ok(())
    }

    async fn package(&self, hash: &str) -> Result<Arc<AppletPackage>, Error> {
        if let Some(p) = self.packages.lock().get(hash) {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(self.link.get_package(hash).await?);
        self.packages.lock().insert(hash.to_string(), Arc::clone(&p));
        Ok(p)
    }
}

/// The events of one run, numbered for de-duplication and signed with the run's key.
#[derive(Clone)]
struct Events {
    link: Link,
    run_id: String,
    key: String,
    next: Arc<AtomicU64>,
}

impl Events {
    fn new(link: Link, msg: &RunMessage) -> Events {
        Events { link, run_id: msg.run_id.clone(), key: super::event_key(&msg.secret_token), next: Arc::new(AtomicU64::new(0)) }
    }

    async fn publish(&self, ev: Event) -> Result<(), String> {
        let n = self.next.fetch_add(1, Ordering::AcqRel);
        self.publish_at(n, ev).await
    }

    /// Publishes `ev` as event `n` of the run, retrying until JetStream has it.
    async fn publish_at(&self, n: u64, ev: Event) -> Result<(), String> {
        let body: bytes::Bytes = serde_json::to_vec(&ev).map_err(|e| e.to_string())?.into();
        let id = super::event_id(&self.run_id, n);
        let signature = super::sign_event(&self.key, &id, &body);
        for attempt in 0u32.. {
            let sent = async {
                self.link
                    .js
                    .send_publish(
                        super::event_subject(&self.run_id),
                        async_nats::jetstream::message::PublishMessage::build()
                            .payload(body.clone())
                            .message_id(&id)
                            .header(super::SIGNATURE, signature.as_str()),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 600 => {
                    if attempt % 20 == 0 {
                        tracing::warn!(job = %self.run_id, error = %e, "an event could not be sent; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    async fn drain(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Result<(), String> {
        while let Some(ev) = rx.recv().await {
            self.publish(ev).await?;
        }
        Ok(())
    }
}
