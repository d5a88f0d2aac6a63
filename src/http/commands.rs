//! `POST /api/v1/commands`: the CLI's commands, for `opslet --server URL` on another machine.
//!
//! The server runs the command the way it runs one from its local socket (`cli::remote` does
//! the work; the router only gets a [`CommandRunner`]), as the token's user: each command is
//! checked against that user's role and grants before it runs, through the same `require` as
//! every other route (a refusal is audited as `http.denied`). Paths in the command are the
//! caller's: the files it reads come in the request, the files it writes go back in the
//! answer; nothing on the server's disk is named by a remote caller.
//!
//! The answer streams frames ([`crate::util::frames`]): `STARTED` with the command's id (which
//! `POST /api/v1/commands/{id}/cancel` takes, like Ctrl-C), then `STDOUT`/`STDERR`/`FILE`, a
//! `PING` each second the command is silent, and `EXIT`. A caller that goes away cancels what
//! its command started.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::admin::body_json;
use super::authn::require;
use super::{ApiError, AppState, Authed};
use crate::auth::{Action, Principal};
use crate::error::Error;
use crate::runtime::CancelToken;
use crate::util::frames;

/// The media type of the answer's frame stream.
pub const FRAMES: &str = "application/vnd.opslet.frames";

/// A command as `opslet --server` sends it.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct CommandRequest {
    /// The command line, program name first.
    pub argv: Vec<String>,
    /// The caller's stdin (base64), for a command that reads it.
    #[serde(default)]
    pub stdin: Option<String>,
    /// The files and folders the command reads, by the path the caller wrote.
    #[serde(default)]
    pub files: BTreeMap<String, Upload>,
    #[serde(default)]
    pub out_tty: bool,
    #[serde(default)]
    pub err_tty: bool,
    /// The width of the caller's terminal.
    #[serde(default)]
    pub width: Option<u16>,
}

/// A file or folder of the caller's, contents in base64.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Upload {
    File {
        content: String,
    },
    /// Files by their path inside the folder (`/`-separated, relative).
    Dir {
        files: BTreeMap<String, String>,
    },
}

/// Asks the HTTP layer whether the caller may do something (it audits a refusal).
pub type Authorize = Box<dyn Fn(Action<'_>) -> Result<(), Error> + Send>;

/// Most commands one user has running at once; more are answered 429.
pub const PER_USER: usize = 8;

/// Most bytes of output waiting for a caller that does not read them; past it, the command is
/// cancelled and the rest of its output dropped.
pub const MAX_PENDING: usize = 64 << 20;

/// Where a command's frames go: to the answer, counting what waits to be sent.
#[derive(Clone)]
pub struct FrameSender {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<std::sync::atomic::AtomicUsize>,
    cancel: CancelToken,
}

impl FrameSender {
    /// Sends one encoded frame (dropped once the caller has stopped reading `MAX_PENDING` ago).
    pub fn send(&self, frame: Vec<u8>) {
        use std::sync::atomic::Ordering;
        if self.pending.fetch_add(frame.len(), Ordering::Relaxed) + frame.len() > MAX_PENDING {
            self.pending.fetch_sub(frame.len(), Ordering::Relaxed);
            self.cancel.cancel();
            return;
        }
        let _ = self.tx.send(frame);
    }
}

/// One command, handed to the [`CommandRunner`] on a blocking thread.
pub struct CommandCall {
    pub request: CommandRequest,
    /// Who sent it.
    pub principal: Principal,
    /// Asks whether the caller may do an action (refusals are audited); the runner asks before
    /// the command does anything.
    pub authorize: Authorize,
    /// Cancelled by the cancel route or by the caller going away.
    pub cancel: CancelToken,
    /// Encoded frames for the caller (`STDOUT`, `STDERR`, `FILE`).
    pub frames: FrameSender,
}

/// Runs one command and returns its exit code.
pub type CommandRunner = Arc<dyn Fn(CommandCall) -> i32 + Send + Sync>;

/// The commands a server runs for remote CLIs, and those running now (by id: their user and
/// cancel token).
#[derive(Clone, Default)]
pub struct Commands {
    runner: Option<CommandRunner>,
    live: Arc<Mutex<HashMap<String, (String, CancelToken)>>>,
}

impl Commands {
    pub fn new(runner: CommandRunner) -> Commands {
        Commands { runner: Some(runner), live: Default::default() }
    }
}

/// Cancels the command when the answer is dropped before its end (the caller went away).
struct Unfinished {
    cancel: CancelToken,
    ended: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.ended {
            self.cancel.cancel();
        }
    }
}

