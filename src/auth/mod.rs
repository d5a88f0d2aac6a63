//! Accounts, API tokens, roles and per-applet run grants (used by `opslet serve`).
//!
//! Tokens look like `opslet_<id>_<secret>`: the id finds the record, and only the SHA-256 of the
//! secret is stored, so a token is shown once, when it is created. Every change is audited.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::store::Store;
use crate::util::{pattern_matches, same_secret as same, validate_name};

/// What a user may do. Each role includes the viewer's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List, show and search applets; read their own jobs.
    Viewer,
    /// Run the applets their grants allow.
    Operator,
    /// Publish, promote, roll back and yank.
    Publisher,
    /// Read the audit log.
    Auditor,
    /// Everything, including accounts, tokens, grants and hooks.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Operator, Role::Publisher, Role::Auditor, Role::Admin];

    /// What the role may do, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Role::Viewer => "list, show and search applets; read their own jobs",
            Role::Operator => "run the applets their grants allow",
            Role::Publisher => "publish, promote, roll back and yank",
            Role::Auditor => "read the audit log",
            Role::Admin => "everything, including accounts, tokens, grants and hooks",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Publisher => "publisher",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// Something a request wants to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    ReadRegistry,
    ReadOwnJobs,
    ReadAllJobs,
    Run(&'a str),
    Publish,
    ReadAudit,
    Admin,
}

impl std::fmt::Display for Action<'_> {
    /// What the caller asked to do, as a refusal names it ("alice (viewer) may not publish").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ReadRegistry => f.write_str("read the registry"),
            Action::ReadOwnJobs => f.write_str("read their own jobs"),
            Action::ReadAllJobs => f.write_str("read all jobs"),
            Action::Run(name) => write!(f, "run `{name}`"),
            Action::Publish => f.write_str("publish"),
            Action::ReadAudit => f.write_str("read the audit log"),
            Action::Admin => f.write_str("administer (accounts, tokens, grants, hooks, secrets, inventory)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub user: String,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    #[serde(default)]
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked: bool,
}

/// "`subject` may run applets matching `pattern`": subject is a user name or `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub subject: String,
    pub pattern: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub groups: Vec<String>,
    pub token_id: String,
}

/// Why a token was not accepted. The message never repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token (send `Authorization: Bearer opslet_...`)")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is unknown or wrong")]
    Unknown,
    #[error("the token was revoked")]
    Revoked,
    #[error("the token expired at {0}")]
    Expired(DateTime<Utc>),
    #[error("the token's user no longer exists")]
    NoUser,
    #[error("wrong user name or password")]
    BadPassword,
    #[error("the session expired or was signed out; sign in again")]
    NoSession,
    #[error("the CSRF token is missing or wrong (send the X-CSRF-Token header the session gave)")]
    Csrf,
}

/// Longest token lifetime (ten years): beyond it, a lifetime is refused rather than overflowing
/// the calendar.
pub const MAX_TOKEN_LIFETIME_DAYS: i64 = 3650;

/// When a token given `lifetime` (like "30d" or "12h") from now expires. The error says what
/// was wrong with it (the caller names where it came from).
pub fn token_expiry(lifetime: &str) -> Result<DateTime<Utc>, String> {
    let d = crate::util::parse_duration(lifetime)?;
    let d = chrono::Duration::from_std(d).ok().filter(|d| *d <= chrono::Duration::days(MAX_TOKEN_LIFETIME_DAYS)).ok_or_else(|| {
        format!("`{lifetime}` is longer than {MAX_TOKEN_LIFETIME_DAYS} days (leave it out for a token that does not expire)")
    })?;
    Utc::now().checked_add_signed(d).ok_or_else(|| format!("`{lifetime}` goes past the calendar"))
}

/// Shortest console password.
pub const MIN_PASSWORD: usize = 10;
/// Longest console password, in bytes (what sign-in takes).
pub const MAX_PASSWORD: usize = 1024;

/// Accounts, tokens and grants in the store.
#[derive(Clone)]
pub struct Auth {
    store: Store,
    users: crate::store::Tree,
    tokens: crate::store::Tree,
    grants: crate::store::Tree,
    passwords: crate::store::Tree,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("auth records serialize")
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Store(format!("{what} record is unreadable: {e}")))
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Error::Internal(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(buf))
}

