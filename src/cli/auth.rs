//! `opslet user|token|grant`: accounts, API tokens and run grants for `opslet serve`.

use super::stdio::{errln, outln};
use clap::Subcommand;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::Global;
use super::output::Format;
use crate::auth::{Auth, Role};
use crate::error::Error;

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account.
    Add {
        name: String,
        #[arg(long, value_parser = super::choice(&Role::ALL, Role::name, Role::describe))]
        role: Role,
        /// Groups the user belongs to (for grants to `group:NAME`); repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Change an account's role and/or groups; it applies to the user's sessions and tokens at
    /// once. The only admin keeps the admin role.
    Set {
        name: String,
        #[arg(long, value_parser = super::choice(&Role::ALL, Role::name, Role::describe))]
        role: Option<Role>,
        /// The user's groups, replacing the ones they had; repeatable.
        #[arg(long = "group", conflicts_with = "no_groups")]
        groups: Vec<String>,
        /// Take the user out of all groups.
        #[arg(long)]
        no_groups: bool,
    },
    /// Delete an account and revoke its tokens (not the only admin).
    Rm { name: String },
    /// Set the password the user signs in to the web console with, read from stdin (one
    /// trailing newline dropped) or --file; at least 10 characters.
    Passwd {
        name: String,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List accounts.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token for a user and print it (alone, on stdout). It is shown only once.
    Create {
        user: String,
        /// Lifetime, like 30d or 12h (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        /// A note on what the token is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a token by its id (the 8 characters after `opslet_`).
    Revoke { id: String },
    /// List tokens (never their secrets).
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum GrantCmd {
    /// Let a user (or `group:NAME`) run applets whose names match PATTERN (`*` wildcards).
    Add { subject: String, pattern: String },
    /// Remove a grant.
    Rm { subject: String, pattern: String },
    /// List grants.
    List {
        /// Print as a table, JSON or YAML instead of plain lines.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
}

fn auth(global: &Global) -> Result<Auth, Error> {
    Auth::new(global.open_store()?)
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    t
}

pub fn user(global: &Global, cmd: UserCmd) -> Result<i32, Error> {
    let a = auth(global)?;
    match cmd {
        UserCmd::Add { name, role, groups } => {
            a.add_user(&name, role, &groups, &global.actor())?;
            a.flush()?;
            errln!("added {name} ({})", role.name());
        }
        UserCmd::Passwd { name, file } => {
            let raw = match &file {
                Some(f) => std::fs::read_to_string(f).map_err(|e| Error::Usage(format!("--file {}: {e}", f.display())))?,
                None => super::stdio::read_stdin()
                    .map_err(|e| Error::Usage(format!("reading the password from stdin: {e}")))
                    .and_then(|v| String::from_utf8(v).map_err(|_| Error::Usage("the password on stdin is not UTF-8".into())))?,
            };
            let pw = raw.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&raw);
            a.set_password(&name, pw, &global.actor())?;
            a.flush()?;
            errln!("password set for {name}");
        }
        UserCmd::Set { name, role, groups, no_groups } => {
            let groups = (no_groups || !groups.is_empty()).then_some(groups);
            if role.is_none() && groups.is_none() {
                return Err(Error::Usage("nothing to change: give --role, --group or --no-groups".into()));
            }
            let u = a.update_user(&name, role, groups.as_deref(), &global.actor())?;
            a.flush()?;
            errln!(
                "{name} is now {} in {}",
                u.role.name(),
                if u.groups.is_empty() { "no groups".to_string() } else { u.groups.join(", ") }
            );
        }
        UserCmd::Rm { name } => {
            let revoked = a.remove_user(&name, &global.actor())?;
            a.flush()?;
            errln!("removed {name}; revoked {revoked} token(s)");
        }
        UserCmd::List { format } => {
            let users = a.users()?;
            if format != Format::Table {
                outln!("{}", serde_json::to_string_pretty(&users).unwrap_or_default());
            } else {
                let mut t = table();
                t.set_header(vec!["user", "role", "groups", "created"]);
                for u in users {
                    t.add_row(vec![u.name, u.role.name().into(), u.groups.join(", "), u.created_at.format("%Y-%m-%d %H:%M").to_string()]);
                }
                outln!("{t}");
            }
        }
    }
    Ok(0)
}

pub fn token(global: &Global, cmd: TokenCmd) -> Result<i32, Error> {
    let a = auth(global)?;
    match cmd {
        TokenCmd::Create { user, expires, label } => {
            let expires_at = match expires {
                None => None,
                Some(s) => Some(crate::auth::token_expiry(&s).map_err(|e| Error::Usage(format!("--expires: {e}")))?),
            };
            let (secret, t) = a.create_token(&user, expires_at, &label, &global.actor())?;
            a.flush()?;
            outln!("{secret}");
            errln!(
                "token {} for {user} created{}; it is not shown again",
                t.id,
                expires_at.map(|e| format!(", expires {e}")).unwrap_or_default()
            );
        }
        TokenCmd::Revoke { id } => {
            let t = a.revoke_token(&id, &global.actor())?;
            a.flush()?;
            errln!("revoked token {} of {}", t.id, t.user);
        }
        TokenCmd::List { user, format } => {
            let tokens = a.tokens(user.as_deref())?;
            let now = chrono::Utc::now();
            let state = |t: &crate::auth::Token| {
                if t.revoked {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "active"
                }
            };
            if format != Format::Table {
                let rows: Vec<_> = tokens
                    .iter()
                    .map(|t| serde_json::json!({ "id": t.id, "user": t.user, "label": t.label, "created_at": t.created_at, "expires_at": t.expires_at, "state": state(t) }))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
            } else {
                let mut tb = table();
                tb.set_header(vec!["id", "user", "state", "expires", "label"]);
                for t in &tokens {
                    tb.add_row(vec![
                        t.id.clone(),
                        t.user.clone(),
                        state(t).into(),
                        t.expires_at.map(|e| e.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into()),
                        t.label.clone(),
                    ]);
                }
                outln!("{tb}");
            }
        }
    }
    Ok(0)
}

pub fn grant(global: &Global, cmd: GrantCmd) -> Result<i32, Error> {
    let a = auth(global)?;
    match cmd {
        GrantCmd::Add { subject, pattern } => {
            a.add_grant(&subject, &pattern, &global.actor())?;
            a.flush()?;
            errln!("{subject} may run {pattern}");
        }
        GrantCmd::Rm { subject, pattern } => {
            a.remove_grant(&subject, &pattern, &global.actor())?;
            a.flush()?;
            errln!("removed grant {subject} -> {pattern}");
        }
        GrantCmd::List { format: Some(f) } => {
            let v: Vec<serde_json::Value> =
                a.grants()?.iter().map(|g| serde_json::json!({ "subject": g.subject, "pattern": g.pattern })).collect();
            super::stdio::out!("{}", super::output::render(&serde_json::Value::Array(v), f));
        }
        GrantCmd::List { format: None } => {
            for g in a.grants()? {
                outln!("{} -> {}", g.subject, g.pattern);
            }
        }
    }
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum HookCmd {
    /// Create `POST /hooks/NAME` running APPLET; prints its signing secret (alone, once).
    Add {
        name: String,
        /// NAME, NAME@VERSION or NAME@sha256:PREFIX.
        #[arg(long)]
        applet: String,
        /// param=$.json.path (repeatable), e.g. host=$.event.host or value=$.items[0].value.
        #[arg(long = "map")]
        maps: Vec<String>,
    },
    /// Delete a hook.
    Rm { name: String },
    /// List hooks (without their secrets).
    List {
        /// Print as a table, JSON or YAML instead of plain lines.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
}

pub fn hook(global: &Global, cmd: HookCmd) -> Result<i32, Error> {
    let hooks = crate::service::Hooks::new(global.open_store()?)?;
    match cmd {
        HookCmd::Add { name, applet, maps } => {
            let h = hooks.add(&name, &applet, &maps, &global.actor())?;
            outln!("{}", h.secret);
            errln!("hook {name} -> {applet} created: POST /hooks/{name}, signed with the secret above (shown once)");
        }
        HookCmd::Rm { name } => {
            hooks.remove(&name, &global.actor())?;
            errln!("removed hook {name}");
        }
        HookCmd::List { format: Some(f) } => {
            // Never the signing secret.
            let v: Vec<serde_json::Value> = hooks
                .list()?
                .iter()
                .map(|h| serde_json::json!({ "name": h.name, "applet": h.applet, "map": h.map.iter().map(|(p, path)| format!("{p}={path}")).collect::<Vec<_>>(), "created_at": h.created_at }))
                .collect();
            super::stdio::out!("{}", super::output::render(&serde_json::Value::Array(v), f));
        }
        HookCmd::List { format: None } => {
            for h in hooks.list()? {
                let maps: Vec<String> = h.map.iter().map(|(p, path)| format!("{p}={path}")).collect();
                outln!("{} -> {}  {}", h.name, h.applet, maps.join(" "));
            }
        }
    }
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Store a secret: the value comes from --file, or from stdin (one trailing newline is dropped).
    Set {
        name: String,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List secret names (never their values).
    List {
        /// Print as a table, JSON or YAML instead of plain lines.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Delete a secret.
    Rm { name: String },
}

pub fn secret(global: &Global, cmd: SecretCmd) -> Result<i32, Error> {
    let secrets = crate::secrets::Secrets::open(global.open_store()?)?;
    match cmd {
        SecretCmd::Set { name, file } => {
            let mut value = match &file {
                Some(f) => std::fs::read(f).map_err(|e| Error::Usage(format!("--file {}: {e}", f.display())))?,
                None => super::stdio::read_stdin().map_err(|e| Error::Usage(format!("reading the value from stdin: {e}")))?,
            };
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            secrets.set(&name, &value, &global.actor())?;
            errln!("stored secret {name}");
            if value.len() < 4 {
                errln!("note: values shorter than 4 bytes are not redacted from output (they would blank out ordinary text)");
            } else if value.len() < 12 {
                errln!(
                    "note: a value of {} bytes is easy to guess; redaction cannot hide a guessable value from someone who can run applets, so prefer a longer one",
                    value.len()
                );
            }
            reload_server_secrets(global)?;
        }
        SecretCmd::List { format: Some(f) } => {
            let v = serde_json::to_value(secrets.list()?).map_err(|e| Error::Internal(e.to_string()))?;
            super::stdio::out!("{}", super::output::render(&v, f));
        }
        SecretCmd::List { format: None } => {
            for s in secrets.list()? {
                outln!("{}\t{}\t{}", s.name, s.updated_at.format("%Y-%m-%d %H:%M"), s.updated_by);
            }
        }
        SecretCmd::Rm { name } => {
            secrets.remove(&name, &global.actor())?;
            errln!("removed secret {name}");
            reload_server_secrets(global)?;
        }
    }
    Ok(0)
}

/// A running server that ran this command reads its secrets again, so its next runs redact
/// and check the values as they are now.
fn reload_server_secrets(global: &Global) -> Result<(), Error> {
    match global.server_service() {
        Some(service) => service.runtime().reload_secrets(),
        None => Ok(()),
    }
}
