//! `opslet worker`: executes runs a control plane (`opslet serve --queue nats://…`) queued on
//! NATS JetStream. It needs no data dir: packages come by hash from the queue, and every record
//! goes back to the control plane's store.

use clap::Args;

use super::Global;
use super::stdio::errln;
use crate::error::Error;
use crate::service::queue::worker::{WorkerSettings, serve};
use crate::service::queue::{DEFAULT_TAG, Link};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The control plane's NATS server, like nats://127.0.0.1:4222 (tls://… for TLS).
    #[arg(long, env = "OPSLET_QUEUE", value_name = "URL")]
    pub queue: String,
    /// Tags of the runs to take, comma-separated (`default` takes runs that ask for none)
    /// [default: default].
    #[arg(long, env = "OPSLET_WORKER_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// This worker's name in heartbeats, jobs and logs [default: HOSTNAME-PID].
    #[arg(long, env = "OPSLET_WORKER_ID")]
    pub id: Option<String>,
    /// Runs computing at once (executing Lua) [default: the number of CPUs].
    #[arg(long, env = "OPSLET_RUN_THREADS")]
    pub run_threads: Option<usize>,
    /// Runs in flight at once, waiting or computing [default: 256].
    #[arg(long, env = "OPSLET_MAX_RUNS")]
    pub max_runs: Option<usize>,
    /// A NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "OPSLET_QUEUE_CREDS", value_name = "FILE")]
    pub queue_creds: Option<std::path::PathBuf>,
    /// With tls://…: the CA certificate to trust for NATS.
    #[arg(long, env = "OPSLET_QUEUE_CA", value_name = "FILE")]
    pub queue_ca: Option<std::path::PathBuf>,
}

pub fn run(global: &Global, args: WorkerArgs) -> Result<i32, Error> {
    let settings = super::serve::queue_settings(&args.queue, args.queue_creds.clone(), args.queue_ca.clone())?;
    let mut tags: Vec<String> = args.tags.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    if tags.is_empty() {
        tags.push(DEFAULT_TAG.into());
    }
    for t in &tags {
        crate::util::validate_name(t).map_err(|m| Error::Usage(format!("--tags: tag `{t}` {m}")))?;
    }
    tags.dedup();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
    let id = args.id.clone().unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    crate::util::validate_name(&id).map_err(|m| Error::Usage(format!("--id `{id}` {m}")))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let worker =
        WorkerSettings { id, tags, cpu_slots: args.run_threads.unwrap_or(cpus).max(1), max_runs: args.max_runs.unwrap_or(256).max(1) };
    // The worker's own config (module settings: credentials rules, endpoints), if it has one;
    // its store is a cache that lives as long as the process.
    let config = global.config()?;
    let store = crate::store::Store::temporary()?;
    let runtime = global.runtime(&config, store)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the worker runtime: {e}")))?;
    rt.block_on(async move {
        let link = Link::connect(settings, &format!("opslet-worker-{}", worker.id)).await?;
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            tracing::info!("stopping: no new runs; waiting for the runs in flight");
        };
        errln!("worker {} taking runs tagged {}", worker.id, worker.tags.join(", "));
        serve(link, runtime, worker, shutdown).await
    })?;
    Ok(0)
}
