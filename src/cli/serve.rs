//! `opslet serve`: the HTTP API. Each setting comes from its flag, else its environment
//! variable, else `[serve]` in opslet.toml, else the default.

use std::net::SocketAddr;

use clap::Args;

use super::Global;
use crate::auth::Auth;
use crate::config::ServeSettings;
use crate::error::Error;
use crate::http::{AppState, ServeConfig};
use crate::registry::Registry;
use crate::service::{DispatchSettings, Quotas, RunService};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on, port 0 picks a free one [default: 127.0.0.1:8620].
    #[arg(long, env = "OPSLET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Runs computing at once (executing Lua; a run waiting on a host, a BMC or a sleep does not
    /// count) [default: the number of CPUs].
    #[arg(long, env = "OPSLET_RUN_THREADS")]
    pub run_threads: Option<usize>,
    /// Runs in flight at once, waiting or computing, each on a thread of its own [default: 4096].
    #[arg(long, env = "OPSLET_MAX_RUNS")]
    pub max_runs: Option<usize>,
    /// Runs allowed to wait for their first CPU slot; more get 503 with Retry-After [default: 64].
    /// Or a NATS URL (nats://host:4222, tls://host:4222): this server becomes the control plane
    /// and `opslet worker` processes run the applets (docs/scale-out.md).
    #[arg(long, env = "OPSLET_QUEUE", value_name = "N|URL")]
    pub queue: Option<String>,
    /// With `--queue URL`: a NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "OPSLET_QUEUE_CREDS", value_name = "FILE")]
    pub queue_creds: Option<std::path::PathBuf>,
    /// With `--queue tls://…`: the CA certificate to trust for NATS.
    #[arg(long, env = "OPSLET_QUEUE_CA", value_name = "FILE")]
    pub queue_ca: Option<std::path::PathBuf>,
    /// Largest request body, in bytes [default: 1048576].
    #[arg(long, env = "OPSLET_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// How long a synchronous run request waits before the run is cancelled [default: 60s].
    #[arg(long, env = "OPSLET_SYNC_TIMEOUT")]
    pub sync_timeout: Option<String>,
    /// Most runs of one applet queued or running at once; more get 429, 0: no limit [default: 16].
    #[arg(long, env = "OPSLET_APPLET_LIMIT")]
    pub applet_limit: Option<usize>,
    /// Most runs of one caller queued or running at once; more get 429, 0: no limit [default: 32].
    #[arg(long, env = "OPSLET_USER_LIMIT")]
    pub user_limit: Option<usize>,
    /// At shutdown, how long running jobs may take to finish before they are cancelled [default: 10s].
    #[arg(long, env = "OPSLET_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// How long finished jobs are kept, purged at start [default: 7d].
    #[arg(long, env = "OPSLET_JOB_RETENTION")]
    pub job_retention: Option<String>,
    /// Connections open at once; more are answered 503 and closed [default: 4096, at most what
    /// the open-files limit allows].
    #[arg(long, env = "OPSLET_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's headers, and a kept-alive connection may
    /// wait for its next request [default: 10s].
    #[arg(long, env = "OPSLET_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Also serve the applet folders under DIR by name (ahead of the registry), reloading each
    /// when its files change.
    #[arg(long, value_name = "DIR")]
    pub dev: Option<std::path::PathBuf>,
    /// Write the server's log lines as JSON (same as OPSLET_LOG_FORMAT=json).
    #[arg(long)]
    pub log_json: bool,
}

/// The queue settings of `--queue URL` (serve and worker alike). `OPSLET_QUEUE_ACK_WAIT` sets
/// how long a run may go unreported before it counts as lost (30s); `OPSLET_QUEUE_DUP_WINDOW`
/// JetStream's de-duplication window of the streams the first process makes (10m).
pub fn queue_settings(
    url: &str,
    creds: Option<std::path::PathBuf>,
    ca: Option<std::path::PathBuf>,
) -> Result<crate::service::queue::QueueSettings, Error> {
    let mut q = crate::service::queue::QueueSettings::new(url)?;
    (q.creds_file, q.tls_ca) = (creds, ca);
    if let Ok(w) = std::env::var("OPSLET_QUEUE_ACK_WAIT") {
        q.ack_wait = duration("OPSLET_QUEUE_ACK_WAIT", &w)?;
    }
    if let Ok(w) = std::env::var("OPSLET_QUEUE_DUP_WINDOW") {
        q.duplicate_window = duration("OPSLET_QUEUE_DUP_WINDOW", &w)?;
    }
    Ok(q)
}

