//! A plain SSH client over russh: connect (directly or through a jump host), verify the host
//! key against the pin, log in, run a command, move files over SFTP. Nothing here knows Lua.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kit::objects::{Chunks, Sink, Writer};

/// How to reach and log in to one host.
#[derive(Clone)]
pub struct Target {
    /// The cmdb name, used in every message.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub auth: Auth,
    /// The pinned key, when the cmdb has one.
    pub pinned: Option<PublicKey>,
    /// Accept an unpinned key (the caller then pins it).
    pub accept_new: bool,
}

#[derive(Clone)]
pub enum Auth {
    Password(String),
    Key(Arc<PrivateKey>),
}

/// Why a connection failed, worded for the person reading a per-host result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// TCP or SSH transport failure (refused, unreachable, reset, protocol).
    Transport(String),
    Timeout(Duration),
    /// The host offered a key that differs from the pinned one.
    KeyChanged {
        pinned: String,
        offered: String,
        offered_key: String,
    },
    /// The host has no pinned key and first contact is refused.
    KeyUnknown {
        offered: String,
        offered_key: String,
    },
    AuthFailed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Transport(m) => f.write_str(m),
            ConnectError::Timeout(d) => write!(f, "connect timed out after {}", humantime::format_duration(*d)),
            ConnectError::KeyChanged { pinned, offered, .. } => write!(
                f,
                "host key changed: the cmdb pins {pinned} but the host offered {offered}; refusing to connect (if the host was reinstalled, pin the new key with `opslet cmdb host set NAME --host-key ...`)"
            ),
            ConnectError::KeyUnknown { offered, .. } => write!(
                f,
                "host key {offered} is not pinned in the cmdb and [ssh] first_contact = \"refuse\"; pin it with `opslet cmdb host set NAME --host-key ...`"
            ),
            ConnectError::AuthFailed(m) => f.write_str(m),
        }
    }
}

/// What the handler saw of the server's key.
#[derive(Default)]
struct KeySeen {
    offered: Option<PublicKey>,
    verdict: Option<ConnectError>,
}

struct Handler {
    pinned: Option<PublicKey>,
    accept_new: bool,
    seen: Arc<Mutex<KeySeen>>,
}

pub fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}

/// The key as an OpenSSH line without its comment.
pub fn openssh_line(k: &PublicKey) -> String {
    let mut k = k.clone();
    k.set_comment("");
    k.to_openssh().unwrap_or_default().trim().to_string()
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            self.seen.lock().verdict = Some(ConnectError::Transport("the host offered a certificate; opslet pins plain host keys".into()));
            return Ok(false);
        };
        let mut seen = self.seen.lock();
        seen.offered = Some(key.clone());
        let ok = match &self.pinned {
            Some(p) if p.key_data() == key.key_data() => true,
            Some(p) => {
                seen.verdict =
                    Some(ConnectError::KeyChanged { pinned: fingerprint(p), offered: fingerprint(key), offered_key: openssh_line(key) });
                false
            }
            None if self.accept_new => true,
            None => {
                seen.verdict = Some(ConnectError::KeyUnknown { offered: fingerprint(key), offered_key: openssh_line(key) });
                false
            }
        };
        Ok(ok)
    }
}

/// A logged-in connection.
pub struct Session {
    handle: Handle<Handler>,
    /// The key the host offered (to pin on first contact).
    pub host_key: Option<PublicKey>,
    /// Kept alive while this session tunnels through it.
    _jump: Option<Arc<Session>>,
}

fn config(target: &Target) -> Arc<client::Config> {
    let mut preferred = russh::Preferred::default();
    // Ask for the pinned key's algorithm first, so a host with several keys offers that one.
    if let Some(p) = &target.pinned {
        let alg = p.algorithm();
        let mut keys: Vec<_> = preferred.key.iter().filter(|a| **a != alg).cloned().collect();
        keys.insert(0, alg);
        preferred.key = keys.into();
    }
    Arc::new(client::Config {
        preferred,
        nodelay: true,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    })
}

