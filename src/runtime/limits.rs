//! Hard limits of one run and the interrupt that enforces them.
//!
//! Luau calls the interrupt at every call, return and loop back-edge, and inside pattern
//! matching. Once a limit trips, the trip is sticky: every later interrupt raises again, so
//! `pcall`, `xpcall`, coroutines and error handlers cannot swallow it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mlua::{Lua, VmState};
use parking_lot::Mutex;

use crate::applet::manifest::RequestedLimits;
use crate::config::HostLimits;
use crate::error::Limit;

/// The limits in force for one run: the applet's requests, capped by the host's maxima.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunLimits {
    #[serde(with = "humantime_serde_ms")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde_ms")]
    pub cpu: Duration,
    pub memory: u64,
    pub log_lines: usize,
    pub log_bytes: u64,
    pub result_bytes: u64,
    pub call_depth: usize,
}

mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl RunLimits {
    /// Resolves an applet's requested limits against the host. Returns the limits and a note for
    /// every request that was capped.
    pub fn resolve(host: &HostLimits, req: &RequestedLimits) -> (RunLimits, Vec<String>) {
        let mut notes = Vec::new();
        let mut cap = |what: &str, asked: Option<u64>, default: u64, max: u64, show: &dyn Fn(u64) -> String| match asked {
            Some(a) if a > max => {
                notes.push(format!("limits.{what} = {} is above the host maximum {}; using {}", show(a), show(max), show(max)));
                max
            }
            Some(a) => a,
            None => default.min(max),
        };
        let ms = |v: u64| humantime::format_duration(Duration::from_millis(v)).to_string();
        let bytes = |v: u64| bytesize::ByteSize(v).display().iec().to_string();
        let timeout = cap(
            "timeout",
            req.timeout.map(|d| d.as_millis() as u64),
            host.timeout.as_millis() as u64,
            host.max_timeout.as_millis() as u64,
            &ms,
        );
        let cpu = cap("cpu", req.cpu.map(|d| d.as_millis() as u64), host.cpu.as_millis() as u64, host.max_cpu.as_millis() as u64, &ms);
        let memory = cap("memory", req.memory, host.memory, host.max_memory, &bytes);
        (
            RunLimits {
                timeout: Duration::from_millis(timeout),
                cpu: Duration::from_millis(cpu),
                memory,
                log_lines: host.log_lines,
                log_bytes: host.log_bytes,
                result_bytes: host.result_bytes,
                call_depth: host.call_depth,
            },
            notes,
        )
    }

    pub fn describe(&self, limit: Limit) -> String {
        match limit {
            Limit::Cpu => format!("cpu limit of {} exceeded", humantime::format_duration(self.cpu)),
            Limit::Memory => format!("memory limit of {} exceeded", bytesize::ByteSize(self.memory).display().iec()),
            Limit::WallTime => format!("wall-time limit of {} exceeded", humantime::format_duration(self.timeout)),
            Limit::Output => format!(
                "output limit exceeded ({} log lines or {} of log)",
                self.log_lines,
                bytesize::ByteSize(self.log_bytes).display().iec()
            ),
            Limit::ResultSize => format!("result-size limit of {} exceeded", bytesize::ByteSize(self.result_bytes).display().iec()),
            Limit::CallDepth => format!("call-depth limit of {} nested calls exceeded", self.call_depth),
        }
    }
}

/// Cancels a run from another thread or task.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<(AtomicBool, tokio::sync::Notify)>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.0.store(true, Ordering::Release);
        self.0.1.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.0.load(Ordering::Acquire)
    }

    /// Resolves once `cancel` has been called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// How often the clocks are read. A process-wide ticker thread bumps an epoch counter every
/// `TICK`; the interrupt compares it with the epoch it last saw (one atomic load), so limits are
/// checked every few milliseconds however much or little work happens between interrupts.
const TICK: Duration = Duration::from_millis(5);

static EPOCH: AtomicU32 = AtomicU32::new(0);

fn start_ticker() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::thread::Builder::new()
            .name("opslet-limit-ticker".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TICK);
                    EPOCH.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("spawning the limit ticker thread");
    });
}
/// How often (in interrupts) the call depth is checked.
const DEPTH_EVERY: u32 = 4;

/// Shared, thread-safe state of one run's limits.
pub struct Guard {
    pub limits: RunLimits,
    pub started: Instant,
    deadline: Instant,
    tripped: AtomicU8,
    cancel: CancelToken,
    ticks: AtomicU32,
    /// The ticker epoch at the last clock check.
    seen_epoch: AtomicU32,
    cpu: Mutex<CpuClock>,
}

struct CpuClock {
    thread: Option<std::thread::ThreadId>,
    last: Duration,
    used: Duration,
}

