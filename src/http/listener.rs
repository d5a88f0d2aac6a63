//! The accept loop: every connection is served by hyper with a header-read timeout (which also
//! ends a kept-alive connection that sends no next request), and at most `max_connections` are
//! open at once; past that a new connection is answered 503 and closed at once, with one log
//! line per burst, so idle or trickling connections cannot use up the process's file
//! descriptors and stall every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long a kept-alive
    /// connection may wait for its next request.
    pub header_timeout: Duration,
}

/// The answer to a connection past the limit.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 89\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"the server has too many connections open\"}}\n";

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the requests in
/// flight (at most `grace`).
pub async fn run(listener: TcpListener, router: Router, limits: Limits, shutdown: impl std::future::Future<Output = ()>, grace: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let service = hyper_util::service::TowerToHyperService::new(router);
    // Said once until the server has room again.
    let said_full = Arc::new(AtomicBool::new(false));
    // The allocator keeps what a burst of connections used; hand it back once they are gone.
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let trimmer = tokio::spawn(give_back_memory(Arc::clone(&slots), limits.max_connections, Arc::clone(&peak)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or similar: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            if !said_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: new connections are answered 503 until some close (raise --max-connections, or put a proxy in front)"
                );
            }
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(FULL)).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        said_full.store(false, Ordering::Relaxed);
        peak.fetch_max(limits.max_connections - slots.available_permits(), Ordering::Relaxed);
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    trimmer.abort();
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// Every 10 s: when at least 256 connections closed since the most there were (`peak`, kept by
/// the accept loop), returns the
/// allocator's free memory to the system (glibc keeps it otherwise: about 11 KiB a connection).
async fn give_back_memory(slots: Arc<tokio::sync::Semaphore>, max: usize, peak: Arc<std::sync::atomic::AtomicUsize>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let open = max - slots.available_permits();
        if peak.load(Ordering::Relaxed).saturating_sub(open) >= 256 {
            // Off the async workers: trimming a large heap takes a while.
            #[cfg(target_env = "gnu")]
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only releases free memory; it takes no pointers.
                unsafe {
                    libc::malloc_trim(0);
                }
            })
            .await;
            peak.store(open, Ordering::Relaxed);
        }
    }
}