fn transport(e: russh::Error, target: &Target) -> ConnectError {
    match e {
        russh::Error::IO(io) => ConnectError::Transport(format!("connect to {}:{}: {io}", target.address, target.port)),
        russh::Error::ConnectionTimeout => ConnectError::Transport(format!("connect to {}:{}: timed out", target.address, target.port)),
        other => ConnectError::Transport(format!("ssh to {}:{}: {other}", target.address, target.port)),
    }
}

impl Session {
    /// Connects, checks the host key and logs in, all within `timeout`.
    pub async fn connect(target: &Target, jump: Option<Arc<Session>>, timeout: Duration) -> Result<Session, ConnectError> {
        match tokio::time::timeout(timeout, Session::connect_inner(target, jump)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    async fn connect_inner(target: &Target, jump: Option<Arc<Session>>) -> Result<Session, ConnectError> {
        let seen = Arc::new(Mutex::new(KeySeen::default()));
        let handler = Handler { pinned: target.pinned.clone(), accept_new: target.accept_new, seen: Arc::clone(&seen) };
        let cfg = config(target);
        let connected = match &jump {
            None => client::connect(cfg, (target.address.as_str(), target.port), handler).await,
            Some(j) => {
                let ch = j.handle.channel_open_direct_tcpip(target.address.clone(), u32::from(target.port), "127.0.0.1", 0).await.map_err(
                    |e| ConnectError::Transport(format!("tunnel to {}:{} through the jump host: {e}", target.address, target.port)),
                )?;
                client::connect_stream(cfg, ch.into_stream(), handler).await
            }
        };
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                if let Some(v) = seen.lock().verdict.take() {
                    return Err(v);
                }
                return Err(transport(e, target));
            }
        };
        let host_key = seen.lock().offered.clone();
        let auth = match &target.auth {
            Auth::Password(p) => handle.authenticate_password(&target.user, p).await,
            Auth::Key(k) => {
                let hash = handle.best_supported_rsa_hash().await.map_err(|e| transport(e, target))?.flatten();
                handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(Arc::clone(k), hash)).await
            }
        };
        let how = match &target.auth {
            Auth::Password(_) => "password",
            Auth::Key(_) => "key",
        };
        match auth {
            Ok(r) if r.success() => Ok(Session { handle, host_key, _jump: jump }),
            Ok(_) => Err(ConnectError::AuthFailed(format!("login as {} ({how}) refused", target.user))),
            Err(e) => Err(ConnectError::AuthFailed(format!("login as {} ({how}): {e}", target.user))),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command`; stdin, when given, is sent and closed. Output past `max_output` bytes per
    /// stream, or past what `budget` has left (shared by all hosts of a call), is dropped and
    /// flagged.
    pub async fn exec(&self, command: &str, stdin: Option<bytes::Bytes>, max_output: usize, budget: &Budget) -> Result<Exec, String> {
        let t0 = Instant::now();
        let mut ch = self.handle.channel_open_session().await.map_err(|e| format!("opening a session channel: {e}"))?;
        ch.exec(true, command.as_bytes()).await.map_err(|e| format!("starting the command: {e}"))?;
        if let Some(input) = stdin {
            ch.data_bytes(input).await.map_err(|e| format!("sending input: {e}"))?;
        }
        ch.eof().await.map_err(|e| format!("closing input: {e}"))?;
        let mut out = Exec::default();
        let keep = |buf: &mut Vec<u8>, data: &[u8], cut: &mut bool| {
            let room = budget.take(max_output.saturating_sub(buf.len()).min(data.len()));
            if data.len() > room {
                *cut = true;
            }
            buf.extend_from_slice(&data[..room]);
        };
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => keep(&mut out.stdout, &data, &mut out.truncated),
                ChannelMsg::ExtendedData { data, ext: 1 } => keep(&mut out.stderr, &data, &mut out.truncated),
                ChannelMsg::ExitStatus { exit_status } => out.exit_code = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => out.signal = Some(format!("{signal_name:?}")),
                _ => {}
            }
        }
        out.duration = t0.elapsed();
        Ok(out)
    }

    /// Opens an interactive shell on a pseudo-terminal `cols` wide (network CLIs speak only
    /// this: no exec channel). The caller drives the returned channel.
    pub async fn shell(&self, cols: u32) -> Result<russh::Channel<client::Msg>, String> {
        let ch = self.handle.channel_open_session().await.map_err(|e| format!("opening a session channel: {e}"))?;
        ch.request_pty(false, "vt100", cols, 0, 0, 0, &[]).await.map_err(|e| format!("asking for a terminal: {e}"))?;
        ch.request_shell(true).await.map_err(|e| format!("starting a shell: {e}"))?;
        Ok(ch)
    }

    async fn sftp(&self) -> Result<russh_sftp::client::SftpSession, String> {
        let ch = self.handle.channel_open_session().await.map_err(|e| format!("opening a session channel: {e}"))?;
        ch.request_subsystem(true, "sftp").await.map_err(|e| format!("starting sftp: {e}"))?;
        russh_sftp::client::SftpSession::new(ch.into_stream()).await.map_err(|e| format!("starting sftp: {e}"))
    }

    /// Writes `data` to `path` with `mode`. The mode is set on the open handle before any byte is
    /// written (no window where the content has the default mode), and only the mode: a size
    /// in the attributes would truncate whatever another writer put there meanwhile.
    pub async fn put(&self, path: &str, data: &[u8], mode: Option<u32>) -> Result<(), String> {
        let sftp = self.sftp().await?;
        let mut f = sftp.create(path).await.map_err(|e| format!("creating {path}: {e}"))?;
        if let Some(mode) = mode {
            let attrs = russh_sftp::protocol::FileAttributes { permissions: Some(mode), ..Default::default() };
            f.set_metadata(attrs).await.map_err(|e| format!("setting the mode of {path}: {e}"))?;
        }
        f.write_all(data).await.map_err(|e| format!("writing {path}: {e}"))?;
        f.shutdown().await.map_err(|e| format!("writing {path}: {e}"))?;
        drop(f);
        let _ = sftp.close().await;
        Ok(())
    }

    /// Reads `path`, refusing files over `max` bytes or over what `budget` has left.
    pub async fn get(&self, path: &str, max: u64, budget: &Budget) -> Result<Vec<u8>, String> {
        let sftp = self.sftp().await?;
        let meta = sftp.metadata(path).await.map_err(|e| format!("reading {path}: {e}"))?;
        let size = meta.size.unwrap_or(0);
        if size > max {
            return Err(format!("{path} is {size} bytes, over the {max}-byte limit ([ssh] max_file)"));
        }
        let want = usize::try_from(size).unwrap_or(usize::MAX);
        if budget.take(want) < want {
            return Err(format!("{path} is {size} bytes, more than this call may still hold in memory (the run's memory limit)"));
        }
        let f = sftp.open(path).await.map_err(|e| format!("opening {path}: {e}"))?;
        let mut buf = Vec::new();
        f.take(max + 1).read_to_end(&mut buf).await.map_err(|e| format!("reading {path}: {e}"))?;
        if buf.len() as u64 > max {
            return Err(format!("{path} grew over the {max}-byte limit ([ssh] max_file) while being read"));
        }
        let _ = sftp.close().await;
        Ok(buf)
    }

    /// Streams `chunks` to `path` without holding them whole: over SFTP into a temporary file
    /// beside it ([`temp_path`]), with `mode` set on the open handle before any byte, hashing
    /// as it goes; then one command on the host checks the file's SHA-256 there
    /// ([`verify_command`]) and renames it over `path`, so `path` never holds a partial or
    /// corrupted file. The streamed hash must also equal `expected_sha256` (what the source
    /// recorded), when given. On any failure the temporary file is removed (best effort, also
    /// when the call is dropped midway, e.g. by its timeout). Returns the bytes written and their
    /// hex SHA-256.
    pub async fn put_stream(
        self: &Arc<Self>,
        path: &str,
        chunks: Box<dyn Chunks>,
        mode: Option<u32>,
        expected_sha256: Option<&str>,
    ) -> Result<(u64, String), String> {
        let tmp = temp_path(path, &random_hex(8)?)?;
        let sftp = self.sftp().await?;
        // Removes the temporary file if this future is dropped before it is settled.
        let mut guard = TempGuard { session: Some(Arc::clone(self)), tmp: tmp.clone() };
        let sent = self.send_to_temp(&sftp, path, &tmp, chunks, mode).await;
        let (bytes, sha) = match sent {
            Ok(v) => v,
            Err(m) => {
                guard.session = None;
                if sftp.remove_file(tmp.as_str()).await.is_err() {
                    self.remove_quietly(&tmp).await;
                }
                let _ = sftp.close().await;
                return Err(m);
            }
        };
        let _ = sftp.close().await;
        if let Some(want) = expected_sha256
            && !want.eq_ignore_ascii_case(&sha)
        {
            guard.session = None;
            self.remove_quietly(&tmp).await;
            return Err(format!(
                "the {bytes} bytes read from the source have SHA-256 {sha}, but it recorded {}; nothing was written to {path}",
                want.to_ascii_lowercase()
            ));
        }
        let checked = self.exec(&verify_command(&tmp, path, &sha), None, 4096, &Budget::new(16 * 1024)).await;
        guard.session = None;
        let e = match checked {
            Ok(e) => e,
            Err(m) => {
                self.remove_quietly(&tmp).await;
                return Err(format!("checking {path} on the host: {m}"));
            }
        };
        let out = String::from_utf8_lossy(&e.stdout);
        let err = String::from_utf8_lossy(&e.stderr);
        let err = err.trim();
        match e.exit_code {
            Some(0) => Ok((bytes, sha)),
            Some(VERIFY_MISMATCH) => Err(format!(
                "the file written to the host has SHA-256 {} but {sha} was sent; it was removed and {path} left as it was",
                out.trim()
            )),
            Some(VERIFY_NO_SUM) => Err(format!("sha256sum on the host failed ({err}); the file was removed and {path} left as it was")),
            Some(VERIFY_NO_RENAME) => Err(format!("renaming the checked file to {path} failed ({err}); it was removed")),
            other => {
                self.remove_quietly(&tmp).await;
                Err(format!("checking {path} on the host failed (exit {}): {err}", other.map_or("none".to_string(), |c| c.to_string())))
            }
        }
    }

    /// The SFTP part of [`put_stream`](Self::put_stream): `chunks` into `tmp`, hashed.
    async fn send_to_temp(
        &self,
        sftp: &russh_sftp::client::SftpSession,
        path: &str,
        tmp: &str,
        mut chunks: Box<dyn Chunks>,
        mode: Option<u32>,
    ) -> Result<(u64, String), String> {
        use russh_sftp::protocol::OpenFlags;
        use sha2::Digest;
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let mut f = sftp.open_with_flags(tmp, flags).await.map_err(|e| format!("creating {tmp} (to become {path}): {e}"))?;
        if let Some(mode) = mode {
            let attrs = russh_sftp::protocol::FileAttributes { permissions: Some(mode), ..Default::default() };
            f.set_metadata(attrs).await.map_err(|e| format!("setting the mode of {tmp}: {e}"))?;
        }
        let mut hash = sha2::Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = chunks.next().await.map_err(|e| format!("reading the source: {e}"))? {
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(|e| format!("writing {tmp}: {e}"))?;
        }
        f.shutdown().await.map_err(|e| format!("writing {tmp}: {e}"))?;
        Ok((bytes, hex::encode(hash.finalize())))
    }

    /// Removes `path` on the host, ignoring failure (cleanup of a temporary file).
    async fn remove_quietly(&self, path: &str) {
        let rm = format!("rm -f -- {}", shell_quote(path));
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, self.exec(&rm, None, 1024, &Budget::new(4096))).await;
    }

    /// Streams the file at `path` to `sink` as the object `name`, without holding it whole:
    /// first `sha256sum` on the host gives the file's hash (recorded with the object, which the
    /// sink checks), then the file is read over SFTP in chunks of [`STREAM_CHUNK`] bytes,
    /// hashed as read; if that hash differs from the host's (the file changed meanwhile) the
    /// object is dropped. Returns the bytes read, their hex SHA-256 and the sink's description
    /// of the kept object.
    pub async fn get_stream(&self, path: &str, sink: &dyn Sink, name: &str) -> Result<(u64, String, serde_json::Value), String> {
        use sha2::Digest;
        let e = self.exec(&format!("sha256sum -- {}", shell_quote(path)), None, 4096, &Budget::new(16 * 1024)).await?;
        if e.exit_code != Some(0) {
            let err = String::from_utf8_lossy(&e.stderr);
            let why = match err.trim() {
                "" => e.signal.map(|s| format!("killed by signal {s}")).unwrap_or_else(|| format!("exit {:?}", e.exit_code)),
                m => m.to_string(),
            };
            return Err(format!("cannot read {path} on the host (sha256sum: {why})"));
        }
        let host_sha = parse_sha256sum(&String::from_utf8_lossy(&e.stdout))
            .ok_or_else(|| format!("sha256sum of {path} on the host printed no hash: {}", String::from_utf8_lossy(&e.stdout).trim()))?;
        let sftp = self.sftp().await?;
        let mut f = sftp.open(path).await.map_err(|e| format!("opening {path}: {e}"))?;
        let w = match sink.begin(name, Some(host_sha.clone())).await {
            Ok(w) => w,
            Err(e) => {
                drop(f);
                let _ = sftp.close().await;
                return Err(format!("starting {name} at {}: {e}", sink.label()));
            }
        };
        // Aborts the object if this future is dropped before it is settled.
        let mut w = WriterGuard(Some(w));
        let mut hash = sha2::Sha256::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; STREAM_CHUNK];
        let copied: Result<(), String> = async {
            loop {
                let n = fill(&mut f, &mut buf).await.map_err(|e| format!("reading {path}: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                hash.update(&buf[..n]);
                bytes += n as u64;
                w.get().write(&buf[..n]).await.map_err(|e| format!("writing {name} to {}: {e}", sink.label()))?;
            }
        }
        .await;
        drop(f);
        let _ = sftp.close().await;
        if let Err(m) = copied {
            w.take().abort().await;
            return Err(m);
        }
        let sha = hex::encode(hash.finalize());
        if sha != host_sha {
            w.take().abort().await;
            return Err(format!(
                "{path} changed while it was read: the host's sha256sum gave {host_sha} but the {bytes} bytes read have {sha}; nothing was kept"
            ));
        }
        let object = w.take().finish().await.map_err(|e| format!("storing {name} at {}: {e}", sink.label()))?;
        Ok((bytes, sha, object))
    }

    pub async fn close(&self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }
}

/// Bytes read from a host per chunk when streaming a file to a sink.
pub const STREAM_CHUNK: usize = 256 * 1024;

/// How long removing a temporary file may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit codes of [`verify_command`].
const VERIFY_NO_SUM: u32 = 90;
const VERIFY_MISMATCH: u32 = 91;
const VERIFY_NO_RENAME: u32 = 92;

/// Reads until `buf` is full or the file ends; how many bytes were read.
async fn fill(f: &mut russh_sftp::client::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Removes a temporary file when dropped armed (the upload was abandoned midway).
struct TempGuard {
    session: Option<Arc<Session>>,
    tmp: String,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let tmp = std::mem::take(&mut self.tmp);
        rt.spawn(async move { session.remove_quietly(&tmp).await });
    }
}

/// A sink's writer that is aborted when dropped unsettled (the host's call was dropped midway).
struct WriterGuard(Option<Box<dyn Writer>>);

impl WriterGuard {
    fn get(&mut self) -> &mut Box<dyn Writer> {
        self.0.as_mut().expect("the writer is settled only once")
    }

    fn take(&mut self) -> Box<dyn Writer> {
        self.0.take().expect("the writer is settled only once")
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let Some(w) = self.0.take() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(w.abort());
        }
    }
}

/// Where a streamed upload to `path` is written first: a hidden file beside it (same directory,
/// so the final rename is atomic), `{dir}/.{basename}.opslet-{suffix}`; a long name is cut to
/// keep within the 255 bytes a file name may have.
pub fn temp_path(path: &str, suffix: &str) -> Result<String, String> {
    let base = basename(path)?;
    let dir = &path[..path.len() - base.len()];
    let mut keep = base.len().min(255 - ".".len() - ".opslet-".len() - suffix.len().min(64));
    while !base.is_char_boundary(keep) {
        keep -= 1;
    }
    Ok(format!("{dir}.{}.opslet-{suffix}", &base[..keep]))
}

/// The last component of `path` (a file's name), refusing directory paths.
pub fn basename(path: &str) -> Result<&str, String> {
    match path.rsplit_once('/').map_or(path, |(_, b)| b) {
        "" | "." | ".." => Err(format!("`{path}` names a directory; give the path of a file")),
        b => Ok(b),
    }
}

/// One command for the host: hashes `tmp` with `sha256sum` and, if it is `sha256`, renames it
/// over `path`; otherwise removes it. Prints the host's hash; exits [`VERIFY_NO_SUM`] when
/// `sha256sum` fails, [`VERIFY_MISMATCH`] when the hashes differ, [`VERIFY_NO_RENAME`] when the
/// rename fails (the temporary file is removed in each case).
pub fn verify_command(tmp: &str, path: &str, sha256: &str) -> String {
    let (t, p) = (shell_quote(tmp), shell_quote(path));
    // sha256sum prints `HASH  NAME`, with a `\` before HASH when NAME has a backslash or newline.
    format!(
        "h=$(sha256sum -- {t}) || {{ rm -f -- {t}; exit {VERIFY_NO_SUM}; }}; h=${{h#\\\\}}; h=${{h%% *}}; echo \"$h\"; \
         if [ \"$h\" != {} ]; then rm -f -- {t}; exit {VERIFY_MISMATCH}; fi; \
         mv -f -- {t} {p} || {{ rm -f -- {t}; exit {VERIFY_NO_RENAME}; }}",
        shell_quote(sha256)
    )
}

/// The hash in `sha256sum` output (`HASH  NAME`, `\HASH  NAME` for escaped names), lowercase.
pub fn parse_sha256sum(out: &str) -> Option<String> {
    let first = out.split_whitespace().next()?;
    let h = first.strip_prefix('\\').unwrap_or(first);
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

/// `bytes` random bytes as hex.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness for a temporary name: {e}"))?;
    Ok(hex::encode(buf))
}

/// Bytes the results of one call may hold in all (the run's memory limit): output beyond it is
/// cut, so a thousand chatty hosts cannot exhaust the process before the Lua heap limit applies.
#[derive(Debug)]
pub struct Budget(std::sync::atomic::AtomicU64);

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        Budget(std::sync::atomic::AtomicU64::new(bytes))
    }

    /// Takes up to `want` bytes; returns how many were granted.
    pub fn take(&self, want: usize) -> usize {
        use std::sync::atomic::Ordering;
        let mut granted = 0;
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            granted = (want as u64).min(left);
            Some(left - granted)
        });
        granted as usize
    }
}

/// What one command did.
#[derive(Debug, Default, Clone)]
pub struct Exec {
    pub exit_code: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub duration: Duration,
}

/// Parses an OpenSSH private key, with its passphrase when it has one.
pub fn parse_private_key(text: &str, passphrase: Option<&str>) -> Result<PrivateKey, String> {
    russh::keys::decode_secret_key(text, passphrase).map_err(|e| format!("the private key cannot be read: {e}"))
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::{basename, parse_sha256sum, shell_quote, temp_path, verify_command};

    #[test]
    fn quoting_survives_quotes_and_metacharacters() {
        assert_eq!(shell_quote("nginx"), "nginx");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's; rm -rf /"), r"'it'\''s; rm -rf /'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
    }

    #[test]
    fn temporary_files_sit_hidden_beside_the_target() {
        assert_eq!(temp_path("/opt/agent/agent.tgz", "0a1b").unwrap(), "/opt/agent/.agent.tgz.opslet-0a1b");
        assert_eq!(temp_path("/motd", "ff").unwrap(), "/.motd.opslet-ff");
        assert_eq!(temp_path("/a dir/it's", "ff").unwrap(), "/a dir/.it's.opslet-ff");
        assert!(temp_path("/etc/", "ff").unwrap_err().contains("names a directory"));
        assert!(temp_path("/etc/..", "ff").is_err());
        let long = format!("/d/{}", "é".repeat(200));
        let t = temp_path(&long, "0123456789abcdef").unwrap();
        let name = t.strip_prefix("/d/").unwrap();
        assert!(name.len() <= 255, "{}", name.len());
        assert!(name.starts_with(".é") && name.ends_with(".opslet-0123456789abcdef"));
    }

    #[test]
    fn basenames_of_files_only() {
        assert_eq!(basename("/var/log/syslog").unwrap(), "syslog");
        assert_eq!(basename("/x").unwrap(), "x");
        assert!(basename("/var/log/").is_err());
        assert!(basename("/var/.").is_err());
    }

    #[test]
    fn the_verify_command_checks_then_renames_with_everything_quoted() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let c = verify_command("/srv/.it's.opslet-01", "/srv/it's", sha);
        assert_eq!(
            c,
            format!(
                "h=$(sha256sum -- '/srv/.it'\\''s.opslet-01') || {{ rm -f -- '/srv/.it'\\''s.opslet-01'; exit 90; }}; h=${{h#\\\\}}; h=${{h%% *}}; echo \"$h\"; \
                 if [ \"$h\" != {sha} ]; then rm -f -- '/srv/.it'\\''s.opslet-01'; exit 91; fi; \
                 mv -f -- '/srv/.it'\\''s.opslet-01' '/srv/it'\\''s' || {{ rm -f -- '/srv/.it'\\''s.opslet-01'; exit 92; }}"
            )
        );
    }

    #[test]
    fn the_verify_command_runs_in_a_posix_shell() {
        use sha2::Digest;
        let Ok(dir) = tempfile::tempdir() else { return };
        if std::process::Command::new("sha256sum").arg("--version").output().is_err() {
            return;
        }
        let d = dir.path().to_str().unwrap();
        let (tmp, path) = (format!("{d}/.a\\b c.opslet-1"), format!("{d}/a\\b c"));
        let sh = |c: &str| std::process::Command::new("sh").arg("-c").arg(c).output().unwrap();
        // A mismatch removes the temporary file, leaves the target and prints the host's hash.
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::write(&path, b"old").unwrap();
        let good = hex::encode(sha2::Sha256::digest(b"new"));
        let out = sh(&verify_command(&tmp, &path, &"0".repeat(64)));
        assert_eq!(out.status.code(), Some(91));
        assert_eq!(parse_sha256sum(&String::from_utf8_lossy(&out.stdout)).as_deref(), Some(good.as_str()));
        assert!(!std::path::Path::new(&tmp).exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        // A match renames it over the target.
        std::fs::write(&tmp, b"new").unwrap();
        let out = sh(&verify_command(&tmp, &path, &good));
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!std::path::Path::new(&tmp).exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // A missing file fails before any rename.
        let out = sh(&verify_command(&tmp, &path, &good));
        assert_eq!(out.status.code(), Some(90));
    }

    #[test]
    fn sha256sum_output_parses_with_and_without_escaping() {
        let h = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let low = h.to_ascii_lowercase();
        assert_eq!(parse_sha256sum(&format!("{low}  /etc/motd\n")).unwrap(), low);
        assert_eq!(parse_sha256sum(&format!("\\{low}  /tmp/a\\nb\n")).unwrap(), low);
        assert_eq!(parse_sha256sum(&format!("{h}  x")).unwrap(), low);
        assert_eq!(parse_sha256sum(""), None);
        assert_eq!(parse_sha256sum("sha256sum: x: No such file or directory"), None);
    }
}