fn duration(what: &str, s: &str) -> Result<std::time::Duration, Error> {
    humantime::parse_duration(s).map_err(|e| Error::Usage(format!("{what} `{s}`: {e}")))
}

pub fn run(global: &Global, args: ServeArgs) -> Result<i32, Error> {
    let config = global.config()?;
    let file: &ServeSettings = &config.serve;
    let listen = match (args.listen, &file.listen) {
        (Some(a), _) => a,
        (None, Some(s)) => s.parse().map_err(|e| Error::Config(format!("invalid config: serve.listen `{s}`: {e}")))?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 8620)),
    };
    let threads = args.run_threads.or(file.run_threads).unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // `--queue` is a length, or the NATS URL of the workers' queue.
    let (queue, workers) = match args.queue.as_deref().map(str::trim) {
        Some(q) if q.contains("://") => {
            let mut settings = queue_settings(q, args.queue_creds.clone(), args.queue_ca.clone())?;
            for (i, r) in config.workers.route.iter().enumerate() {
                let at = |m: String| Error::Config(format!("invalid config: workers.route[{i}]: {m}"));
                crate::util::validate_name(&r.tag).map_err(|m| at(format!("tag `{}` {m}", r.tag)))?;
                crate::cmdb::Selector::parse(&r.hosts).map_err(|m| at(format!("hosts `{}`: {m}", r.hosts)))?;
                settings.routes.push((r.hosts.clone(), r.tag.clone()));
            }
            (file.queue.unwrap_or(64), Some(settings))
        }
        Some(q) => (
            q.parse::<usize>()
                .map_err(|_| Error::Usage(format!("--queue `{q}`: give a number of runs, or a NATS URL like nats://127.0.0.1:4222")))?,
            None,
        ),
        None => (file.queue.unwrap_or(64), None),
    };
    let max_runs = args.max_runs.or(file.max_runs).unwrap_or(4096);
    let body_limit = args.body_limit.or(file.body_limit).unwrap_or(1024 * 1024);
    let applet_limit = args.applet_limit.or(file.applet_limit).unwrap_or(16);
    let user_limit = args.user_limit.or(file.user_limit).unwrap_or(32);
    let sync_timeout = duration("sync timeout", args.sync_timeout.as_deref().or(file.sync_timeout.as_deref()).unwrap_or("60s"))?;
    let shutdown_grace = duration("shutdown grace", args.shutdown_grace.as_deref().or(file.shutdown_grace.as_deref()).unwrap_or("10s"))?;
    let keep = duration("job retention", args.job_retention.as_deref().or(file.job_retention.as_deref()).unwrap_or("7d"))?;
    let header_timeout = duration("header timeout", args.header_timeout.as_deref().or(file.header_timeout.as_deref()).unwrap_or("10s"))?;
    // A descriptor per connection: many systems start processes with a soft limit of 1024.
    let files = match crate::util::raise_open_files_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!(before, after, "open-files limit raised to the hard limit");
            }
            after
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the open-files limit");
            1024
        }
    };
    // Room for the store, the run threads' host connections and the local socket besides.
    let fit = (files as usize).saturating_sub(512).max(64);
    let wanted = args.max_connections.or(file.max_connections).unwrap_or(4096);
    if wanted == 0 {
        return Err(Error::Usage("max connections must be at least 1".into()));
    }
    let max_connections = if wanted > fit {
        tracing::warn!(
            wanted,
            allowed = fit,
            open_files = files,
            "max connections lowered to fit the open-files limit (raise `ulimit -Hn`)"
        );
        fit
    } else {
        wanted
    };

    let store = global.open_store()?;
    let runtime = global.runtime(&config, store.clone())?;
    let settings = DispatchSettings {
        run_threads: threads,
        max_runs,
        queue,
        quotas: Quotas { per_applet: applet_limit, per_caller: user_limit },
        dev: args.dev.clone(),
        workers,
        approvals: crate::service::Policy::of(&config)?,
        notify: config.notify.clone(),
        publish_tests: config.publish.tests().map_err(Error::Config)?,
    };
    let service = RunService::dispatching(runtime, settings)?;
    let retention = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7));
    let jobs = service.jobs()?.clone();
    let purged = jobs.purge(retention)?;
    let (restarted, queued) = service.recover()?;
    if queued > 0 || purged > 0 {
        tracing::info!(restarted, queued, purged, "jobs recovered after start");
    }
    let state = AppState {
        registry: Registry::new(store.clone())?,
        auth: Auth::new(store.clone())?,
        service: service.clone(),
        sync_timeout,
        sessions: std::sync::Arc::new(crate::http::session::Sessions::stored(&store)),
        // `opslet --server` commands run like those of the local socket, as the token's user.
        commands: crate::http::commands::Commands::new(super::remote::runner(
            global.data_dir.clone(),
            global.config_path.clone(),
            store.clone(),
            service.clone(),
        )),
        artifacts: Some(std::sync::Arc::new(crate::service::artifacts::Artifacts::new(&config, store.clone())?)),
    };
    let cfg = ServeConfig { listen, body_limit, shutdown_grace, limits: crate::http::Limits { max_connections, header_timeout } };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the server runtime: {e}")))?;
    // Finished jobs are purged while the server runs too, a quarter of the retention apart
    // (between 1 s and 10 minutes), so the job store stays as large as the retention makes it.
    let every = (keep / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(600));
    rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let jobs = jobs.clone();
            match tokio::task::spawn_blocking(move || jobs.purge(retention)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(purged = n, "finished jobs past their retention removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "purging finished jobs"),
                Err(_) => {}
            }
        }
    });
    // Approval requests whose time is up end as `expired`.
    rt.spawn(service.clone().expire_approvals());
    if let Some(file) = config.audit.anchor_file.clone() {
        let every = duration("audit anchor_every", &config.audit.anchor_every)?;
        rt.spawn(anchor_loop(store.clone(), global.data_dir.clone(), file, every));
    }
    // Schedules: the missed-run policies first, then fires on time (this process holds the data
    // dir, so it is the one scheduler, with workers too).
    rt.spawn(crate::service::schedule::Scheduler::new(&service)?.run());
    // CLI commands on this data dir come to the server from now on (see `cli::local`).
    let socket = rt.block_on(super::local::listen(global.data_dir.clone(), store.clone(), state.service.clone()))?;
    let result = rt.block_on(crate::http::serve(state, &cfg));
    socket.abort();
    let _ = std::fs::remove_file(global.data_dir.join(super::local::SOCKET));
    if let Some(file) = &config.audit.anchor_file {
        // The last head this server wrote, anchored as it stops.
        if let Err(e) = crate::store::anchor::write(store.audit(), &global.data_dir, file) {
            tracing::warn!(error = %e, "anchoring the audit log at shutdown");
        }
    }
    store.flush()?;
    result.map(|()| 0)
}

