//! The last line of defence for a run in place (the CLI): if a run is still going [`GRACE`]
//! after its wall-time limit (a host call that never reached the limit checks), its end is
//! recorded in the audit log through the runtime and the process ends with the limit's exit code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Limit};
use crate::runtime::{RunRequest, Runtime};

/// How long past its wall-time limit a run may take to stop before the process is ended.
pub const GRACE: Duration = Duration::from_secs(5);

pub struct Watchdog {
    done: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    /// The thread reaches the runtime (and its store) only through this: once the watchdog is
    /// stopped it holds nothing, and nobody needs to wait for its thread to end.
    _runtime: Arc<Runtime>,
}

impl Watchdog {
    pub fn start(runtime: &Runtime, req: &RunRequest) -> Watchdog {
        let done = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let deadline = Instant::now() + runtime.limits_for(&req.package.manifest).timeout + GRACE;
        let runtime = Arc::new(runtime.clone());
        let (weak, run_id, applet, caller) = (Arc::downgrade(&runtime), req.run_id.clone(), req.package.id(), req.caller.clone());
        let d = Arc::clone(&done);
        std::thread::spawn(move || {
            let (lock, cvar) = &*d;
            let mut finished = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                finished = cvar.wait_timeout(finished, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            if *finished {
                return;
            }
            drop(finished);
            let Some(runtime) = weak.upgrade() else { return };
            let message = format!("{applet} did not stop within {}s of its wall-time limit; opslet ended the process", GRACE.as_secs());
            if !runtime.end_overdue(&run_id, &applet, &caller, &message) {
                return; // the run ended on its own after all
            }
            eprintln!("error: {message} (run {run_id})");
            std::process::exit(Error::LimitExceeded { limit: Limit::WallTime, message: String::new() }.exit_code());
        });
        Watchdog { done, _runtime: runtime }
    }

    /// Stops the watchdog; its thread ends by itself.
    pub fn stop(self) {
        let (lock, cvar) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }
}
