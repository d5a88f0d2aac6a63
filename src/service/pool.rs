//! Run threads for the server. Each run gets a thread of its own (CPU time is read per thread, and
//! a CPU-bound applet never blocks the HTTP workers or another run), and threads are made as runs
//! come, up to `max_runs`, and kept a while for the next ones.
//!
//! What limits how many runs *compute* at once is the CPU gate, not the threads: a run holds one
//! of `cpu_slots` (the cores, by default) only while its Lua code executes. While it waits — a
//! `time.sleep`, an SSH command, a Zabbix call — its future is pending and the slot goes to
//! another run. So a thousand runs waiting on hosts cost threads, not cores, and a trivial run
//! started among them gets a slot at once; CPU-bound runs still compute `cpu_slots` at a time.
//!
//! Runs that have not got their first slot yet are *waiting*; at most `queue` may wait, and a
//! further one is refused (the caller retries later).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Work for a run thread.
pub type Work = Box<dyn FnOnce(&RunThread) + Send>;

/// How long an idle run thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(60);

/// The run threads and the CPU gate.
pub struct RunPool {
    shared: Arc<Shared>,
}

struct Shared {
    tx: Mutex<Sender<Work>>,
    rx: Mutex<Receiver<Work>>,
    gate: Gate,
    /// Runs handed in and not yet ended.
    in_flight: AtomicUsize,
    max_runs: usize,
    /// Runs handed in that have not had their first CPU slot yet.
    waiting: AtomicUsize,
    queue: usize,
    /// Threads alive, and those waiting for work.
    threads: AtomicUsize,
    idle: AtomicUsize,
    /// Set at shutdown: runs that have not started are left alone (their job stays `queued`).
    draining: AtomicBool,
}

/// The pool is full (too many runs waiting for a first slot, or in flight): retry later.
#[derive(Debug)]
pub struct QueueFull;

/// What a run thread gives its work: its own async runtime and the CPU gate.
pub struct RunThread {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

impl RunThread {
    /// Drives `fut` to its end on this thread, holding a CPU slot only while it is polled.
    /// `started` is called once the first slot is had; None when the pool is draining by then
    /// (the run never starts).
    pub fn block_on<F: Future>(&self, fut: F, started: impl FnOnce()) -> Option<F::Output> {
        let gate = &self.shared.gate;
        gate.acquire();
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        if self.shared.draining.load(Ordering::Acquire) {
            gate.release();
            return None;
        }
        started();
        let gated = Gated { gate, fut: std::pin::pin!(fut), held: true };
        Some(self.rt.block_on(gated))
    }
}

/// A future that holds a CPU slot while it is polled, and gives it back between polls.
struct Gated<'a, F: Future> {
    gate: &'a Gate,
    fut: Pin<&'a mut F>,
    /// The first poll comes with the slot the run started with.
    held: bool,
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.held {
            self.gate.acquire();
        }
        let out = self.fut.as_mut().poll(cx);
        self.gate.release();
        self.held = false;
        out
    }
}

/// A counting semaphore for threads that may block (each run has a thread of its own).
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.freed.notify_one();
    }
}

impl RunPool {
    /// A pool where `cpu_slots` runs compute at once, `max_runs` are in flight at most and
    /// `queue` may wait for their first slot.
    pub fn start(cpu_slots: usize, max_runs: usize, queue: usize) -> RunPool {
        let (tx, rx) = channel();
        RunPool {
            shared: Arc::new(Shared {
                tx: Mutex::new(tx),
                rx: Mutex::new(rx),
                gate: Gate { free: Mutex::new(cpu_slots.max(1)), freed: Condvar::new() },
                in_flight: AtomicUsize::new(0),
                max_runs: max_runs.max(1),
                waiting: AtomicUsize::new(0),
                queue,
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Stops starting runs that have not started (used at shutdown).
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        // Wake every waiter so the unstarted ones can see it.
        self.shared.gate.freed.notify_all();
    }

    /// Whether a run handed in now would be taken.
    pub fn has_room(&self) -> bool {
        let s = &self.shared;
        s.waiting.load(Ordering::Acquire) < s.queue.max(1) && s.in_flight.load(Ordering::Acquire) < s.max_runs
    }

    /// Hands a run to a thread: an idle one, or a new one.
    pub fn submit(&self, work: Work) -> Result<(), QueueFull> {
        let s = &self.shared;
        if !self.has_room() {
            return Err(QueueFull);
        }
        s.in_flight.fetch_add(1, Ordering::AcqRel);
        s.waiting.fetch_add(1, Ordering::AcqRel);
        if s.tx.lock().unwrap_or_else(|e| e.into_inner()).send(work).is_err() {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueFull);
        }
        // Each run sent is owed a receiver: an idle thread it claims, or a new one.
        let claimed = s.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        if !claimed {
            spawn(Arc::clone(&self.shared));
        }
        Ok(())
    }
}

fn spawn(shared: Arc<Shared>) {
    let n = shared.threads.fetch_add(1, Ordering::AcqRel);
    let s = Arc::clone(&shared);
    let spawned = std::thread::Builder::new().name(format!("opslet-run-{n}")).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a run thread's async runtime");
        let me = RunThread { rt, shared: s };
        loop {
            let work = me.shared.rx.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(IDLE);
            match work {
                Ok(work) => {
                    // A bug in host code must not take a run thread down with it.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&me))).is_err() {
                        tracing::error!("a run thread's work panicked");
                    }
                    me.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    me.shared.idle.fetch_add(1, Ordering::AcqRel);
                }
                Err(_) => {
                    // Idle for long: end, unless a run was just sent to this thread's count.
                    let unclaimed = me.shared.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
                    if unclaimed {
                        me.shared.threads.fetch_sub(1, Ordering::AcqRel);
                        return;
                    }
                }
            }
        }
    });
    if spawned.is_err() {
        shared.threads.fetch_sub(1, Ordering::AcqRel);
        tracing::error!("could not start a run thread; the run waits for one");
    }
}
