//! Run counters for `/metrics`, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::runtime::RunStatus;

/// Runs and seconds, by (applet, status).
type Runs = BTreeMap<(String, &'static str), (u64, f64)>;

/// What the service counts as runs are queued, start and end.
#[derive(Default)]
pub struct Metrics {
    /// (applet, status) -> (runs, total seconds).
    runs: parking_lot::Mutex<Runs>,
    pub(super) queued: AtomicI64,
    pub(super) running: AtomicI64,
}

impl Metrics {
    pub(super) fn record(&self, applet: &str, status: RunStatus, took: Duration) {
        let mut runs = self.runs.lock();
        let e = runs.entry((applet.to_string(), status.name())).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    /// The counters as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP opslet_runs_total Runs finished, by applet and status.\n# TYPE opslet_runs_total counter\n");
        let runs = self.runs.lock();
        for ((applet, status), (n, _)) in runs.iter() {
            let _ = writeln!(out, "opslet_runs_total{{applet=\"{applet}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP opslet_run_duration_seconds Time runs took, by applet.\n# TYPE opslet_run_duration_seconds summary\n");
        let mut by_applet: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        for ((applet, _), (n, secs)) in runs.iter() {
            let e = by_applet.entry(applet).or_default();
            e.0 += n;
            e.1 += secs;
        }
        for (applet, (n, secs)) in by_applet {
            let _ = writeln!(out, "opslet_run_duration_seconds_sum{{applet=\"{applet}\"}} {secs:.6}");
            let _ = writeln!(out, "opslet_run_duration_seconds_count{{applet=\"{applet}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP opslet_queue_depth Runs waiting for a run thread.\n# TYPE opslet_queue_depth gauge\nopslet_queue_depth {}",
            self.queued.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP opslet_runs_in_progress Runs executing now.\n# TYPE opslet_runs_in_progress gauge\nopslet_runs_in_progress {}",
            self.running.load(Ordering::Relaxed)
        );
        out
    }
}