pub(super) async fn run_command(State(s): State<AppState>, Authed(p): Authed, body: Bytes) -> Result<Response, ApiError> {
    let Some(runner) = s.commands.runner.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "this server takes no CLI commands"));
    };
    let request: CommandRequest = body_json(&body)?;
    if request.argv.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "argv is empty: send the command line, program name first"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let cancel = CancelToken::default();
    {
        let mut live = s.commands.live.lock();
        if live.values().filter(|(user, _)| *user == p.user).count() >= PER_USER {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{} has {PER_USER} commands running already; wait for one to end", p.user),
            ));
        }
        live.insert(id.clone(), (p.user.clone(), cancel.clone()));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let frames_out = FrameSender { tx, pending: Arc::clone(&pending), cancel: cancel.clone() };
    frames_out.send(frames::encode(frames::STARTED, id.as_bytes()));
    let state = s.clone();
    let who = p.clone();
    let authorize = Box::new(move |action: Action<'_>| {
        require(&state, &who, action, "/api/v1/commands")
            .map_err(|e| Error::Denied(e.message.trim_start_matches("forbidden: ").to_string()))
    });
    let call = CommandCall { request, principal: p, authorize, cancel: cancel.clone(), frames: frames_out.clone() };
    let live = s.commands.live.clone();
    let my_id = id.clone();
    tokio::task::spawn_blocking(move || {
        // Off the list of running commands however the runner ends (a panic too).
        struct Forget(Arc<Mutex<HashMap<String, (String, CancelToken)>>>, String);
        impl Drop for Forget {
            fn drop(&mut self) {
                self.0.lock().remove(&self.1);
            }
        }
        let _forget = Forget(live, my_id);
        let code = runner(call);
        // The exit code goes out whatever waits before it.
        let _ = frames_out.tx.send(frames::encode(frames::EXIT, &code.to_be_bytes()));
    });
    let guard = Unfinished { cancel, ended: false };
    let stream = futures_util::stream::unfold((rx, guard, pending), |(mut rx, mut guard, pending)| async move {
        if guard.ended {
            return None;
        }
        let frame = tokio::select! {
            f = rx.recv() => f,
            () = tokio::time::sleep(Duration::from_secs(1)) => Some(frames::encode(frames::PING, &[])),
        };
        let frame = frame?;
        // PING and EXIT are not counted in (they are sent past the budget).
        if !matches!(frame.first(), Some(&frames::PING) | Some(&frames::EXIT)) {
            pending.fetch_sub(frame.len(), std::sync::atomic::Ordering::Relaxed);
        }
        guard.ended = frame.first() == Some(&frames::EXIT);
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), (rx, guard, pending)))
    });
    Ok(([(header::CONTENT_TYPE, FRAMES)], Body::from_stream(stream)).into_response())
}

/// Cancels a command of the caller's own (an admin's: anyone's), as Ctrl-C in the CLI does.
pub(super) async fn cancel_command(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Response, ApiError> {
    let found = s.commands.live.lock().get(&id).cloned();
    match found {
        Some((user, cancel)) if user == p.user || p.role == crate::auth::Role::Admin => {
            cancel.cancel();
            Ok((StatusCode::ACCEPTED, Json(json!({ "cancelled": id }))).into_response())
        }
        // Another user's command is reported like one that does not exist.
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no command `{}` of yours is running", crate::util::truncate(&id, 64)))),
    }
}

/// `PUT /api/v1/users/{name}/password`: an admin sets anyone's console password; a user changes
/// their own by giving the current one too (so a leaked token cannot become a console login that
/// outlives its revocation, and a user's first password comes from an admin).
pub(super) async fn set_password(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    struct Body {
        password: String,
        /// The current password: needed to change one's own without being an admin.
        #[serde(default)]
        current: Option<String>,
    }
    let b: Body = body_json(&body)?;
    let path = "/api/v1/users/{name}/password";
    let own_change = p.user == name && p.role != crate::auth::Role::Admin;
    if !own_change {
        require(&s, &p, Action::Admin, path)?;
    } else if !s.sessions.attempt(&name) {
        // Guessing the current password here is throttled like signing in.
        super::authn::deny(&s, Some(&p.user), path, "password change throttled after repeated attempts");
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many attempts for this user; wait a minute"));
    }
    let auth = s.auth.clone();
    let actor = p.user.clone();
    let user = name.clone();
    let checked = tokio::task::spawn_blocking(move || {
        if own_change {
            let Some(current) = b.current.filter(|c| c.len() <= crate::auth::MAX_PASSWORD) else {
                return Ok(Err("send the current password as `current` to change your own"));
            };
            if auth.check_password(&user, &current).is_err() {
                return Ok(Err("the current password is wrong"));
            }
        }
        auth.set_password(&user, &b.password, &actor)?;
        auth.flush().map(Ok)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("setting the password: {e}")))?;
    match checked {
        Ok(Ok(())) => {
            if own_change {
                s.sessions.succeeded(&name);
            }
            Ok(Json(json!({ "password_set": name })))
        }
        Ok(Err(why)) => {
            super::authn::deny(&s, Some(&p.user), path, why);
            Err(ApiError::new(StatusCode::FORBIDDEN, format!("forbidden: {why}")))
        }
        Err(e) => Err(ApiError::from(e)),
    }
}