/// Anchors the audit chain's head in `file` when it moved: at start, soon (within 2 s) after a
/// record that is not part of a run (an account, grant, secret, hook, registry or store change:
/// what an intruder would most want to cut), and otherwise every `every`.
async fn anchor_loop(store: crate::store::Store, data_dir: std::path::PathBuf, file: std::path::PathBuf, every: std::time::Duration) {
    use crate::store::anchor;
    let routine = |kind: &str| kind.starts_with("run.") || kind == "action" || kind.starts_with("http.");
    let mut anchored: Option<u64> = anchor::last(&file).ok().flatten().map(|a| a.count);
    // Records looked at since the last anchor (each once), and whether one was not a run's.
    let mut checked_to = anchored.unwrap_or(0);
    let mut urgent = false;
    let mut since = std::time::Instant::now().checked_sub(every).unwrap_or_else(std::time::Instant::now);
    let mut said_refusal = false;
    loop {
        let (store, data_dir, file) = (store.clone(), data_dir.clone(), file.clone());
        let due = since.elapsed() >= every;
        let (last, from, was_urgent) = (anchored, checked_to, urgent);
        let step = tokio::task::spawn_blocking(move || -> Result<(u64, bool, Option<u64>), Error> {
            let audit = store.audit();
            let head = audit.head()?;
            if last == Some(head.count) {
                return Ok((head.count, false, None));
            }
            let from = from.min(head.count);
            let urgent = was_urgent
                || head.count - from > 1000
                || (from..head.count).any(|seq| audit.get(seq).ok().flatten().is_some_and(|r| !routine(&r.kind)));
            if !(urgent || due) {
                return Ok((head.count, urgent, None));
            }
            Ok((head.count, false, Some(anchor::write(audit, &data_dir, &file)?.count)))
        })
        .await;
        match step {
            Ok(Ok((to, still_urgent, wrote))) => {
                (checked_to, urgent) = (to, still_urgent);
                if let Some(count) = wrote {
                    anchored = Some(count);
                    since = std::time::Instant::now();
                }
                said_refusal = false;
            }
            Ok(Err(e)) if !said_refusal => {
                // Said once (a chain that does not match its anchors stays so): `audit verify` tells.
                tracing::error!(error = %e, "anchoring the audit log");
                said_refusal = true;
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}