impl Principal {
    /// Whether this caller may do `action`; `grants` decide which applets an operator runs.
    pub fn allows(&self, action: &Action, grants: &[Grant]) -> bool {
        match (self.role, action) {
            (Role::Admin, _) => true,
            (_, Action::ReadRegistry | Action::ReadOwnJobs) => true,
            (Role::Operator, Action::Run(applet)) => grants.iter().any(|g| {
                let subject_ok =
                    g.subject == self.user || g.subject.strip_prefix("group:").is_some_and(|grp| self.groups.iter().any(|x| x == grp));
                subject_ok && pattern_matches(&g.pattern, applet)
            }),
            (Role::Publisher, Action::Publish) => true,
            (Role::Auditor, Action::ReadAudit | Action::ReadAllJobs) => true,
            _ => false,
        }
    }
}

impl Auth {
    pub fn new(store: Store) -> Result<Auth, Error> {
        Ok(Auth {
            users: store.tree(crate::store::keys::AUTH_USERS),
            tokens: store.tree(crate::store::keys::AUTH_TOKENS),
            grants: store.tree(crate::store::keys::AUTH_GRANTS),
            passwords: store.tree(crate::store::keys::AUTH_PASSWORDS),
            store,
        })
    }

    fn audit(&self, kind: &str, actor: &str, data: serde_json::Value) -> Result<(), Error> {
        self.store.audit().record_change(kind, actor, "auth", None, data)
    }

    pub fn flush(&self) -> Result<(), Error> {
        self.store.flush()
    }

