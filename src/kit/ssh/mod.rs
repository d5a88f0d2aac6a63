//! SSH for the modules that reach hosts with it (ssh, config, netdev): a plain russh client
//! (`client`), the run's connections to cmdb hosts with their logins and jump hosts
//! ([`Connections`]), host keys checked against the cmdb's pins, refused ones audited and
//! first-contact ones pinned in one place ([`connect_pinned`]), and [`Access`] for a module that
//! runs its own commands.

pub mod client;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

use crate::cmdb::{Cmdb, Host, Snapshot};
use crate::kit::read_secret;
use crate::kit::targets::Targets;
use crate::runtime::context::RunCtx;
use client::{Auth, ConnectError, Session, Target};
pub use settings::{FirstContact, SshSettings};

/// One run's SSH connections to cmdb hosts: logins from `[[ssh.credentials]]` and secrets
/// (read once per entry), host keys checked against the cmdb's pins, jump hosts, one session
/// per host reused by every call of the run.
pub struct Connections {
    pub settings: Arc<SshSettings>,
    pub ctx: Arc<RunCtx>,
    /// The cmdb as the run started and the hosts the permission's `hosts` pick.
    pub reach: Targets,
    /// Per host name, the index of its `[[ssh.credentials]]` entry.
    cred_of: HashMap<String, usize>,
    /// Logins by credentials entry, read from secrets on first use.
    auths: crate::kit::targets::PerEntry<Auth>,
    /// Open sessions by host name (one connect per host, even under concurrent calls).
    sessions: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Session>>>>>,
}

impl Connections {
    /// The connections of one run to the hosts the selectors `hosts` pick (the `hosts` of an
    /// `ssh` or `config` permission).
    pub fn new(settings: Arc<SshSettings>, ctx: Arc<RunCtx>, hosts: Vec<String>) -> Connections {
        let reach = Targets::new(&ctx, "ssh", "hosts", hosts);
        let cred_of = reach.first_match(settings.credentials.iter().map(|c| c.hosts.as_str()));
        Connections { settings, ctx, reach, cred_of, auths: Default::default(), sessions: Mutex::default() }
    }

    /// The login of credentials entry `i`, read from secrets once per run.
    fn auth(&self, i: usize) -> Result<Auth, String> {
        let cred = &self.settings.credentials[i];
        self.auths.get(i, || {
            let owner = format!("[[ssh.credentials]] for {}", cred.hosts);
            login_from_secrets(
                &self.ctx,
                &owner,
                cred.key_secret.as_deref(),
                cred.key_passphrase_secret.as_deref(),
                cred.password_secret.as_deref(),
            )
        })
    }

    /// The login for `host` from the first matching `[[ssh.credentials]]`: user, key or
    /// password, and the jump host.
    fn login(&self, host: &Host) -> Result<(String, Auth, Option<String>), String> {
        let i = *self.cred_of.get(&host.name).ok_or_else(|| {
            format!(
                "no [[ssh.credentials]] entry picks host {} (add one whose hosts selector matches it, e.g. hosts = \"group:...\")",
                host.name
            )
        })?;
        let cred = &self.settings.credentials[i];
        Ok((cred.user.clone(), self.auth(i)?, cred.jump.clone()))
    }

    /// The open session to `host`, connecting (and pinning on first contact) when needed.
    pub async fn session(self: &Arc<Self>, host: &Host, hops: u8) -> Result<Arc<Session>, String> {
        let cell = {
            let mut map = self.sessions.lock();
            let cell = map.entry(host.name.clone()).or_default();
            if cell.get().is_some_and(|s| s.is_closed()) {
                *cell = Arc::default();
            }
            Arc::clone(cell)
        };
        let me = Arc::clone(self);
        let host = host.clone();
        cell.get_or_try_init(|| async move { me.connect(&host, hops).await.map(Arc::new) }).await.cloned()
    }

    async fn connect(self: &Arc<Self>, host: &Host, hops: u8) -> Result<Session, String> {
        let (user, auth, jump) = self.login(host)?;
        let via = match jump {
            None => None,
            Some(j) if j == host.name => {
                return Err(format!("{} would be its own jump host: give its [[ssh.credentials]] entry no `jump`", host.name));
            }
            Some(_) if hops > 0 => {
                return Err(format!("{} is a jump host that needs a jump host itself; opslet goes through one jump host only", host.name));
            }
            Some(j) => {
                let snap = self.reach.snapshot.as_ref().map_err(Clone::clone)?;
                let jh = snap.host(&j).cloned().ok_or_else(|| format!("jump host `{j}` (for {}) is not in the cmdb", host.name))?;
                let s = Box::pin(self.session(&jh, hops + 1)).await.map_err(|m| format!("jump host {j}: {m}"))?;
                Some(s)
            }
        };
        let first = self.settings.first_contact;
        connect_pinned(&self.ctx, "ssh", host, &user, auth, first, via, self.settings.connect_timeout).await
    }
}

