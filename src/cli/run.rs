//! `opslet run PATH`: run an applet folder once, or on every change with `--watch`.

use super::stdio::{errln, outln};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use notify::{RecursiveMode, Watcher};

use super::Global;
use super::output::{Format, render};
use crate::error::Error;
use crate::runtime::context::{LogLine, LogSink};
use crate::runtime::{CancelToken, RunOutcome};
use crate::service::{Check, Overrun, RawParams, RunService, Source, Submission};

/// The progress bar of a call over many hosts (ok / failed / pending counts), drawn on stderr
/// when it is a terminal; log lines print above it.
#[derive(Default)]
struct Progress {
    bar: parking_lot::Mutex<Option<(String, indicatif::ProgressBar)>>,
}

impl Progress {
    fn update(&self, p: &crate::runtime::context::Progress) {
        let mut slot = self.bar.lock();
        if slot.as_ref().is_none_or(|(call, bar)| call != &p.call || bar.is_finished()) {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(p.total as u64),
                if super::stdio::is_remote() { indicatif::ProgressDrawTarget::hidden() } else { indicatif::ProgressDrawTarget::stderr() },
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(p.call.clone());
            *slot = Some((p.call.clone(), bar));
        }
        let (_, bar) = slot.as_ref().expect("set above");
        bar.set_position((p.ok + p.failed + p.skipped) as u64);
        bar.set_message(format!("ok {} · failed {} · skipped {} · pending {}", p.ok, p.failed, p.skipped, p.pending));
        if p.pending == 0 {
            bar.finish_and_clear();
            if super::stdio::is_terminal(super::stdio::Stream::Err) {
                errln!("{}: {} hosts: {} ok, {} failed, {} skipped", p.call, p.total, p.ok, p.failed, p.skipped);
            }
        }
    }