    pub fn add_user(&self, name: &str, role: Role, groups: &[String], actor: &str) -> Result<User, Error> {
        validate_name(name).map_err(|m| Error::Usage(format!("user name {m}")))?;
        for g in groups {
            validate_name(g).map_err(|m| Error::Usage(format!("group name {m}")))?;
        }
        let user = User { name: name.into(), role, groups: groups.to_vec(), created_at: Utc::now() };
        let inserted = self.users.compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(json(&user)))?;
        if !inserted {
            return Err(Error::Usage(format!("user `{name}` already exists")));
        }
        self.audit("auth.user.add", actor, serde_json::json!({ "user": name, "role": role, "groups": groups }))?;
        Ok(user)
    }

    /// Changes a user's role and/or groups (what is `None` stays). Sessions and tokens re-read the
    /// account on every request, so the change applies at once. The last admin keeps the role.
    pub fn update_user(&self, name: &str, role: Option<Role>, groups: Option<&[String]>, actor: &str) -> Result<User, Error> {
        for g in groups.unwrap_or_default() {
            validate_name(g).map_err(|m| Error::Usage(format!("group name {m}")))?;
        }
        loop {
            let before_raw = self.users.get(name.as_bytes())?.ok_or_else(|| Error::NotFound(format!("no user `{name}`")))?;
            let before: User = parse("user", &before_raw)?;
            let mut after = before.clone();
            if let Some(r) = role {
                after.role = r;
            }
            if let Some(g) = groups {
                let mut g = g.to_vec();
                g.dedup();
                after.groups = g;
            }
            if before.role == Role::Admin && after.role != Role::Admin {
                self.keep_an_admin(name, "take the admin role from")?;
            }
            if after == before {
                return Ok(after);
            }
            // Compare-and-swap: a change made meanwhile is read again rather than overwritten.
            if self.users.compare_and_swap(name.as_bytes(), Some(&before_raw[..]), Some(json(&after)))? {
                self.audit(
                    "auth.user.change",
                    actor,
                    serde_json::json!({ "user": name, "role": after.role, "groups": after.groups, "was": { "role": before.role, "groups": before.groups } }),
                )?;
                return Ok(after);
            }
        }
    }

    /// Refuses to `what` `name` when they are the only admin: nobody could then manage accounts.
    fn keep_an_admin(&self, name: &str, what: &str) -> Result<(), Error> {
        let others = self.users()?.into_iter().filter(|u| u.role == Role::Admin && u.name != name).count();
        if others == 0 {
            return Err(Error::Usage(format!("cannot {what} `{name}`: they are the only admin (make another user admin first)")));
        }
        Ok(())
    }

    /// Whether `user` has a console password.
    pub fn has_password(&self, user: &str) -> Result<bool, Error> {
        self.passwords.contains_key(user.as_bytes())
    }

    /// Removes a user and revokes all of their tokens. The last admin stays.
    pub fn remove_user(&self, name: &str, actor: &str) -> Result<usize, Error> {
        if self.user(name)?.is_some_and(|u| u.role == Role::Admin) {
            self.keep_an_admin(name, "remove")?;
        }
        if self.users.remove(name.as_bytes())?.is_none() {
            return Err(Error::NotFound(format!("no user `{name}`")));
        }
        self.passwords.remove(name.as_bytes())?;
        let mut revoked = 0;
        for t in self.tokens(Some(name))? {
            if !t.revoked {
                self.set_revoked(&t.id)?;
                revoked += 1;
            }
        }
        self.audit("auth.user.rm", actor, serde_json::json!({ "user": name, "tokens_revoked": revoked }))?;
        Ok(revoked)
    }

    /// Sets a user's console password (stored as an argon2id hash).
    pub fn set_password(&self, user: &str, password: &str, actor: &str) -> Result<(), Error> {
        use argon2::password_hash::PasswordHasher;
        if self.user(user)?.is_none() {
            return Err(Error::NotFound(format!("no user `{user}`")));
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(Error::Usage(format!("the password is too short: use at least {MIN_PASSWORD} characters")));
        }
        if password.len() > MAX_PASSWORD {
            return Err(Error::Usage(format!("the password is too long: the console takes at most {MAX_PASSWORD} bytes")));
        }
        let hash = argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|e| Error::Internal(format!("hashing the password: {e}")))?
            .to_string();
        let had = self.passwords.insert(user.as_bytes(), hash.as_bytes())?.is_some();
        self.audit(if had { "auth.password.change" } else { "auth.password.set" }, actor, serde_json::json!({ "user": user }))
    }

    /// The principal for `user` if `password` is theirs. Wrong user and wrong password give the
    /// same error, and both cost one hash check.
    pub fn check_password(&self, user: &str, password: &str) -> Result<Principal, AuthError> {
        use argon2::password_hash::PasswordVerifier;
        let stored = self.passwords.get(user.as_bytes()).ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
        // Unknown users are checked against a throwaway hash, so timing does not tell which
        // names exist.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| {
            use argon2::password_hash::PasswordHasher;
            argon2::Argon2::default().hash_password(b"opslet-no-such-user").map(|h| h.to_string()).unwrap_or_default()
        });
        let hash = stored.as_deref().unwrap_or(dummy);
        let ok = argon2::password_hash::phc::PasswordHash::new(hash)
            .map(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        if !ok || stored.is_none() {
            return Err(AuthError::BadPassword);
        }
        self.principal_of(user, "password")
    }

    /// The principal of an existing user (sessions re-read it on every request).
    pub fn principal_of(&self, user: &str, via: &str) -> Result<Principal, AuthError> {
        let u = self.user(user).ok().flatten().ok_or(AuthError::NoUser)?;
        Ok(Principal { user: u.name, role: u.role, groups: u.groups, token_id: via.to_string() })
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, Error> {
        self.users.get(name.as_bytes())?.map(|b| parse("user", &b)).transpose()
    }

    pub fn users(&self) -> Result<Vec<User>, Error> {
        self.users.iter().values().map(|v| parse("user", &v?)).collect()
    }

    /// Creates a token for `user`; returns it in full (the only time it exists outside the
    /// caller's hands) and its record.
    pub fn create_token(&self, user: &str, expires_at: Option<DateTime<Utc>>, label: &str, actor: &str) -> Result<(String, Token), Error> {
        if self.user(user)?.is_none() {
            return Err(Error::NotFound(format!("no user `{user}` (add one with `opslet user add`)")));
        }
        let id = random_hex(4)?;
        let secret = random_hex(32)?;
        let token = Token {
            id: id.clone(),
            user: user.into(),
            hash: secret_hash(&secret),
            label: label.into(),
            created_at: Utc::now(),
            expires_at,
            revoked: false,
        };
        self.tokens.insert(id.as_bytes(), json(&token))?;
        self.audit(
            "auth.token.create",
            actor,
            serde_json::json!({ "user": user, "token_id": id, "expires_at": expires_at, "label": label }),
        )?;
        Ok((format!("opslet_{id}_{secret}"), token))
    }

    fn set_revoked(&self, id: &str) -> Result<Token, Error> {
        let b = self.tokens.get(id.as_bytes())?.ok_or_else(|| Error::NotFound(format!("no token `{id}`")))?;
        let mut t: Token = parse("token", &b)?;
        t.revoked = true;
        self.tokens.insert(id.as_bytes(), json(&t))?;
        Ok(t)
    }

    pub fn revoke_token(&self, id: &str, actor: &str) -> Result<Token, Error> {
        let t = self.set_revoked(id)?;
        self.audit("auth.token.revoke", actor, serde_json::json!({ "user": t.user, "token_id": id }))?;
        Ok(t)
    }

    /// Whether token `id` is still good (exists, not revoked, not expired): sessions started
    /// with a token end with it.
    pub fn token_live(&self, id: &str) -> Result<(), AuthError> {
        let record = self.tokens.get(id.as_bytes()).ok().flatten().ok_or(AuthError::Unknown)?;
        let t: Token = serde_json::from_slice(&record).map_err(|_| AuthError::Unknown)?;
        if t.revoked {
            return Err(AuthError::Revoked);
        }
        match t.expires_at {
            Some(exp) if exp <= Utc::now() => Err(AuthError::Expired(exp)),
            _ => Ok(()),
        }
    }

    /// When token `id` expires, if it does.
    pub fn token_expiry(&self, id: &str) -> Option<DateTime<Utc>> {
        let record = self.tokens.get(id.as_bytes()).ok().flatten()?;
        serde_json::from_slice::<Token>(&record).ok()?.expires_at
    }

    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<Token>, Error> {
        let mut out: Vec<Token> = Vec::new();
        for v in self.tokens.iter().values() {
            let t: Token = parse("token", &v?)?;
            if user.is_none_or(|u| t.user == u) {
                out.push(t);
            }
        }
        out.sort_by_key(|t| t.created_at);
        Ok(out)
    }

    /// Checks `Authorization: Bearer <token>` (pass the header value).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        // The scheme is case-insensitive (RFC 9110): `bearer` and `BEARER` are `Bearer`.
        let (scheme, token) = header.trim_start().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let token = token.trim();
        let rest = token.strip_prefix("opslet_").ok_or(AuthError::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
        if id.len() != 8 || secret.len() != 64 || !id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed);
        }
        let record = self.tokens.get(id.as_bytes()).ok().flatten().ok_or(AuthError::Unknown)?;
        let t: Token = serde_json::from_slice(&record).map_err(|_| AuthError::Unknown)?;
        if !same(&t.hash, &secret_hash(secret)) {
            return Err(AuthError::Unknown);
        }
        if t.revoked {
            return Err(AuthError::Revoked);
        }
        if let Some(exp) = t.expires_at
            && exp <= Utc::now()
        {
            return Err(AuthError::Expired(exp));
        }
        let user = self.user(&t.user).ok().flatten().ok_or(AuthError::NoUser)?;
        Ok(Principal { user: user.name, role: user.role, groups: user.groups, token_id: t.id })
    }

    pub fn add_grant(&self, subject: &str, pattern: &str, actor: &str) -> Result<Grant, Error> {
        let name = subject.strip_prefix("group:").unwrap_or(subject);
        validate_name(name).map_err(|m| Error::Usage(format!("grant subject {m}")))?;
        if pattern.is_empty() || !pattern.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*') {
            return Err(Error::Usage(format!("grant pattern `{pattern}`: use applet-name characters and `*`")));
        }
        let g = Grant { subject: subject.into(), pattern: pattern.into() };
        self.grants.insert(format!("{subject}\0{pattern}").as_bytes(), json(&g))?;
        self.audit("auth.grant.add", actor, serde_json::json!({ "subject": subject, "pattern": pattern }))?;
        Ok(g)
    }

    pub fn remove_grant(&self, subject: &str, pattern: &str, actor: &str) -> Result<(), Error> {
        if self.grants.remove(format!("{subject}\0{pattern}").as_bytes())?.is_none() {
            return Err(Error::NotFound(format!("no grant `{subject}` -> `{pattern}`")));
        }
        self.audit("auth.grant.rm", actor, serde_json::json!({ "subject": subject, "pattern": pattern }))
    }

    pub fn grants(&self) -> Result<Vec<Grant>, Error> {
        self.grants.iter().values().map(|v| parse("grant", &v?)).collect()
    }
}