impl Guard {
    pub fn new(limits: RunLimits, cancel: CancelToken) -> Arc<Guard> {
        start_ticker();
        let started = Instant::now();
        Arc::new(Guard {
            deadline: started + limits.timeout,
            limits,
            started,
            tripped: AtomicU8::new(0),
            cancel,
            ticks: AtomicU32::new(0),
            seen_epoch: AtomicU32::new(EPOCH.load(Ordering::Relaxed)),
            cpu: Mutex::new(CpuClock { thread: None, last: Duration::ZERO, used: Duration::ZERO }),
        })
    }

    /// The limit that ended the run, if any.
    pub fn tripped(&self) -> Option<Limit> {
        decode(self.tripped.load(Ordering::Acquire))
    }

    /// Records a limit hit (the first one wins) and returns the error to raise.
    pub fn trip(&self, limit: Limit) -> mlua::Error {
        let _ = self.tripped.compare_exchange(0, encode(limit), Ordering::AcqRel, Ordering::Acquire);
        self.raise()
    }

    /// The error for the limit already tripped (or cancellation).
    pub fn raise(&self) -> mlua::Error {
        match self.tripped() {
            Some(l) => mlua::Error::runtime(format!("opslet: {}", self.limits.describe(l))),
            None => mlua::Error::runtime("opslet: run cancelled"),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Time left before the wall-time limit.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// CPU time charged to the run so far (samples the current thread's clock).
    pub fn cpu_used(&self) -> Duration {
        let mut c = self.cpu.lock();
        let now = thread_cpu_time();
        let me = std::thread::current().id();
        if c.thread == Some(me) {
            let delta = now.saturating_sub(c.last);
            c.used += delta;
        }
        c.thread = Some(me);
        c.last = now;
        c.used
    }

    /// Starts CPU accounting on the current thread.
    pub fn start_cpu_clock(&self) {
        let mut c = self.cpu.lock();
        c.thread = Some(std::thread::current().id());
        c.last = thread_cpu_time();
    }

    /// The periodic check: CPU, wall time, memory. Called from the interrupt and host functions.
    pub fn check_clocks(&self, lua: &Lua) -> mlua::Result<()> {
        if Instant::now() >= self.deadline {
            return Err(self.trip(Limit::WallTime));
        }
        if self.cpu_used() >= self.limits.cpu {
            return Err(self.trip(Limit::Cpu));
        }
        // Within 1/32 of the hard cap counts as reaching it: the cap itself makes allocations fail.
        if lua.used_memory() as u64 >= self.limits.memory - self.limits.memory / 32 {
            return Err(self.trip(Limit::Memory));
        }
        Ok(())
    }

    /// Checks the clocks if the ticker moved since the last check; cheap enough to call from
    /// every host function and conversion loop.
    pub fn poll(&self, lua: &Lua) -> mlua::Result<()> {
        if self.tripped.load(Ordering::Relaxed) != 0 || self.cancel.0.0.load(Ordering::Relaxed) {
            return Err(self.raise());
        }
        let epoch = EPOCH.load(Ordering::Relaxed);
        if self.seen_epoch.load(Ordering::Relaxed) != epoch {
            self.seen_epoch.store(epoch, Ordering::Relaxed);
            self.check_clocks(lua)?;
        }
        Ok(())
    }

    /// Installs the interrupt on `lua`.
    pub fn install(self: &Arc<Guard>, lua: &Lua) -> mlua::Result<()> {
        lua.set_memory_limit(self.limits.memory as usize)?;
        let guard = Arc::clone(self);
        let depth = guard.limits.call_depth;
        lua.set_interrupt(move |lua| {
            if guard.tripped.load(Ordering::Relaxed) != 0 || guard.cancel.0.0.load(Ordering::Relaxed) {
                return Err(guard.raise());
            }
            let n = guard.ticks.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(DEPTH_EVERY) && lua.inspect_stack(depth, |_| ()).is_some() {
                return Err(guard.trip(Limit::CallDepth));
            }
            guard.poll(lua)?;
            Ok(VmState::Continue)
        });
        Ok(())
    }
}

fn encode(l: Limit) -> u8 {
    match l {
        Limit::Cpu => 1,
        Limit::Memory => 2,
        Limit::WallTime => 3,
        Limit::Output => 4,
        Limit::ResultSize => 5,
        Limit::CallDepth => 6,
    }
}

fn decode(v: u8) -> Option<Limit> {
    Some(match v {
        1 => Limit::Cpu,
        2 => Limit::Memory,
        3 => Limit::WallTime,
        4 => Limit::Output,
        5 => Limit::ResultSize,
        6 => Limit::CallDepth,
        _ => return None,
    })
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_THREAD_CPUTIME_ID is always valid on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