    fn println(&self, line: &str) {
        match self.bar.lock().as_ref() {
            Some((_, bar)) if !bar.is_finished() && !bar.is_hidden() => bar.println(line),
            _ => errln!("{line}"),
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// An applet folder, or a registry applet: NAME, NAME@VERSION or NAME@sha256:PREFIX.
    /// A folder of that name in the current directory wins; write ./NAME to be explicit.
    #[arg(value_name = "APPLET")]
    pub target: String,
    /// The target as the caller wrote it, when the server resolved it against the caller's
    /// working directory.
    #[arg(skip)]
    pub given: Option<String>,
    /// Run a yanked version (named explicitly or current).
    #[arg(long)]
    pub allow_yanked: bool,
    /// A parameter as NAME=VALUE (repeatable); converted to the param's declared type.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// All parameters as one JSON object; --param values override it.
    #[arg(long, value_name = "JSON")]
    pub params_json: Option<String>,
    /// Tell the applet (ctx.dry_run) and the modules to change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How to print the result on stdout.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Re-run whenever a file of the applet changes (Ctrl-C stops).
    #[arg(long)]
    pub watch: bool,
    /// Do not print the applet's log lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the Lua traceback of an applet error.
    #[arg(short, long)]
    pub verbose: bool,
    /// Write every host-module call of the run and its answer (secrets redacted) to FILE, a
    /// transcript an applet's test can replay (`replay("tests/FILE")`, docs/testing.md).
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
}

pub fn run(global: &Global, args: RunArgs) -> Result<i32, Error> {
    let json = args.format == Format::Json;
    let result = run_inner(global, args);
    if json && let Err(e) = &result {
        // stdout stays one JSON document even when the run never started.
        outln!("{}", error_json(e, None));
    }
    result
}

fn run_inner(global: &Global, args: RunArgs) -> Result<i32, Error> {
    let params_json = match &args.params_json {
        None => None,
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            Ok(_) => {
                return Err(Error::Params(vec![crate::error::ParamError {
                    param: "--params-json".into(),
                    message: "must be a JSON object".into(),
                }]));
            }
            Err(e) => {
                return Err(Error::Params(vec![crate::error::ParamError {
                    param: "--params-json".into(),
                    message: format!("not valid JSON: {e}"),
                }]));
            }
        },
    };
    let mut pairs = Vec::new();
    for p in &args.params {
        match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => pairs.push((k.trim().to_string(), v.to_string())),
            _ => return Err(Error::Usage(format!("--param `{p}`: expected NAME=VALUE"))),
        }
    }
    let source = source_of(&args.target, global.is_forwarded())?;
    let config = global.config()?;
    let store = global.open_store()?;
    // A folder named like a published applet wins, as the docs say: say so.
    let given = args.given.as_deref().unwrap_or(&args.target);
    if matches!(source, Source::Folder(_))
        && !given.contains('/')
        && !given.starts_with('.')
        && crate::registry::Registry::new(store.clone()).is_ok_and(|r| r.applet(given).is_ok())
    {
        errln!(
            "note: running the folder ./{given}, not the published applet {given} (to run that one, name a version: {given}@VERSION, or run from another directory)"
        );
    }
    // In the server, its own run service: the run is a job there, within its capacity.
    let service = match global.server_service() {
        Some(server) => server.clone(),
        None => RunService::new(global.runtime(&config, store.clone())?, crate::service::Policy::of(&config)?)?,
    };
    if args.record.is_some() && service.workers().is_some() {
        return Err(Error::Usage(
            "--record keeps the module calls of a run made in this process or its server; with workers (serve --queue) the run is made elsewhere".into(),
        ));
    }
    let (rt, cancel) = super::runtime_with_ctrl_c(global)?;
    let once = |cancel: CancelToken, via: &str| -> Result<i32, Error> {
        let mut sub = Submission::new(source.clone(), global.caller(via));
        sub.params = RawParams { json: params_json.clone(), pairs: pairs.clone() };
        (sub.dry_run, sub.allow_yanked) = (args.dry_run, args.allow_yanked);
        // Every attempt is a run: bad params are recorded as one (`invalid_params`).
        sub.check = Check::InRun;
        let mut prepared = service.prepare(sub)?;
        if global.is_remote()
            && let (Source::Folder(_), Some(given)) = (&source, &args.given)
        {
            // The server's copy is gone after the command: the record names the caller's folder.
            prepared.request.origin = crate::runtime::Origin::Sent { path: given.clone() };
        }
        // A transcript of the run's module calls, when asked for.
        let recorder = args.record.as_ref().map(|_| {
            let r = crate::runtime::exchange::Recorder::new();
            prepared.request.exchange = Some(r.clone() as Arc<dyn crate::runtime::context::Exchange>);
            (r, prepared.request.package.manifest.id(), prepared.request.package.hash.clone(), prepared.shown.clone())
        });
        let sink: Option<LogSink> = (!args.quiet).then(|| {
            let bars = Progress::default();
            // In the server, the lines are written on its run thread: to this command's caller.
            let to = super::stdio::current();
            Arc::new(move |l: &LogLine| {
                super::stdio::with_output(&to, || match &l.progress {
                    Some(p) => bars.update(p),
                    None => bars.println(&format!("[{}] {}", l.level.name(), super::output::terminal_safe(&l.message, false))),
                })
            }) as LogSink
        });
        let outcome = match global.is_forwarded() {
            true => {
                prepared.request.cancel = cancel;
                prepared.request.log_sink = sink;
                let accepted = service.submit(prepared, false).map_err(crate::service::ServiceError::into_error)?;
                if let Some(a) = &accepted.awaiting {
                    return Err(Error::NeedsApproval(awaiting_text(&accepted.job_id, a)));
                }
                rt.block_on(accepted.done).map_err(|_| Error::Internal("the server's run thread stopped without an outcome".into()))?
            }
            false => service.run_here(&rt, prepared, cancel, sink, Overrun::EndProcess)?,
        };
        if let (Some(path), Some((rec, applet, hash, shown))) = (&args.record, &recorder) {
            let t = rec.transcript(applet, hash, serde_json::Value::Object(shown.clone()));
            let text = serde_json::to_string_pretty(&t).expect("transcripts serialize");
            std::fs::write(path, text + "\n").map_err(|e| Error::Usage(format!("--record {}: {e}", path.display())))?;
            errln!("recorded {} module call{} to {}", t.calls.len(), if t.calls.len() == 1 { "" } else { "s" }, path.display());
        }
        Ok(report(&outcome, &args))
    };
    let code = match (&source, args.watch) {
        (Source::Folder(path), true) => watch(path, &cancel, |c| once(c, "watch")),
        (_, true) => Err(Error::Usage("--watch works with applet folders, not registry applets".into())),
        _ => once(cancel, "cli"),
    };
    // The process exits without running destructors: put the run's end on disk now.
    store.flush()?;
    // Nothing runs on the runtime after the run: the process need not wait for its threads.
    rt.shutdown_background();
    code
}

/// What a caller is told of a run that waits for approval.
pub(super) fn awaiting_text(job_id: &str, a: &crate::service::Approval) -> String {
    format!(
        "job {job_id} waits for approval: {}; it needs {} approval{} by {} (not yours), within {}.\n  see its plan: opslet approvals\n  approve: opslet approve {job_id} -m \"why\"",
        a.reasons().join("; "),
        a.needed,
        if a.needed == 1 { "" } else { "s" },
        a.approvers(),
        humantime::format_duration(std::time::Duration::from_secs((a.expires_at - a.requested_at).num_seconds().max(0) as u64)),
    )
}

