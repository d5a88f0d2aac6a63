//! `opslet --server URL`: the same commands, run by a server on another machine over its HTTP
//! API (`POST /api/v1/commands`, see `http::commands`), as the user of an API token.
//!
//! The CLI sends the command line, the files and folders the command reads (by the path the
//! user wrote) and its stdin; the server runs the command on its store like one from its local
//! socket, after checking the token's role and grants for it ([`needed`]), and streams back the
//! output, the files the command wrote and the exit code. Paths always mean the caller's
//! machine: the server puts what was sent in a temporary folder and names nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::stdio::{Remote, Sink, Stream};
use super::{Command, Forwarded, Global, PathUse, artifact, cmdb, config_items, netdev, registry};
use crate::auth::Action;
use crate::error::Error;
use crate::http::commands::{CommandCall, CommandRequest, CommandRunner, FRAMES, FrameSender, Upload};
use crate::service::RunService;
use crate::store::Store;
use crate::util::frames;

/// Most files a folder may hold to be sent.
const MAX_FILES: usize = 10_000;

// ---- the CLI's side ----

/// Where the token comes from: `OPSLET_TOKEN`, else the token file.
pub fn token(file: Option<&Path>) -> Result<String, Error> {
    if let Ok(t) = std::env::var("OPSLET_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let Some(file) = file else {
        return Err(Error::Usage(
            "--server needs an API token: set OPSLET_TOKEN, or pass --token-file FILE (an admin makes one with `opslet token create USER`)"
                .into(),
        ));
    };
    let t = std::fs::read_to_string(file).map_err(|e| Error::Usage(format!("--token-file {}: {e}", file.display())))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(Error::Usage(format!("--token-file {}: the file is empty", file.display())));
    }
    Ok(t.to_string())
}

/// The files and folders `command` reads, by the path as written, and the paths it writes.
fn uploads(command: &mut Command) -> Result<(BTreeMap<String, Upload>, Vec<String>), Error> {
    let mut files = BTreeMap::new();
    let mut writes = Vec::new();
    if let Command::Run(a) = command
        && Path::new(&a.target).is_dir()
    {
        files.insert(a.target.clone(), folder(Path::new(&a.target))?);
    }
    for (how, p) in command.paths_mut() {
        let given = p.display().to_string();
        match how {
            // A file that cannot be read is not sent: the server then reports it as missing,
            // as the command would here.
            PathUse::Read => {
                if let Ok(bytes) = std::fs::read(&*p) {
                    files.insert(given, Upload::File { content: B64.encode(bytes) });
                }
            }
            PathUse::Folder => {
                if p.is_dir() {
                    files.insert(given, folder(p)?);
                }
            }
            PathUse::Item => {
                if let Some(item) = item_files(p) {
                    files.insert(given, item);
                }
            }
            PathUse::Write => writes.push(given),
            PathUse::Watch | PathUse::Append | PathUse::Local => {}
        }
    }
    Ok((files, writes))
}

/// A config item file and the `template_file` it names beside it, as a folder of the two
/// (the item keeps its file name). None when the item cannot be read: the server then reports
/// it missing.
fn item_files(item: &Path) -> Option<Upload> {
    let text = std::fs::read(item).ok()?;
    let name = item.file_name()?.to_str()?.to_string();
    let mut files = BTreeMap::from([(name, B64.encode(&text))]);
    let template = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(t).ok())
        .and_then(|t| t.get("template_file").and_then(|v| v.as_str()).map(str::to_string));
    // Only a file beside the item, as `config set` takes it; anything else it reports itself.
    if let Some(t) = template.filter(|t| Path::new(t).components().count() == 1 && !t.starts_with('.'))
        && let Ok(bytes) = std::fs::read(item.with_file_name(&t))
    {
        files.insert(t, B64.encode(bytes));
    }
    Some(Upload::Dir { files })
}

/// Most bytes of files one command sends.
const MAX_SENT_BYTES: u64 = 256 << 20;

