//! The local socket: the server is the data dir's single writer, and the CLI talks to it.
//!
//! `opslet serve` listens on `DATA_DIR/opslet.sock` (mode 0600, for the data dir's owner). A CLI
//! command that needs the data dir first tries that socket: when a server answers, the command
//! runs *in the server*, on the server's store, and its output, errors and exit code come back
//! as if it had run in place; when none does, the CLI opens the store itself. The server takes a
//! command only from a process of its own OS user (the socket's peer credentials), so the actor
//! the audit log names is the same user either way.
//!
//! The wire is a stream of frames, each a kind byte, a big-endian u32 length and a payload: one
//! `REQUEST` (JSON) from the CLI, then `STDOUT`/`STDERR` bytes and one `EXIT` (i32) from the
//! server. A `CANCEL` from the CLI (its Ctrl-C), or the CLI going away, cancels a run the command
//! started.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::stdio::{Remote, Sink, Stream};
use crate::error::Error;
use crate::runtime::CancelToken;
use crate::service::RunService;
use crate::store::Store;

/// The socket's file name in the data dir.
pub const SOCKET: &str = "opslet.sock";

use crate::util::frames::{CANCEL, EXIT, REQUEST, STDERR, STDOUT};

/// The largest request taken (its stdin, a secret or a password, is the only large part).
const MAX_REQUEST: u32 = 16 << 20;

/// A command as the CLI sends it.
#[derive(Serialize, Deserialize, Debug)]
struct Request {
    /// The command line, program name first.
    argv: Vec<String>,
    /// What the CLI resolved: the config file, and its working directory (relative paths in
    /// the command are the CLI's).
    config: Option<PathBuf>,
    cwd: PathBuf,
    /// The CLI's stdin, for a command that reads it.
    stdin: Option<Vec<u8>>,
    out_tty: bool,
    err_tty: bool,
    /// The width of the CLI's terminal.
    #[serde(default)]
    width: Option<u16>,
}

fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&crate::util::frames::encode(kind, payload))
}

// ---- the CLI's side ----

/// Set by SIGINT while a forwarded command runs.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Sends the command to the server on `data_dir`'s socket and relays its output. `Ok(None)`
/// when no server listens there (the caller then opens the store itself).
pub fn forward(data_dir: &Path, config: Option<PathBuf>, stdin: Option<Vec<u8>>) -> Result<Option<i32>, Error> {
    let path = data_dir.join(SOCKET);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        // No socket, or one a server that ended left behind: nobody holds the data dir for it.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(Error::Store(format!("connecting to the server on {}: {e}", path.display()))),
    };
    let lost = |e: std::io::Error| Error::Store(format!("the server on {} stopped answering: {e}", path.display()));
    let req = Request {
        argv: std::env::args().collect(),
        config,
        cwd: std::env::current_dir().map_err(|e| Error::Internal(format!("reading the current directory: {e}")))?,
        stdin,
        out_tty: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        err_tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        width: super::stdio::local_terminal_width(),
    };
    // A server that refuses the caller answers without reading the request: its answer is read
    // even when sending the request failed.
    let sent = write_frame(&mut stream, REQUEST, &serde_json::to_vec(&req).expect("requests serialize"));
    // Ctrl-C asks the server to cancel (each press again) instead of ending this process.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    stream.set_read_timeout(Some(std::time::Duration::from_millis(100))).map_err(lost)?;
    let mut reader = std::io::BufReader::new(stream.try_clone().map_err(lost)?);
    loop {
        if INTERRUPTED.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = write_frame(&mut stream, CANCEL, &[]);
        }
        // A frame's header can be cut by the timeout: read the kind byte with it, the rest without.
        let mut kind = [0u8; 1];
        match reader.read(&mut kind) {
            Ok(0) => return Err(lost(sent.err().unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into()))),
            Ok(_) => {}
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) =>
            {
                continue;
            }
            Err(e) => return Err(lost(e)),
        }
        reader.get_ref().set_read_timeout(None).map_err(lost)?;
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(lost)?;
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        reader.read_exact(&mut payload).map_err(lost)?;
        reader.get_ref().set_read_timeout(Some(std::time::Duration::from_millis(100))).map_err(lost)?;
        match kind[0] {
            STDOUT => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&payload);
                let _ = out.flush();
            }
            STDERR => {
                let _ = std::io::stderr().lock().write_all(&payload);
            }
            EXIT if payload.len() == 4 => return Ok(Some(i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]))),
            other => return Err(Error::Store(format!("the server on {} sent an unknown frame ({other})", path.display()))),
        }
    }
}

