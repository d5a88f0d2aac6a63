//! Fan-out over many hosts, shared by every module that reaches many: a canary batch first, then batches of a given size, at most
//! `concurrency` hosts at once, stopping after N failures. Plain async code, no Lua.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How to spread one call over its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Hosts in flight at once.
    pub concurrency: usize,
    /// Hosts per batch after the canary (None: all the rest in one batch).
    pub batch: Option<usize>,
    /// Hosts in a first batch of their own (0: none). Any failure there stops the call.
    pub canary: usize,
    /// Stop starting hosts once this many have failed.
    pub stop_after: Option<usize>,
}

/// Sets one of the fan-out options every many-host call takes (`timeout`, `concurrency`,
/// `batch`, `canary`, `stop_after`) from its Lua value; returns false for any other key.
/// `call` is the Lua call (`ssh.run`, `netdev.configure`) for messages; `max` caps concurrency.
pub fn plan_option(
    call: &str,
    key: &str,
    v: mlua::Value,
    plan: &mut Plan,
    timeout: &mut std::time::Duration,
    max: usize,
) -> mlua::Result<bool> {
    use super::options::{count_opt, duration_opt};
    match key {
        "timeout" => *timeout = duration_opt(call, "timeout", v)?,
        "concurrency" => plan.concurrency = count_opt(call, "concurrency", v)?.clamp(1, max),
        "batch" => plan.batch = Some(count_opt(call, "batch", v)?.max(1)),
        "canary" => {
            plan.canary = match v {
                mlua::Value::Boolean(b) => usize::from(b),
                other => count_opt(call, "canary", other)?,
            }
        }
        "stop_after" => plan.stop_after = Some(count_opt(call, "stop_after", v)?.max(1)),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Implements [`Outcome`] for a result record with `host: String`, `ok: bool`,
/// `skipped: bool` and `error: Option<String>` fields and a `Default`.
#[macro_export]
macro_rules! impl_outcome {
    ($t:ty) => {
        impl $crate::kit::fanout::Outcome for $t {
            fn failed(host: &str, why: String) -> Self {
                Self { host: host.into(), error: Some(why), ..Default::default() }
            }
            fn skipped(host: &str, why: String) -> Self {
                Self { skipped: true, ..<Self as $crate::kit::fanout::Outcome>::failed(host, why) }
            }
            fn is_ok(&self) -> bool {
                self.ok
            }
            fn is_skipped(&self) -> bool {
                self.skipped
            }
        }
    };
}
pub use impl_outcome;

/// A per-host outcome [`fan_out`] can count and fill in for hosts it does not run.
pub trait Outcome: Send + 'static {
    fn failed(host: &str, why: String) -> Self;
    fn skipped(host: &str, why: String) -> Self;
    fn is_ok(&self) -> bool;
    fn is_skipped(&self) -> bool;
}

/// Counts after each finished host, for progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn pending(&self) -> usize {
        self.total - self.ok - self.failed - self.skipped
    }
}

/// The batches `plan` cuts `n` hosts into, as index ranges.
pub fn batches(n: usize, plan: &Plan) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    if plan.canary > 0 && n > 0 {
        start = plan.canary.min(n);
        out.push(0..start);
    }
    let size = plan.batch.unwrap_or(usize::MAX).max(1);
    while start < n {
        let end = start.saturating_add(size).min(n);
        out.push(start..end);
        start = end;
    }
    out
}