/// A folder's files (hidden ones and editor backups left out, as packages leave them out).
fn folder(root: &Path) -> Result<Upload, Error> {
    struct Walk {
        files: BTreeMap<String, String>,
        /// Folders read already, by device and inode: a link back up is not followed again.
        seen: std::collections::HashSet<(u64, u64)>,
        bytes: u64,
    }
    fn walk(dir: &Path, rel: &str, w: &mut Walk) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let unreadable = |e: std::io::Error| Error::Usage(format!("reading {}: {e}", dir.display()));
        let meta = std::fs::metadata(dir).map_err(unreadable)?;
        if !w.seen.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            let path = entry.path();
            let inner = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            // Links are followed, as the command would follow them here.
            let meta = std::fs::metadata(&path).map_err(|e| Error::Usage(format!("reading {}: {e}", path.display())))?;
            if meta.is_dir() {
                walk(&path, &inner, w)?;
            } else if meta.is_file() {
                w.bytes += meta.len();
                if w.files.len() >= MAX_FILES || w.bytes > MAX_SENT_BYTES {
                    return Err(Error::Usage(format!(
                        "{} holds more than {MAX_FILES} files or {} MiB: too much to send",
                        dir.display(),
                        MAX_SENT_BYTES >> 20
                    )));
                }
                let bytes = std::fs::read(&path).map_err(|e| Error::Usage(format!("reading {}: {e}", path.display())))?;
                w.files.insert(inner, B64.encode(bytes));
            }
        }
        Ok(())
    }
    let mut w = Walk { files: BTreeMap::new(), seen: Default::default(), bytes: 0 };
    walk(root, "", &mut w)?;
    Ok(Upload::Dir { files: w.files })
}

/// Set by SIGINT while a remote command runs.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Runs `command` on the server at `server` as the token's user and relays its output; returns
/// the command's exit code.
pub fn forward(server: &str, token: &str, mut command: Command, stdin: Option<Vec<u8>>) -> Result<i32, Error> {
    let base = server.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::Usage(format!("--server `{server}`: give the server's URL, like https://opslet.example.com:8620")));
    }
    let (files, writes) = uploads(&mut command)?;
    let request = CommandRequest {
        argv: std::env::args().collect(),
        stdin: stdin.map(|s| B64.encode(s)),
        files,
        out_tty: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        err_tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        width: super::stdio::local_terminal_width(),
    };
    let plain = base.strip_prefix("http://").map(|rest| rest.split(['/', ':']).next().unwrap_or(""));
    if plain.is_some_and(|host| !matches!(host, "127.0.0.1" | "localhost" | "[::1]")) {
        super::stdio::errln!(
            "warning: {base} is plain HTTP: the token and what the command sends cross the network unencrypted; use https://"
        );
    }
    crate::util::install_tls_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        // A redirect would send the token, stdin and files on to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Internal(format!("building the HTTP client: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the async runtime: {e}")))?;
    rt.block_on(relay(&client, &base, token, &request, &writes))
}

/// Largest frame taken from a server (a file it sends back is one frame).
const MAX_FRAME: usize = 512 << 20;