/// Connects to a cmdb host and logs in: its key is checked against the cmdb's pin (a refused
/// key is audited), and a first-contact key is pinned when `first_contact` allows trusting it.
#[allow(clippy::too_many_arguments)]
pub async fn connect_pinned(
    ctx: &RunCtx,
    module: &str,
    host: &Host,
    user: &str,
    auth: Auth,
    first_contact: FirstContact,
    via: Option<Arc<Session>>,
    timeout: Duration,
) -> Result<Session, String> {
    let pinned = match &host.host_key {
        Some(k) => Some(
            russh::keys::PublicKey::from_openssh(k.trim())
                .map_err(|e| format!("the pinned host key of {} is unreadable: {e}", host.name))?,
        ),
        None => None,
    };
    let target = Target {
        name: host.name.clone(),
        address: host.address.clone(),
        port: host.port,
        user: user.to_string(),
        auth,
        pinned,
        accept_new: first_contact == FirstContact::AcceptAndPin,
    };
    match Session::connect(&target, via, timeout).await {
        Ok(s) => {
            if host.host_key.is_none()
                && let Some(k) = &s.host_key
            {
                pin_host_key(ctx, module, host, k);
            }
            Ok(s)
        }
        Err(e) => {
            record_refusal(ctx, module, &host.name, &e);
            Err(e.to_string())
        }
    }
}

/// Reads a login from secrets: a private key (with its passphrase) or a password. `owner` names
/// the config entry in messages.
pub fn login_from_secrets(
    ctx: &RunCtx,
    owner: &str,
    key_secret: Option<&str>,
    passphrase_secret: Option<&str>,
    password_secret: Option<&str>,
) -> Result<Auth, String> {
    match (key_secret, password_secret) {
        (Some(k), _) => {
            let pass = passphrase_secret.map(|p| read_secret(ctx, owner, p)).transpose()?;
            let key = client::parse_private_key(&read_secret(ctx, owner, k)?, pass.as_deref()).map_err(|m| format!("secret `{k}`: {m}"))?;
            Ok(Auth::Key(Arc::new(key)))
        }
        (None, Some(p)) => Ok(Auth::Password(read_secret(ctx, owner, p)?)),
        (None, None) => Err(format!("{owner}: no password_secret or key_secret")),
    }
}

/// Records a refused host key (changed, or not pinned) as an action of the run.
fn record_refusal(ctx: &RunCtx, module: &str, host: &str, e: &ConnectError) {
    let detail = match e {
        ConnectError::KeyChanged { pinned, offered, offered_key } => {
            json!({ "reason": "changed", "pinned": pinned, "offered": offered, "offered_key": offered_key })
        }
        ConnectError::KeyUnknown { offered, offered_key } => {
            json!({ "reason": "not pinned", "offered": offered, "offered_key": offered_key })
        }
        _ => return,
    };
    let _ = ctx.record_action(module, "hostkey.refused", host, false, detail);
}

/// Pins a first-contact key in the cmdb (audited there and as an action of this run), only if
/// the host still has the address that was reached and no pin of its own by now.
fn pin_host_key(ctx: &RunCtx, module: &str, host: &Host, key: &russh::keys::PublicKey) {
    let line = client::openssh_line(key);
    let cmdb = ctx.store.clone().map(Cmdb::new);
    let pinned = cmdb.and_then(Result::ok).and_then(|c| {
        let h = c.host(&host.name).ok().flatten()?;
        if h.address != host.address || h.port != host.port || h.host_key.is_some() {
            return None;
        }
        Some(c.put(Host { host_key: Some(line.clone()), ..h }, &ctx.caller.user))
    });
    let ok = matches!(pinned, Some(Ok(_)));
    let _ = ctx.record_action(module, "hostkey.pin", &host.name, ok, json!({ "key": line, "fingerprint": client::fingerprint(key) }));
}

/// SSH to cmdb hosts for a module that runs its own commands (config items): the same logins,
/// host-key pins, jump hosts, connection reuse and I/O threads as `ssh.*`, limited to the hosts
/// `hosts` selects. The caller decides what runs and audits it.
pub struct Access {
    state: Arc<Connections>,
}

impl Access {
    pub fn new(settings: Arc<SshSettings>, ctx: Arc<RunCtx>, hosts: Vec<String>) -> Access {
        Access { state: Arc::new(Connections::new(settings, ctx, hosts)) }
    }

    /// The cmdb as the run started.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, String> {
        self.state.reach.snapshot.clone()
    }

    /// Whether the scope given to [`Access::new`] picks `host`.
    pub fn allows(&self, host: &str) -> bool {
        self.state.reach.allows(host)
    }

    pub fn settings(&self) -> &SshSettings {
        &self.state.settings
    }

    /// Runs `command` on `host` (connecting on first use), `stdin` sent and closed, all within
    /// `timeout`; on opslet's I/O threads.
    pub async fn exec(&self, host: &Host, command: String, stdin: Option<bytes::Bytes>, timeout: Duration) -> Result<client::Exec, String> {
        let state = Arc::clone(&self.state);
        let host = host.clone();
        let max = state.settings.max_output as usize;
        let work = async move {
            let s = state.session(&host, 0).await?;
            let budget = client::Budget::new(state.ctx.guard.limits.memory);
            s.exec(&command, stdin, max, &budget).await
        };
        crate::kit::io::on_io(async move {
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {}", humantime::format_duration(timeout))))
        })
        .await?
    }
}