// ---- the server's side ----

/// Output frames of a command, on their way to the socket.
struct ChannelSink(tokio::sync::mpsc::UnboundedSender<(u8, Vec<u8>)>);

impl Sink for ChannelSink {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let kind = if stream == Stream::Out { STDOUT } else { STDERR };
        let _ = self.0.send((kind, bytes.to_vec()));
    }
}

/// Listens on `data_dir`'s socket for as long as the returned task runs, running each command
/// it receives on `store`, its runs on `service`.
pub async fn listen(data_dir: PathBuf, store: Store, service: RunService) -> Result<tokio::task::JoinHandle<()>, Error> {
    let path = data_dir.join(SOCKET);
    let fail = |e: std::io::Error| Error::Store(format!("listening on {}: {e}", path.display()));
    // A socket file left by a server that ended: this process holds the data dir now.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = {
        // Created for the owner only, before anyone can connect.
        // SAFETY: umask is process-wide; nothing else in the server creates files meanwhile.
        let old = unsafe { libc::umask(0o177) };
        let l = tokio::net::UnixListener::bind(&path);
        unsafe { libc::umask(old) };
        l.map_err(fail)?
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    let me = unsafe { libc::geteuid() };
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (data_dir, store, service) = (data_dir.clone(), store.clone(), service.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, me, data_dir, store, service).await {
                    tracing::warn!(error = %e, "a command on the local socket");
                }
            });
        }
    }))
}

async fn serve_one(
    mut stream: tokio::net::UnixStream,
    me: u32,
    data_dir: PathBuf,
    store: Store,
    service: RunService,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let refuse = |msg: String| {
        let mut out = Vec::new();
        let _ = write_frame(&mut out, STDERR, format!("error: {msg}\n").as_bytes());
        let _ = write_frame(&mut out, EXIT, &Error::Store(String::new()).exit_code().to_be_bytes());
        out
    };
    let peer = stream.peer_cred()?.uid();
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if head[0] != REQUEST || len > MAX_REQUEST {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a command request"));
    }
    if peer != me {
        // Refused before its request is even read: nothing of it is parsed or run.
        let msg = format!("the server on this data dir runs commands only for its own user (uid {me}); this one came from uid {peer}");
        stream.write_all(&refuse(msg)).await?;
        let _ = stream.shutdown().await;
        return Ok(());
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await?;
    let req: Request = serde_json::from_slice(&payload).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancelToken::default();
    let remote = Remote {
        sink: Arc::new(ChannelSink(tx.clone())),
        shown_as: Vec::new(),
        out_tty: req.out_tty,
        err_tty: req.err_tty,
        width: req.width,
    };
    let ctx =
        super::Forwarded { store, data_dir, config: req.config.clone(), cwd: req.cwd.clone(), cancel: cancel.clone(), user: None, service };
    let (argv, stdin) = (req.argv, req.stdin);
    let task = tokio::task::spawn_blocking(move || {
        let code = super::stdio::with_remote(remote, || super::stdio::with_input(stdin, || super::execute_forwarded(argv, ctx)));
        let _ = tx.send((EXIT, code.to_be_bytes().to_vec()));
    });
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = [0u8; 5];
    let mut reading = true;
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some((kind, bytes)) = frame else { break };
                if wr.write_all(&crate::util::frames::encode(kind, &bytes)).await.is_err() {
                    // The CLI went away: whatever the command started is cancelled.
                    cancel.cancel();
                }
                if kind == EXIT {
                    break;
                }
            }
            n = rd.read(&mut buf), if reading => match n {
                // A CANCEL frame (Ctrl-C), or the CLI gone: cancel the run, keep relaying.
                Ok(0) | Err(_) => { reading = false; cancel.cancel(); }
                Ok(n) => { if buf[..n].contains(&CANCEL) { cancel.cancel(); } }
            },
        }
    }
    let _ = task.await;
    Ok(())
}