/// The server's error body, at most 64 KiB of it.
async fn error_message(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 << 10 {
            break;
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let m =
        v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
    super::output::terminal_safe(&m, false).into_owned()
}

/// Output from the server for this process's `stream`: on a terminal, control characters
/// (escape sequences) are shown escaped, as applet text is, so a server cannot rewrite the
/// screen.
fn relay_bytes(to: &mut dyn Write, on_terminal: bool, bytes: &[u8]) {
    if on_terminal {
        let text = String::from_utf8_lossy(bytes);
        let _ = to.write_all(super::output::terminal_safe(&text, true).as_bytes());
    } else {
        let _ = to.write_all(bytes);
    }
    let _ = to.flush();
}

async fn relay(client: &reqwest::Client, base: &str, token: &str, request: &CommandRequest, writes: &[String]) -> Result<i32, Error> {
    let unreachable = |e: reqwest::Error| Error::Store(format!("cannot reach the server at {base}: {}", crate::util::error_chain(&e)));
    let mut resp = client.post(format!("{base}/api/v1/commands")).bearer_auth(token).json(request).send().await.map_err(unreachable)?;
    let status = resp.status();
    let is_frames = resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == FRAMES.as_bytes());
    if !status.is_success() || !is_frames {
        let message = error_message(resp).await;
        return Err(match status.as_u16() {
            401 | 403 => Error::Denied(format!("the server at {base} refused: {message}")),
            413 => Error::Usage(format!("the command's files are larger than the server at {base} takes (its body limit)")),
            404 if message.starts_with("no route") => Error::Store(format!(
                "the server at {base} does not take CLI commands (it is older than this CLI, or not an opslet server)"
            )),
            429 => Error::Busy(message),
            _ => Error::Store(format!("the server at {base} answered {status}: {message}")),
        });
    }
    // From here Ctrl-C asks the server to cancel (each press again); before, it ended this
    // process, and the server cancels the command of a caller that went away.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let (out_tty, err_tty) = (std::io::IsTerminal::is_terminal(&std::io::stdout()), std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let mut cancel_asked = false;
    let lost = |why: String| Error::Store(format!("the server at {base} stopped answering: {why}"));
    let mut decoder = frames::Decoder::default();
    let mut id: Option<String> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        cancel_asked |= INTERRUPTED.swap(false, std::sync::atomic::Ordering::SeqCst);
        if cancel_asked && let Some(id) = &id {
            // Ctrl-C cancels what the command started; its output and exit code still come.
            cancel_asked = false;
            let _ = client.post(format!("{base}/api/v1/commands/{id}/cancel")).bearer_auth(token).send().await;
        }
        while let Some((kind, payload)) = decoder.next_frame() {
            match kind {
                frames::STARTED => id = Some(String::from_utf8_lossy(&payload).into_owned()),
                frames::STDOUT => relay_bytes(&mut std::io::stdout().lock(), out_tty, &payload),
                frames::STDERR => relay_bytes(&mut std::io::stderr().lock(), err_tty, &payload),
                frames::FILE => {
                    let Some((name, content)) = frames::parse_file(&payload) else { return Err(lost("a malformed file frame".into())) };
                    // Only a file the command was asked to write: the server names no other path here.
                    if !writes.contains(&name) {
                        return Err(Error::Store(format!(
                            "the server at {base} sent a file this command does not write ({name}); nothing was written"
                        )));
                    }
                    std::fs::write(&name, content).map_err(|e| Error::Usage(format!("writing {name}: {e}")))?;
                }
                frames::EXIT if payload.len() == 4 => return Ok(i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])),
                frames::PING => {}
                other => return Err(lost(format!("an unknown frame ({other})"))),
            }
        }
        tokio::select! {
            chunk = resp.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    decoder.push(&bytes);
                    if decoder.pending() > MAX_FRAME + 5 {
                        return Err(lost(format!("a frame over {} MiB", MAX_FRAME >> 20)));
                    }
                }
                Ok(None) => return Err(lost("the answer ended before the command did".into())),
                Err(e) => return Err(lost(crate::util::error_chain(&e))),
            },
            _ = tick.tick() => {}
        }
    }
}

// ---- the server's side ----

/// Output of a command, as frames for the HTTP answer.
struct FrameSink(FrameSender);

impl Sink for FrameSink {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let kind = if stream == Stream::Out { frames::STDOUT } else { frames::STDERR };
        self.0.send(frames::encode(kind, bytes));
    }
}

