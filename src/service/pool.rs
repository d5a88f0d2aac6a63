//! Run threads for the server: each run gets a thread of its own (CPU accounting and a
//! CPU-bound applet never block the HTTP workers or another run), with a bounded queue in front.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

/// Work for a run thread: it gets the thread's own single-threaded async runtime.
pub type Work = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;

/// A fixed set of run threads fed by a bounded queue.
pub struct RunPool {
    tx: SyncSender<Work>,
    /// Set at shutdown: waiting work is left alone (its job stays `queued` for the next start).
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The queue is full: the caller should retry later.
#[derive(Debug)]
pub struct QueueFull;

impl RunPool {
    /// Starts `threads` run threads sharing a queue of `queue` waiting runs.
    pub fn start(threads: usize, queue: usize) -> RunPool {
        let (tx, rx) = sync_channel::<Work>(queue);
        let rx: Arc<Mutex<Receiver<Work>>> = Arc::new(Mutex::new(rx));
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for i in 0..threads.max(1) {
            let (rx, draining) = (Arc::clone(&rx), Arc::clone(&draining));
            std::thread::Builder::new()
                .name(format!("opslet-run-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a run thread's async runtime");
                    loop {
                        let work = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(work) = work else { return };
                        if draining.load(std::sync::atomic::Ordering::Acquire) {
                            continue;
                        }
                        // A bug in host code must not take a run thread down with it.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&rt))).is_err() {
                            tracing::error!("a run thread's work panicked");
                        }
                    }
                })
                .expect("spawning a run thread");
        }
        RunPool { tx, draining }
    }

    /// Stops starting queued work (used at shutdown).
    pub fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Queues work for a run thread.
    pub fn submit(&self, work: Work) -> Result<(), QueueFull> {
        match self.tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }
}