/// Where the applet comes from: a path (an existing folder, or anything with `/` or a leading
/// `.`) or a registry reference. In the server, a folder of the caller's is an absolute path
/// already, and the server's own working directory is not looked at.
fn source_of(target: &str, forwarded: bool) -> Result<Source, Error> {
    let path = Path::new(target);
    if (!forwarded && path.is_dir()) || target.contains('/') || target.starts_with('.') {
        Ok(Source::Folder(path.to_path_buf()))
    } else {
        crate::registry::Reference::parse(target).map(Source::Registry)
    }
}

/// A failure as `--format json` prints it: `{"error": {"kind", "message", "exit_code"}}`, with
/// the run's id, applet and status when a run started (and the bad params, one per field).
fn error_json(e: &Error, outcome: Option<&RunOutcome>) -> String {
    let mut err = super::output::error_object(e);
    if let Some(o) = outcome {
        err["run_id"] = serde_json::json!(o.run_id);
        err["applet"] = serde_json::json!(o.applet);
        err["status"] = serde_json::json!(o.status.name());
    }
    serde_json::to_string_pretty(&serde_json::json!({ "error": err })).expect("errors serialize")
}

/// Prints the outcome: the result on stdout, notes and errors on stderr. Returns the exit code.
fn report(outcome: &RunOutcome, args: &RunArgs) -> i32 {
    for note in &outcome.notes {
        errln!("note: {note}");
    }
    match &outcome.result {
        Ok(v) => {
            let mut out = super::stdio::stdout();
            let _ = out.write_all(render(v, args.format).as_bytes());
            let _ = out.flush();
            let t = &outcome.targets;
            if t.unhandled() == 0 {
                return 0;
            }
            let (code, how) = if t.ok == 0 { (super::EXIT_ALL_TARGETS_FAILED, "all") } else { (super::EXIT_SOME_TARGETS_FAILED, "some") };
            errln!(
                "error: {} ended, but {how} of its target calls failed: {} failed, {} skipped, {} ok ({}); an applet that deals with them calls ctx.failures_handled()",
                outcome.applet,
                t.failed,
                t.skipped,
                t.ok,
                t.calls.join(", ")
            );
            code
        }
        Err(e) => {
            if args.format == Format::Json {
                // stdout stays one JSON document even on failure: what went wrong.
                outln!("{}", error_json(e, Some(outcome)));
            }
            errln!("error: {} failed (run {}): {}", outcome.applet, outcome.run_id, super::output::terminal_safe(&e.to_string(), true));
            if args.verbose
                && let Some(tb) = &outcome.traceback
            {
                errln!("{tb}");
            }
            e.exit_code()
        }
    }
}

/// Runs `once` now and after every change below `dir`, until Ctrl-C.
pub(super) fn watch(dir: &Path, cancel: &CancelToken, mut once: impl FnMut(CancelToken) -> Result<i32, Error>) -> Result<i32, Error> {
    let dir = &dir.canonicalize().map_err(|e| {
        Error::Applet(vec![crate::error::Diagnostic::new(dir.display().to_string(), format!("cannot open applet folder: {e}"))])
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let root = dir.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let relevant = ev.kind.is_modify() || ev.kind.is_create() || ev.kind.is_remove();
            // Files the package skips (hidden, editor backups) do not trigger a run.
            let in_package = ev.paths.iter().any(|p| {
                p.strip_prefix(&root).is_ok_and(|rel| {
                    rel.components().all(|c| c.as_os_str().to_str().is_some_and(|s| !s.starts_with('.') && !s.ends_with('~')))
                })
            });
            if relevant && in_package {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| Error::Internal(format!("watching {}: {e}", dir.display())))?;
    watcher.recursive_mode(dir)?;
    loop {
        match once(cancel.clone()) {
            Ok(_) => {}
            Err(e) => errln!("error: {e}"),
        }
        errln!("-- watching {} for changes (Ctrl-C to stop)", dir.display());
        loop {
            if cancel.is_cancelled() {
                return Ok(0);
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(()) => {
                    // Let an editor finish writing, then drain the burst of events.
                    std::thread::sleep(Duration::from_millis(150));
                    while rx.try_recv().is_ok() {}
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
    }
}

trait WatchDir {
    fn recursive_mode(&mut self, dir: &Path) -> Result<(), Error>;
}

impl<W: Watcher> WatchDir for W {
    fn recursive_mode(&mut self, dir: &Path) -> Result<(), Error> {
        self.watch(dir, RecursiveMode::Recursive).map_err(|e| Error::Internal(format!("watching {}: {e}", dir.display())))
    }
}