/// What the server's HTTP API runs for `opslet --server`: commands on `store`, with the
/// server's own data dir and config.
pub fn runner(data_dir: PathBuf, config: Option<PathBuf>, store: Store, service: RunService) -> CommandRunner {
    Arc::new(move |call: CommandCall| {
        let remote = Remote {
            sink: Arc::new(FrameSink(call.frames.clone())),
            shown_as: Vec::new(),
            out_tty: call.request.out_tty,
            err_tty: call.request.err_tty,
            width: call.request.width,
        };
        super::stdio::with_remote(remote, || match execute(call, &data_dir, config.as_ref(), &store, &service) {
            Ok(code) => code,
            Err(e) => super::report(&e),
        })
    })
}

fn execute(mut call: CommandCall, data_dir: &Path, config: Option<&PathBuf>, store: &Store, service: &RunService) -> Result<i32, Error> {
    let stdin = match call.request.stdin.take() {
        None => None,
        Some(s) => Some(B64.decode(s).map_err(|e| Error::Usage(format!("the request's stdin is not base64: {e}")))?),
    };
    let mut command = match super::parse_forwarded(&call.request.argv) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Command::Run(a) = &command
        && a.watch
    {
        return Err(Error::Usage(
            "--watch watches a folder on your machine; it does not work with --server (run it without --server)".into(),
        ));
    }
    if let Command::Config(config_items::ConfigCmd::Watch { .. }) = &command {
        return Err(Error::Usage("`config watch` watches a folder on your machine; it does not work with --server".into()));
    }
    if let Command::Audit(super::audit::AuditCmd::Anchor { to: Some(_) }) = &command {
        return Err(Error::Usage(
            "`audit anchor --to` appends to a file on your machine; with --server, the server anchors to its own `[audit] anchor_file`"
                .into(),
        ));
    }
    // Allowed first: nothing of the command is done for a caller who may not do it.
    authorize(&command, &call, store)?;
    // As over the HTTP API, an audit listing is at most 10,000 records.
    if let Command::Audit(super::audit::AuditCmd::List(a)) = &mut command {
        a.limit = a.limit.min(10_000);
    }
    let work = tempfile::Builder::new()
        .prefix("opslet-cmd-")
        .tempdir()
        .map_err(|e| Error::Internal(format!("a folder for the command's files: {e}")))?;
    let outputs = place_files(&mut command, &mut call.request.files, work.path())?;
    let global = Global {
        data_dir: data_dir.to_path_buf(),
        config_path: config.cloned(),
        modules: Default::default(),
        forwarded: Some(Forwarded {
            store: store.clone(),
            data_dir: data_dir.to_path_buf(),
            config: config.cloned(),
            cwd: work.path().to_path_buf(),
            cancel: call.cancel.clone(),
            user: Some(call.principal.user.clone()),
            service: service.clone(),
        }),
    };
    let code = super::stdio::with_input(stdin, || super::dispatch(command, &global));
    for (path, given) in outputs {
        if let Ok(content) = std::fs::read(&path) {
            call.frames.send(frames::encode(frames::FILE, &frames::file_payload(&given, &content)));
        }
    }
    Ok(code)
}

/// What the caller must be allowed to do for `command`, asked of the HTTP layer (which audits a
/// refusal).
fn authorize(command: &Command, call: &CommandCall, store: &Store) -> Result<(), Error> {
    // A schedule's owner and applet decide (see `schedule::authorize`).
    if let Command::Schedule(cmd) = command {
        return super::schedule::authorize(cmd, &call.principal.user, store, &*call.authorize);
    }
    // A folder sent to run, whatever its name: unpublished code runs only for an admin.
    if let Command::Run(a) = command
        && call.request.files.contains_key(&a.target)
    {
        return (call.authorize)(Action::Admin);
    }
    match needed(command)? {
        None => Ok(()),
        Some(Needed::Action(a)) => (call.authorize)(a),
        Some(Needed::Run(name)) => (call.authorize)(Action::Run(&name)),
    }
}

