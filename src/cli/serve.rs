//! `opslet serve`: the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;

use super::Global;
use crate::auth::Auth;
use crate::error::Error;
use crate::http::jobs::Jobs;
use crate::http::{AppState, RunPool, ServeConfig};
use crate::registry::Registry;
use crate::runtime::Runtime;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "OPSLET_LISTEN", default_value = "127.0.0.1:8620")]
    pub listen: SocketAddr,
    /// Runs executing at once (default: the number of CPUs).
    #[arg(long, env = "OPSLET_RUN_THREADS")]
    pub run_threads: Option<usize>,
    /// Runs allowed to wait for a run thread; more get 503 with Retry-After.
    #[arg(long, env = "OPSLET_QUEUE", default_value_t = 64)]
    pub queue: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "OPSLET_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// How long a synchronous run request waits before the run is cancelled (e.g. 60s).
    #[arg(long, env = "OPSLET_SYNC_TIMEOUT", default_value = "60s")]
    pub sync_timeout: String,
    /// Most runs of one applet queued or running at once; more get 429 (0: no limit).
    #[arg(long, env = "OPSLET_APPLET_LIMIT", default_value_t = 16)]
    pub applet_limit: usize,
    /// At shutdown, how long running jobs may take to finish before they are cancelled.
    #[arg(long, env = "OPSLET_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
    /// Also serve the applet folders under DIR by name (ahead of the registry), reloading each
    /// when its files change.
    #[arg(long, value_name = "DIR")]
    pub dev: Option<std::path::PathBuf>,
    /// How long finished jobs are kept (purged at start).
    #[arg(long, env = "OPSLET_JOB_RETENTION", default_value = "7d")]
    pub job_retention: String,
}

pub fn run(global: &Global, args: ServeArgs) -> Result<i32, Error> {
    let sync_timeout =
        humantime::parse_duration(&args.sync_timeout).map_err(|e| Error::Usage(format!("--sync-timeout `{}`: {e}", args.sync_timeout)))?;
    let config = global.config()?;
    let store = global.open_store()?;
    let runtime = Runtime::new(&config, Some(store.clone()))?;
    let threads = args.run_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let pool = Arc::new(RunPool::start(threads, args.queue));
    let jobs = Jobs::new(store.clone())?;
    let keep = humantime::parse_duration(&args.job_retention)
        .map_err(|e| Error::Usage(format!("--job-retention `{}`: {e}", args.job_retention)))?;
    let purged = jobs.purge(chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7)))?;
    let state = AppState {
        registry: Registry::new(store.clone())?,
        auth: Auth::new(store.clone())?,
        runtime,
        pool,
        jobs,
        metrics: Default::default(),
        hooks: crate::http::hooks::Hooks::new(store.clone())?,
        dev: args.dev.as_deref().map(crate::http::dev::DevApplets::watch).transpose()?,
        applet_limit: args.applet_limit,
        per_applet: Default::default(),
        sync_timeout,
    };
    let (restarted, queued) = crate::http::recover_jobs(&state)?;
    if queued > 0 || purged > 0 {
        tracing::info!(restarted, queued, purged, "jobs recovered after start");
    }
    let shutdown_grace = humantime::parse_duration(&args.shutdown_grace)
        .map_err(|e| Error::Usage(format!("--shutdown-grace `{}`: {e}", args.shutdown_grace)))?;
    let cfg = ServeConfig {
        listen: args.listen,
        run_threads: threads,
        queue: args.queue,
        body_limit: args.body_limit,
        sync_timeout,
        shutdown_grace,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the server runtime: {e}")))?;
    let result = rt.block_on(crate::http::serve(state, &cfg));
    store.flush()?;
    result.map(|()| 0)
}