/// Runs `work` on every host per `plan`, on the runtime `io`; results come back in the order of
/// `hosts`. Dropping the returned future aborts the hosts still running.
pub async fn fan_out<R, F, Fut>(
    hosts: Vec<String>,
    plan: &Plan,
    io: &tokio::runtime::Handle,
    work: F,
    progress: &(dyn Fn(Counts) + Send + Sync),
) -> Vec<R>
where
    R: Outcome,
    F: Fn(String) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let n = hosts.len();
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let mut counts = Counts { total: n, ..Default::default() };
    let limit = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut stop: Option<String> = None;
    let cut = batches(n, plan);
    for (b, range) in cut.iter().enumerate() {
        if let Some(why) = &stop {
            for i in range.clone() {
                results[i] = Some(R::skipped(&hosts[i], why.clone()));
                counts.skipped += 1;
            }
            progress(counts);
            continue;
        }
        let mut set = JoinSet::new();
        let mut index_of = std::collections::HashMap::new();
        for i in range.clone() {
            let fut = work(hosts[i].clone());
            let (limit, failed, host) = (Arc::clone(&limit), Arc::clone(&failed), hosts[i].clone());
            let stop_after = plan.stop_after;
            let handle = set.spawn_on(
                async move {
                    let _permit = limit.acquire_owned().await;
                    // Hosts still waiting for a slot do not start once enough have failed.
                    if let Some(max) = stop_after
                        && failed.load(Ordering::SeqCst) >= max
                    {
                        let why = format!("not run: stopped after {max} failure(s) (stop_after = {max})");
                        return R::skipped(&host, why);
                    }
                    let r = fut.await;
                    if !r.is_ok() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                },
                io,
            );
            index_of.insert(handle.id(), i);
        }
        let mut batch_failed = 0;
        while let Some(joined) = set.join_next_with_id().await {
            let (i, r) = match joined {
                Ok((id, r)) => (index_of[&id], r),
                // A panic in one host's task: report it on that host only.
                Err(e) => {
                    let i = index_of[&e.id()];
                    (i, R::failed(&hosts[i], format!("internal error: {e}")))
                }
            };
            if r.is_skipped() {
                counts.skipped += 1;
            } else if r.is_ok() {
                counts.ok += 1;
            } else {
                counts.failed += 1;
                batch_failed += 1;
            }
            results[i] = Some(r);
            progress(counts);
        }
        let is_canary = plan.canary > 0 && b == 0 && cut.len() > 1;
        if is_canary && batch_failed > 0 {
            stop = Some(format!("not run: the canary batch failed on {batch_failed} host(s)"));
        } else if let Some(max) = plan.stop_after
            && counts.failed >= max
        {
            stop = Some(format!("not run: stopped after {} failure(s) (stop_after = {max})", counts.failed));
        }
    }
    results.into_iter().enumerate().map(|(i, r)| r.unwrap_or_else(|| R::failed(&hosts[i], "not run".into()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host's outcome, as small as the fan-out needs.
    #[derive(Debug, Clone, Default)]
    struct HostResult {
        host: String,
        ok: bool,
        skipped: bool,
        error: Option<String>,
    }

    crate::kit::fanout::impl_outcome!(HostResult);

    fn plan(batch: Option<usize>, canary: usize, stop_after: Option<usize>) -> Plan {
        Plan { concurrency: 4, batch, canary, stop_after }
    }

    #[test]
    fn batches_cut_canary_then_fixed_sizes() {
        assert_eq!(batches(5, &plan(None, 0, None)), vec![0..5]);
        assert_eq!(batches(5, &plan(None, 1, None)), vec![0..1, 1..5]);
        assert_eq!(batches(5, &plan(Some(2), 1, None)), vec![0..1, 1..3, 3..5]);
        assert_eq!(batches(2, &plan(Some(10), 5, None)), vec![0..2]);
        assert_eq!(batches(0, &plan(Some(2), 1, None)), Vec::<std::ops::Range<usize>>::new());
    }

    fn run(hosts: &[&str], p: Plan, fail: &'static [&'static str]) -> (Vec<HostResult>, usize) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = Arc::clone(&started);
        let out = rt.block_on(fan_out(
            hosts.iter().map(|h| h.to_string()).collect(),
            &p,
            rt.handle(),
            move |h| {
                s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { HostResult { ok: !fail.contains(&h.as_str()), host: h, ..Default::default() } }
            },
            &|_| {},
        ));
        (out, started.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[test]
    fn a_failing_canary_stops_the_rest() {
        let (out, started) = run(&["a", "b", "c"], plan(None, 1, None), &["a"]);
        assert_eq!(started, 1);
        assert!(!out[0].ok && !out[0].skipped);
        assert!(out[1].skipped && out[2].skipped, "{out:?}");
        assert!(out[1].error.as_deref().unwrap().contains("canary"));
    }

    #[test]
    fn stop_after_counts_failures_across_batches() {
        let (out, started) = run(&["a", "b", "c", "d", "e"], plan(Some(2), 0, Some(2)), &["a", "c"]);
        assert_eq!(started, 4, "batches a,b then c,d; e's batch is never started");
        assert_eq!(out.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
        assert!(out[4].skipped && out[4].error.as_deref().unwrap().contains("stop_after = 2"));
        // d runs beside c, unless c's failure lands before d takes its slot.
        assert!(out[1].ok && (out[3].ok || out[3].skipped));
    }

    #[test]
    fn stop_after_holds_back_hosts_waiting_for_a_slot() {
        // One batch, one host at a time: after two failures the rest never start.
        let p = Plan { concurrency: 1, batch: None, canary: 0, stop_after: Some(2) };
        let (out, started) = run(&["a", "b", "c", "d"], p, &["a", "b", "c", "d"]);
        assert_eq!(started, 4, "futures are created for all (they do nothing until polled)");
        assert_eq!(out.iter().filter(|r| r.skipped).count(), 2, "{out:?}");
        assert!(out[2].error.as_deref().unwrap().contains("stop_after = 2"));
    }

    #[test]
    fn without_limits_every_host_runs_and_order_is_kept() {
        let hosts: Vec<String> = (0..50).map(|i| format!("h{i}")).collect();
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let (out, started) = run(&refs, plan(None, 0, None), &["h7"]);
        assert_eq!(started, 50);
        assert_eq!(out.iter().filter(|r| !r.ok).count(), 1);
        assert!(out.iter().zip(&hosts).all(|(r, h)| &r.host == h));
    }
}