enum Needed {
    Action(Action<'static>),
    Run(String),
}

/// The permission each command needs of a remote caller (`None`: none beyond a valid token).
/// Reading the registry is open to every role, as on the HTTP API; an applet's source
/// (`export`) and changing the registry need publish; accounts (a password too, one's own
/// included: a token must not become a console login that outlives it), tokens, grants, hooks,
/// secrets, the inventory's writes and details (the host table leaves attributes out, as the
/// HTTP route does), device backups and config items' writes need admin; an unpublished folder
/// runs only for an admin.
fn needed(command: &Command) -> Result<Option<Needed>, Error> {
    use Action::*;
    let a = |a: Action<'static>| Ok(Some(Needed::Action(a)));
    match command {
        Command::Run(args) => {
            if Path::new(&args.target).is_absolute() || args.target.contains('/') || args.target.starts_with('.') {
                return a(Admin);
            }
            let r = crate::registry::Reference::parse(&args.target)?;
            Ok(Some(Needed::Run(r.name().to_string())))
        }
        Command::Versions(_) | Command::Show(_) | Command::List { .. } | Command::Search(_) => a(ReadRegistry),
        // Anyone may look; who may decide is the approval policy's to say (the service checks).
        Command::Approvals(_) | Command::Approve(_) | Command::Reject(_) => a(ReadOwnJobs),
        Command::Feature(registry::FeatureCmd::List { .. }) => a(ReadRegistry),
        Command::Export(_) => a(Publish),
        Command::Publish(_)
        | Command::Promote(_)
        | Command::Rollback { .. }
        | Command::Yank(_)
        | Command::Import(_)
        | Command::Feature(_) => a(Publish),
        Command::User(_) | Command::Token(_) | Command::Grant(_) | Command::Hook(_) | Command::Secret(_) => a(Admin),
        Command::Notify(_) => a(Admin),
        // Names, sizes and checksums are the registry's to read; content and changes publish.
        Command::Artifact(artifact::ArtifactCmd::List { .. } | artifact::ArtifactCmd::Connections { .. }) => a(ReadRegistry),
        Command::Artifact(_) => a(Publish),
        // What each schedule command needs depends on the schedule: `authorize` asks
        // `schedule::authorize` (one's own: run the applet; another owner's: admin).
        Command::Schedule(_) => a(ReadRegistry),
        Command::Cmdb(cmdb::CmdbCmd::Host(cmdb::HostCmd::List { format: super::output::Format::Table, .. })) => a(ReadRegistry),
        Command::Cmdb(_) => a(Admin),
        Command::Config(config_items::ConfigCmd::Set { .. } | config_items::ConfigCmd::Watch { .. }) => a(Admin),
        Command::Config(_) => a(Publish),
        Command::Netdev(netdev::NetdevCmd::Profiles { .. }) => a(ReadRegistry),
        Command::Netdev(_) => a(Admin),
        Command::Audit(super::audit::AuditCmd::Anchor { .. }) => a(Admin),
        Command::Audit(_) => a(ReadAudit),
        Command::Trust(super::registry::TrustCmd::List { .. }) => a(ReadRegistry),
        Command::Trust(_) => a(Admin),
        Command::Store(_)
        | Command::Serve(_)
        | Command::Worker(_)
        | Command::New(_)
        | Command::Check(_)
        | Command::Test(_)
        | Command::Meta { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Sign(_)
        | Command::Key(_) => Err(Error::Usage("this command runs on the machine it is typed on, not through --server".into())),
    }
}

/// Puts the files the caller sent into `work` and points the command's paths at them; a path
/// whose file was not sent points at nothing there, so the command reports it missing. Returns
/// the files the command writes, each with the path the caller wrote.
fn place_files(command: &mut Command, sent: &mut BTreeMap<String, Upload>, work: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    let mut n = 0;
    let mut slot = |given: &str| {
        n += 1;
        let dir = work.join(format!("f{n}"));
        let name = Path::new(given).file_name().and_then(|f| f.to_str()).filter(|f| !f.is_empty()).unwrap_or("file").to_string();
        (dir, name)
    };
    if let Command::Run(a) = command {
        let looks_like_path = a.target.contains('/') || a.target.starts_with('.');
        match sent.remove(&a.target) {
            Some(Upload::Dir { files }) => {
                let (dir, name) = slot(&a.target);
                let folder = dir.join(name);
                write_folder(&folder, files)?;
                super::stdio::show_as(folder.display().to_string(), a.target.clone());
                a.given = Some(std::mem::replace(&mut a.target, folder.display().to_string()));
            }
            Some(Upload::File { .. }) => return Err(Error::Usage(format!("{}: an applet is a folder, and a file was sent", a.target))),
            None if looks_like_path => {
                let (dir, name) = slot(&a.target);
                let missing = dir.join(name);
                super::stdio::show_as(missing.display().to_string(), a.target.clone());
                a.given = Some(std::mem::replace(&mut a.target, missing.display().to_string()));
            }
            None => {}
        }
    }
    let mut outputs = Vec::new();
    for (how, p) in command.paths_mut() {
        let given = p.display().to_string();
        let (dir, name) = slot(&given);
        let target = dir.join(&name);
        match (how, sent.remove(&given)) {
            (PathUse::Read, Some(Upload::File { content })) => {
                let bytes = B64.decode(content).map_err(|e| Error::Usage(format!("{given}: the file sent is not base64: {e}")))?;
                std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(&target, bytes))
                    .map_err(|e| Error::Internal(format!("placing {given}: {e}")))?;
            }
            (PathUse::Folder, Some(Upload::Dir { files })) => write_folder(&target, files)?,
            // The item and its template beside it; the item keeps its name.
            (PathUse::Item, Some(Upload::Dir { files })) => write_folder(&dir, files)?,
            (PathUse::Write, _) => {
                std::fs::create_dir_all(&dir).map_err(|e| Error::Internal(format!("a place for {given}: {e}")))?;
                outputs.push((target.clone(), given.clone()));
            }
            (PathUse::Read | PathUse::Folder | PathUse::Item | PathUse::Watch | PathUse::Append | PathUse::Local, _) => {}
        }
        super::stdio::show_as(target.display().to_string(), given);
        *p = target;
    }
    Ok(outputs)
}

/// Writes a sent folder's files below `root`; each path must stay inside it.
fn write_folder(root: &Path, files: BTreeMap<String, String>) -> Result<(), Error> {
    if files.len() > MAX_FILES {
        return Err(Error::Usage(format!("a folder sent with more than {MAX_FILES} files")));
    }
    std::fs::create_dir_all(root).map_err(|e| Error::Internal(format!("placing a folder: {e}")))?;
    for (rel, content) in files {
        let path = Path::new(&rel);
        let inside = !rel.is_empty() && !rel.contains('\0') && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(Error::Usage(format!("a file sent as `{}` would land outside its folder", crate::util::truncate(&rel, 200))));
        }
        let bytes = B64.decode(content).map_err(|e| Error::Usage(format!("{rel}: the file sent is not base64: {e}")))?;
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Internal(format!("placing {rel}: {e}")))?;
        }
        std::fs::write(&target, bytes).map_err(|e| Error::Internal(format!("placing {rel}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_folder_cannot_place_files_outside_itself() {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("applet");
        for bad in ["../escape.lua", "/etc/passwd", "a/../../b", "", "./x"] {
            let files = BTreeMap::from([(bad.to_string(), B64.encode("x"))]);
            let err = write_folder(&root, files).unwrap_err();
            assert!(err.to_string().contains("outside its folder"), "{bad}: {err}");
        }
        assert!(!work.path().join("escape.lua").exists());
        write_folder(&root, BTreeMap::from([("lib/util.lua".to_string(), B64.encode("return 1"))])).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("lib/util.lua")).unwrap(), "return 1");
    }
}
