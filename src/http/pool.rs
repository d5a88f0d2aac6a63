//! Run threads for the server: each run gets a thread of its own (CPU accounting and a
//! CPU-bound applet never block the HTTP workers or another run), with a bounded queue in front.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::runtime::{RunOutcome, RunRequest, Runtime};

type Job = (RunRequest, tokio::sync::oneshot::Sender<RunOutcome>);

/// A fixed set of run threads fed by a bounded queue.
pub struct RunPool {
    tx: SyncSender<Job>,
}

/// The queue is full: the caller should retry later.
#[derive(Debug)]
pub struct QueueFull;

impl RunPool {
    /// Starts `threads` run threads sharing a queue of `queue` waiting runs.
    pub fn start(runtime: Runtime, threads: usize, queue: usize) -> RunPool {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (rx, runtime) = (Arc::clone(&rx), runtime.clone());
            std::thread::Builder::new()
                .name(format!("opslet-run-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a run thread's async runtime");
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((req, reply)) = job else { return };
                        let outcome = rt.block_on(runtime.run(req));
                        let _ = reply.send(outcome);
                    }
                })
                .expect("spawning a run thread");
        }
        RunPool { tx }
    }

    /// Queues a run; the receiver yields its outcome.
    pub fn submit(&self, req: RunRequest) -> Result<tokio::sync::oneshot::Receiver<RunOutcome>, QueueFull> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        match self.tx.try_send((req, reply)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }
}
