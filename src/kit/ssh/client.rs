//! A plain SSH client over russh: connect (directly or through a jump host), verify the host
//! key against the pin, log in, run a command, move files over SFTP. Nothing here knows Lua.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    pub async fn close(&self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }
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
    use super::shell_quote;

    #[test]
    fn quoting_survives_quotes_and_metacharacters() {
        assert_eq!(shell_quote("nginx"), "nginx");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's; rm -rf /"), r"'it'\''s; rm -rf /'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
    }
}
