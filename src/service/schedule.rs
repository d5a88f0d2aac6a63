//! Schedules: an applet run on a cron expression in a time zone, as a named owner with that
//! owner's grants (`opslet schedule`, `/api/v1/schedules`, the console's Schedules page).
//!
//! A schedule is kept in the store with its next fire. The server's scheduler ([`Scheduler`],
//! started by `opslet serve`) sleeps until the earliest next fire (woken early by any change),
//! and at a fire first persists it (last fire, next fire, flushed), then submits the run through
//! the run service like every other trigger: one fire is one job, and a restart never fires the
//! same instant twice. Fires that fall while no server runs follow the schedule's `missed`
//! policy at the next start (skip them, or run once to catch up), audited either way.
//!
//! Cron expressions (croner) have 5 fields, or 6 with seconds first; they are evaluated in the
//! schedule's IANA time zone (chrono-tz), always from the exact previous fire, so a daylight
//! saving change neither repeats nor drops a fire beyond what croner documents: a fixed time in
//! a gap fires at the first valid instant after it, a fixed time in an overlap fires once.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Check, RunService, ServiceError, Source, Submission};
use crate::auth::{Action, Auth, Principal, Role};
use crate::error::{Error, ParamError};
use crate::registry::{Reference, Registry};
use crate::runtime::context::Caller;
use crate::store::Store;
use crate::util::validate_name;

/// Most missed fires counted one by one (an every-second schedule down for a year is "at least
/// 10000").
pub const MAX_COUNTED: u64 = 10_000;

/// The longest the scheduler sleeps without looking at the store again.
const LONGEST_SLEEP: Duration = Duration::from_secs(60);

/// Wakes this process's scheduler when a schedule changes (one process holds a data dir).
static WAKE: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

fn wake() {
    WAKE.notify_one();
}

/// What happens to fires that fell while no server ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// Nothing runs for them; the next fire is the next one after the start (audited).
    #[default]
    Skip,
    /// One catch-up run at the start, whatever the number missed (audited, and the job says so).
    Once,
}

impl Missed {
    pub const ALL: [Missed; 2] = [Missed::Skip, Missed::Once];

    pub fn name(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Once => "once",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Missed::Skip => "fires missed while no server ran are skipped (and audited)",
            Missed::Once => "fires missed while no server ran make one catch-up run at the next start",
        }
    }

    pub fn parse(s: &str) -> Option<Missed> {
        Missed::ALL.into_iter().find(|m| m.name() == s.trim())
    }
}

/// Fires that were missed, as the schedule shows the last time it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// When the scheduler noticed (a start, or a fire that came late).
    pub noticed_at: DateTime<Utc>,
    pub count: u64,
    /// The count stopped at [`MAX_COUNTED`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capped: bool,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub policy: Missed,
    /// The catch-up run (`once`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// A schedule as stored and as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// `NAME` (the current version at each fire), `NAME@VERSION` or `NAME@sha256:...`.
    pub applet: String,
    pub cron: String,
    /// IANA time zone the cron expression is read in.
    pub tz: String,
    /// Params as given (typed by the applet's manifest when the schedule was saved).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The account the runs are made as, with its grants at each fire.
    pub owner: String,
    #[serde(default)]
    pub missed: Missed,
    #[serde(default)]
    pub paused: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Who last replaced it (`--replace`), when someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    #[serde(default)]
    pub last_fire: Option<DateTime<Utc>>,
    /// None while paused.
    #[serde(default)]
    pub next_fire: Option<DateTime<Utc>>,
    /// The job of the last fire (or catch-up run, or run-now).
    #[serde(default)]
    pub last_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_miss: Option<Miss>,
    /// Why the last fire made no run (the owner may no longer run the applet, the applet is
    /// gone, the server was full), and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<Refusal>,
    /// A fire persisted whose run was not submitted yet: set only between the two, so a start
    /// that finds it knows the server stopped in between (counted as missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub at: DateTime<Utc>,
    pub why: String,
}

impl Schedule {
    /// The applet's name (without version or hash).
    pub fn applet_name(&self) -> String {
        Reference::parse(&self.applet).map(|r| r.name().to_string()).unwrap_or_else(|_| self.applet.clone())
    }

    /// The schedule as the API and `--format json` show it: with the fires also in its zone
    /// and the cron expression in words.
    pub fn view(&self) -> Value {
        let mut v = json!(self);
        if let Ok(tz) = parse_tz(&self.tz) {
            let local = |t: &Option<DateTime<Utc>>| t.map(|t| t.with_timezone(&tz).to_rfc3339());
            v["next_fire_local"] = json!(local(&self.next_fire));
            v["last_fire_local"] = json!(local(&self.last_fire));
        }
        if let Ok(c) = parse_cron(&self.cron) {
            v["description"] = json!(c.describe());
        }
        v
    }
}

/// A schedule to save, as the CLI and the API give it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub name: String,
    pub applet: String,
    pub cron: String,
    /// Default `UTC`.
    #[serde(default)]
    pub tz: Option<String>,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// `k=v` strings on top of `params` (the CLI's `-p`), typed by the manifest.
    #[serde(skip)]
    pub pairs: Vec<(String, String)>,
    /// Default: whoever saves it.
    #[serde(default)]
    pub owner: Option<String>,
    /// `skip` (default) or `once`.
    #[serde(default)]
    pub missed: Option<String>,
    /// Saved paused.
    #[serde(default)]
    pub paused: bool,
    /// Replace a schedule of that name (its last fire and job are kept).
    #[serde(default)]
    pub replace: bool,
}

/// Why a schedule was not saved: every bad field named (`name`, `applet`, `cron`, `tz`,
/// `owner`, `missed`, `params.NAME`), or an error of the store.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid schedule:\n{}", .0.iter().map(|f| format!("  {}: {}", f.param, f.message)).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ParamError>),
    #[error(transparent)]
    Core(#[from] Error),
}

impl ScheduleError {
    /// The error a CLI reports (a usage error naming each field).
    pub fn into_error(self) -> Error {
        match self {
            ScheduleError::Invalid(_) => Error::Usage(self.to_string()),
            ScheduleError::Core(e) => e,
        }
    }
}

/// Parses a cron expression: 5 fields, or 6 with seconds first.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let expr = expr.trim();
    if expr.is_empty() {
        return Err("empty; give 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first".into());
    }
    CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build().parse(expr).map_err(|e| {
        format!(
            "`{expr}` is not a cron expression ({e}); give 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first"
        )
    })
}

/// Parses an IANA time zone name; a wrongly cased name is answered with the right one.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    let name = name.trim();
    if let Ok(tz) = name.parse::<Tz>() {
        return Ok(tz);
    }
    match chrono_tz::TZ_VARIANTS.iter().find(|tz| tz.name().eq_ignore_ascii_case(name)) {
        Some(tz) => Err(format!("`{name}` is not a time zone; did you mean `{}`? (names are case-sensitive)", tz.name())),
        None => Err(format!("`{name}` is not an IANA time zone name (like UTC, Europe/Berlin, Asia/Shanghai)")),
    }
}

/// A schedule's cron expression in its zone.
#[derive(Clone)]
pub struct When {
    cron: croner::Cron,
    tz: Tz,
}

impl When {
    pub fn new(cron: &str, tz: &str) -> Result<When, String> {
        Ok(When { cron: parse_cron(cron)?, tz: parse_tz(tz)? })
    }

    fn of(s: &Schedule) -> Result<When, Error> {
        When::new(&s.cron, &s.tz).map_err(|m| Error::Store(format!("schedule {}: {m}", s.name)))
    }

    /// The first fire strictly after `t` (None: the expression matches no date any more).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t.with_timezone(&self.tz), false).ok().map(|n| n.with_timezone(&Utc))
    }

    /// The fires from `from` (itself a fire) through `until`: how many (at most [`MAX_COUNTED`],
    /// and whether the count stopped there), the last one. None when `from` is after `until`.
    fn through(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<(u64, bool, DateTime<Utc>)> {
        if from > until {
            return None;
        }
        let (mut count, mut last) = (1, from);
        while let Some(n) = self.next_after(last).filter(|n| *n <= until) {
            if count >= MAX_COUNTED {
                return Some((count, true, last));
            }
            (count, last) = (count + 1, n);
        }
        Some((count, false, last))
    }
}

/// Whether `p` sees schedule `s`: admins see every schedule, others their own.
pub fn visible(p: &Principal, s: &Schedule) -> bool {
    p.role == Role::Admin || p.user == s.owner
}

/// What `user` must be allowed to save, pause, resume, remove or run now a schedule of `owner`
/// running `applet`: to run the applet if it is their own, else to administer.
pub fn needed<'a>(user: &str, owner: &str, applet: &'a str) -> Action<'a> {
    if user == owner { Action::Run(applet) } else { Action::Admin }
}

/// The schedules in the store.
#[derive(Clone)]
pub struct Schedules {
    store: Store,
    tree: crate::store::Tree,
}

fn field(param: &str, message: impl Into<String>) -> ParamError {
    ParamError { param: param.into(), message: message.into() }
}

fn principal(u: crate::auth::User) -> Principal {
    Principal { user: u.name, role: u.role, groups: u.groups, token_id: String::new() }
}

impl Schedules {
    pub fn new(store: Store) -> Result<Schedules, Error> {
        Ok(Schedules { tree: store.tree(crate::store::keys::SCHEDULES), store })
    }

    fn parse(name: &str, bytes: &[u8]) -> Result<Schedule, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Store(format!("schedule {name} is unreadable: {e}")))
    }

    pub fn get(&self, name: &str) -> Result<Option<Schedule>, Error> {
        self.tree.get(name.as_bytes())?.map(|b| Schedules::parse(name, &b)).transpose()
    }

    /// The schedule called `name`, or a not-found error.
    pub fn require(&self, name: &str) -> Result<Schedule, Error> {
        self.get(name)?.ok_or_else(|| Error::NotFound(format!("no schedule `{name}`")))
    }

    pub fn list(&self) -> Result<Vec<Schedule>, Error> {
        self.tree.iter().values().map(|v| Schedules::parse("record", &v?)).collect()
    }

    /// Changes a schedule with `f` (which returns false to leave it as it is), retried until no
    /// other writer came between the read and the write. Returns the schedule as written (None
    /// when there is none, or `f` declined).
    fn update(&self, name: &str, mut f: impl FnMut(&mut Schedule) -> bool) -> Result<Option<Schedule>, Error> {
        loop {
            let Some(old) = self.tree.get(name.as_bytes())? else { return Ok(None) };
            let mut s = Schedules::parse(name, &old)?;
            if !f(&mut s) {
                return Ok(None);
            }
            let new = serde_json::to_vec(&s).expect("schedules serialize");
            if self.tree.compare_and_swap(name.as_bytes(), Some(&old), Some(&new))? {
                return Ok(Some(s));
            }
        }
    }

    fn audit(&self, kind: &str, actor: &str, via: &str, s: &Schedule, mut data: Value) -> Result<(), Error> {
        data["schedule"] = json!(s.name);
        self.store.audit().record_change(kind, actor, via, Some(&s.applet_name()), data)
    }

    /// Checks and saves a schedule (every problem named by its field). `service` checks the
    /// params against the applet's current manifest; `actor` is who saves it.
    pub fn add(&self, service: &RunService, new: NewSchedule, actor: &str, via: &str) -> Result<Schedule, ScheduleError> {
        let now = Utc::now();
        let mut s = self.check(service, &new, actor, now)?;
        let body = serde_json::to_vec(&s).expect("schedules serialize");
        let before = self.get(&s.name)?;
        match (&before, new.replace) {
            (None, _) => {
                if !self.tree.compare_and_swap(s.name.as_bytes(), None as Option<&[u8]>, Some(&body))? {
                    return Err(ScheduleError::Invalid(vec![field("name", format!("a schedule `{}` already exists", s.name))]));
                }
                self.audit("schedule.add", actor, via, &s, json!({ "after": s }))?;
            }
            (Some(_), false) => {
                return Err(ScheduleError::Invalid(vec![field(
                    "name",
                    format!("a schedule `{}` already exists (remove it first, or replace it: --replace, \"replace\": true)", s.name),
                )]));
            }
            (Some(old), true) => {
                (s.created_by, s.created_at, s.last_fire, s.last_job) =
                    (old.created_by.clone(), old.created_at, old.last_fire, old.last_job.clone());
                s.changed_by = Some(actor.to_string());
                let body = serde_json::to_vec(&s).expect("schedules serialize");
                self.tree.insert(s.name.as_bytes(), body)?;
                self.audit("schedule.change", actor, via, &s, json!({ "before": old, "after": s }))?;
            }
        }
        self.store.flush()?;
        wake();
        Ok(s)
    }

    fn check(&self, service: &RunService, new: &NewSchedule, actor: &str, now: DateTime<Utc>) -> Result<Schedule, ScheduleError> {
        let mut errs = Vec::new();
        let name = new.name.trim();
        if let Err(m) = validate_name(name) {
            errs.push(field("name", format!("schedule name {m}")));
        }
        let tz_name = new.tz.as_deref().map(str::trim).filter(|t| !t.is_empty()).unwrap_or("UTC");
        let tz = parse_tz(tz_name).map_err(|m| errs.push(field("tz", m))).ok();
        let cron = parse_cron(&new.cron).map_err(|m| errs.push(field("cron", m))).ok();
        let mut next_fire = None;
        // A bad zone still lets the expression be checked (in UTC) for a fire at all.
        if let Some(cron) = cron {
            let when = When { cron, tz: tz.unwrap_or(Tz::UTC) };
            next_fire = when.next_after(now);
            if next_fire.is_none() {
                errs.push(field("cron", format!("`{}` never fires: no date matches it", new.cron.trim())));
            }
        }
        let missed = match new.missed.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            None => Missed::Skip,
            Some(m) => Missed::parse(m).unwrap_or_else(|| {
                errs.push(field("missed", format!("`{m}` is not `skip` or `once`")));
                Missed::Skip
            }),
        };
        let owner = new.owner.as_deref().map(str::trim).filter(|o| !o.is_empty()).unwrap_or(actor).to_string();
        let reference = Reference::parse(new.applet.trim()).map_err(|e| errs.push(field("applet", e.to_string()))).ok();
        let auth = Auth::new(self.store.clone())?;
        match auth.user(&owner)? {
            None => errs.push(field(
                "owner",
                format!("`{owner}` is not an account: a schedule runs as an account, with its grants (give the owner, or add the account)"),
            )),
            Some(u) => {
                let role = u.role.name();
                if let Some(r) = &reference
                    && !principal(u).allows(&Action::Run(r.name()), &auth.grants()?)
                {
                    errs.push(field(
                        "owner",
                        format!("{owner} ({role}) may not run `{}` (no grant matches): a schedule runs with its owner's grants", r.name()),
                    ));
                }
            }
        }
        let mut params = Map::new();
        if let Some(r) = &reference {
            match Registry::new(self.store.clone())?.resolve(r, false) {
                Err(e @ (Error::NotFound(_) | Error::Yanked { .. })) => errs.push(field("applet", e.to_string())),
                Err(e) => return Err(e.into()),
                Ok(meta) => {
                    let given: Vec<&str> = new.params.keys().map(String::as_str).chain(new.pairs.iter().map(|(k, _)| k.as_str())).collect();
                    let package = Registry::new(self.store.clone())?.package_shared(&meta)?;
                    // A schedule keeps its params in the store: a secret param's value is not kept.
                    for k in &given {
                        if package.manifest.params.get(*k).is_some_and(|p| p.secret)
                            && !errs.iter().any(|e| e.param == format!("params.{k}"))
                        {
                            errs.push(field(
                                &format!("params.{k}"),
                                "a secret param's value is not kept in a schedule (schedules are stored as they are given): \
                                 keep the value in a stored secret (`opslet secret set`) that the applet's modules read by name, \
                                 or leave the param to its default",
                            ));
                        }
                    }
                    let mut sub = Submission::new(Source::Registry(r.clone()), Caller { user: owner.clone(), via: "schedule".into() });
                    sub.params.json = Some(new.params.clone());
                    sub.params.pairs = new.pairs.clone();
                    sub.check = Check::Before;
                    match service.prepare(sub) {
                        Ok(p) => {
                            // The params given, typed by the manifest (`-p` strings become numbers
                            // where the param is one); defaults are left to each fire's version.
                            let validated = p.request.validated.unwrap_or_default();
                            params = validated.into_iter().filter(|(k, _)| given.contains(&k.as_str())).collect();
                        }
                        // Named once per field (a secret one is named above; the run service
                        // redacts secret values from its messages).
                        Err(Error::Params(fs)) => {
                            for f in fs {
                                let param = format!("params.{}", f.param);
                                if !errs.iter().any(|e| e.param == param) {
                                    errs.push(field(&param, f.message));
                                }
                            }
                        }
                        Err(e @ (Error::NotFound(_) | Error::Yanked { .. } | Error::Applet(_))) => {
                            errs.push(field("applet", e.to_string()))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        if !errs.is_empty() {
            return Err(ScheduleError::Invalid(errs));
        }
        Ok(Schedule {
            name: name.to_string(),
            applet: new.applet.trim().to_string(),
            cron: new.cron.trim().to_string(),
            tz: tz_name.to_string(),
            params,
            owner,
            missed,
            paused: new.paused,
            created_by: actor.to_string(),
            changed_by: None,
            created_at: now,
            last_fire: None,
            next_fire: if new.paused { None } else { next_fire },
            last_job: None,
            last_miss: None,
            last_refusal: None,
            firing: None,
        })
    }

    /// Stops a schedule's fires until it is resumed.
    pub fn pause(&self, name: &str, actor: &str, via: &str) -> Result<Schedule, Error> {
        let s = self.require(name)?;
        if s.paused {
            return Ok(s);
        }
        let s = self
            .update(name, |s| {
                (s.paused, s.next_fire) = (true, None);
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("no schedule `{name}`")))?;
        self.audit("schedule.pause", actor, via, &s, json!({}))?;
        self.store.flush()?;
        wake();
        Ok(s)
    }

    /// Fires a paused schedule again, from the next fire after now: fires that fell while it was
    /// paused are not caught up.
    pub fn resume(&self, name: &str, actor: &str, via: &str) -> Result<Schedule, Error> {
        let s = self.require(name)?;
        if !s.paused {
            return Ok(s);
        }
        let when = When::of(&s)?;
        let next = when.next_after(Utc::now());
        let s = self
            .update(name, |s| {
                (s.paused, s.next_fire, s.firing) = (false, next, None);
                true
            })?
            .ok_or_else(|| Error::NotFound(format!("no schedule `{name}`")))?;
        self.audit("schedule.resume", actor, via, &s, json!({ "next_fire": s.next_fire }))?;
        self.store.flush()?;
        wake();
        Ok(s)
    }

    pub fn remove(&self, name: &str, actor: &str, via: &str) -> Result<Schedule, Error> {
        let old = self.tree.remove(name.as_bytes())?.ok_or_else(|| Error::NotFound(format!("no schedule `{name}`")))?;
        let s = Schedules::parse(name, &old)?;
        self.audit("schedule.remove", actor, via, &s, json!({ "before": s }))?;
        self.store.flush()?;
        wake();
        Ok(s)
    }

    /// Runs a schedule's applet now, as its owner (whether or not it is paused); its fires go on
    /// as they were. Returns the job id.
    pub fn run_now(&self, service: &RunService, name: &str, actor: &str, via: &str) -> Result<String, ServiceError> {
        let s = self.require(name)?;
        let note = format!("run now by {actor}");
        let job = Firing { schedules: self, service }.submit(&s, Some(note), Some(actor)).map_err(|refused| match refused {
            Refused::Owner(why) => ServiceError::Core(Error::Denied(why)),
            Refused::Service(e) => e,
        })?;
        self.update(name, |s| {
            s.last_job = Some(job.clone());
            true
        })?;
        self.audit("schedule.run_now", actor, via, &s, json!({ "job": job }))?;
        Ok(job)
    }
}

/// Why a fire made no run.
enum Refused {
    /// The owner is gone or may no longer run the applet.
    Owner(String),
    /// The run service refused it (applet gone, quota, full queue).
    Service(ServiceError),
}

impl Refused {
    fn why(&self) -> String {
        match self {
            Refused::Owner(w) => w.clone(),
            Refused::Service(e) => e.to_string(),
        }
    }
}

struct Firing<'a> {
    schedules: &'a Schedules,
    service: &'a RunService,
}

impl Firing<'_> {
    /// Submits a run of `s` as its owner (checked now, with the owner's grants now); `by` runs it
    /// now. Whoever made, changed or ran the schedule counts as asking for the run: none of
    /// them may approve it.
    fn submit(&self, s: &Schedule, note: Option<String>, by: Option<&str>) -> Result<String, Refused> {
        let auth = Auth::new(self.schedules.store.clone()).map_err(|e| Refused::Service(e.into()))?;
        let name = s.applet_name();
        let user = auth.user(&s.owner).map_err(|e| Refused::Service(e.into()))?;
        let grants = auth.grants().map_err(|e| Refused::Service(e.into()))?;
        match user {
            None => return Err(Refused::Owner(format!("the owner `{}` is no longer an account", s.owner))),
            Some(u) => {
                let role = u.role.name();
                if !principal(u).allows(&Action::Run(&name), &grants) {
                    return Err(Refused::Owner(format!("the owner {} ({role}) may no longer run `{name}` (no grant matches)", s.owner)));
                }
            }
        }
        let reference = Reference::parse(&s.applet).map_err(|e| Refused::Service(e.into()))?;
        let mut sub = Submission::new(Source::Registry(reference), Caller { user: s.owner.clone(), via: "schedule".into() });
        sub.params.json = Some(s.params.clone());
        // Nobody waits for the answer: the run checks the params and records what it found.
        sub.check = Check::InRun;
        let mut prepared = self.service.prepare(sub).map_err(|e| Refused::Service(e.into()))?;
        (prepared.schedule, prepared.note) = (Some(s.name.clone()), note);
        prepared.asked_by = [Some(s.created_by.as_str()), s.changed_by.as_deref(), by].into_iter().flatten().map(str::to_string).collect();
        self.service.submit(prepared, true).map(|a| a.job_id).map_err(Refused::Service)
    }
}

/// The server's scheduler: fires schedules on time, and at its start applies the missed-run
/// policies. Only the process holding the data dir runs one, so with workers a fire is still
/// one job, published once.
#[derive(Clone)]
pub struct Scheduler {
    schedules: Schedules,
    service: RunService,
}

impl Scheduler {
    pub fn new(service: &RunService) -> Result<Scheduler, Error> {
        let store = service.runtime().store().cloned().ok_or_else(|| Error::Internal("the scheduler needs a store".into()))?;
        Ok(Scheduler { schedules: Schedules::new(store)?, service: service.clone() })
    }

    /// Catches up, then fires schedules until the task is dropped (the server stops).
    pub async fn run(self) {
        let me = self.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.catch_up(Utc::now())).await {
            tracing::warn!(error = %e, "schedules: applying the missed-run policies");
        }
        loop {
            let me = self.clone();
            let next = match tokio::task::spawn_blocking(move || me.fire_due(Utc::now())).await {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "schedules: firing");
                    Some(Utc::now() + chrono::Duration::seconds(1))
                }
                Err(_) => None,
            };
            let wait = next.map_or(LONGEST_SLEEP, |t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO)).min(LONGEST_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = WAKE.notified() => {}
            }
        }
    }

    fn firing(&self) -> Firing<'_> {
        Firing { schedules: &self.schedules, service: &self.service }
    }

    /// Fires every schedule due by `now`; returns the earliest next fire.
    pub fn fire_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Error> {
        let mut earliest: Option<DateTime<Utc>> = None;
        for s in self.schedules.list()? {
            let (false, Some(due)) = (s.paused, s.next_fire) else { continue };
            let next = if due <= now {
                match self.fire(&s, due, now) {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(schedule = %s.name, error = %e, "schedule fire");
                        None
                    }
                }
            } else {
                Some(due)
            };
            earliest = match (earliest, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest)
    }

    /// Fires `s`, due at `due`: the fire is persisted (and flushed) before its run is submitted.
    /// When the scheduler comes late for more than one fire (the machine slept, the clock
    /// jumped), the latest fire runs and the earlier ones are recorded as missed.
    fn fire(&self, s: &Schedule, due: DateTime<Utc>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Error> {
        let when = When::of(s)?;
        let (count, capped, at) = when.through(due, now).unwrap_or((1, false, due));
        let next = when.next_after(at);
        let claimed = self.schedules.update(&s.name, |cur| {
            if cur.paused || cur.next_fire != Some(due) {
                return false;
            }
            (cur.last_fire, cur.next_fire, cur.firing) = (Some(at), next, Some(at));
            if count > 1 {
                let last = when.through(due, at - chrono::Duration::milliseconds(1)).map_or(due, |(_, _, l)| l);
                cur.last_miss = Some(Miss { noticed_at: now, count: count - 1, capped, first: due, last, policy: cur.missed, job: None });
            }
            true
        })?;
        let Some(cur) = claimed else { return Ok(self.schedules.get(&s.name)?.and_then(|s| s.next_fire)) };
        self.schedules.store.flush()?;
        if let Some(m) = &cur.last_miss
            && count > 1
        {
            let data =
                json!({ "count": m.count, "capped": m.capped, "first": m.first, "last": m.last, "policy": "late", "while": "running" });
            self.schedules.audit("schedule.missed", &cur.owner, "schedule", &cur, data)?;
        }
        self.finish(&cur, at, None, true)?;
        Ok(next)
    }

    /// Submits the run of a persisted fire (or a catch-up run, whose `schedule.missed` record
    /// names the job) and records what came of it.
    fn finish(&self, s: &Schedule, at: DateTime<Utc>, note: Option<String>, record: bool) -> Result<Option<String>, Error> {
        let result = self.firing().submit(s, note, None);
        let now = Utc::now();
        self.schedules.update(&s.name, |cur| {
            cur.firing = None;
            match &result {
                Ok(job) => cur.last_job = Some(job.clone()),
                Err(r) => cur.last_refusal = Some(Refusal { at: now, why: r.why() }),
            }
            true
        })?;
        match result {
            Ok(job) => {
                tracing::info!(schedule = %s.name, job = %job, fire = %at, "schedule fired");
                if record {
                    self.schedules.audit("schedule.fire", &s.owner, "schedule", s, json!({ "fire": at, "job": job }))?;
                }
                Ok(Some(job))
            }
            Err(r) => {
                let why = r.why();
                tracing::warn!(schedule = %s.name, fire = %at, why = %why, "schedule fire refused");
                self.schedules.audit("schedule.refused", &s.owner, "schedule", s, json!({ "fire": at, "why": why }))?;
                Ok(None)
            }
        }
    }

    /// At the start: each running schedule whose next fire has passed (or whose last fire was
    /// persisted but never submitted) missed those fires while no server ran; its policy says
    /// what happens, and the audit log and the schedule say so.
    pub fn catch_up(&self, now: DateTime<Utc>) -> Result<(), Error> {
        for s in self.schedules.list()? {
            if s.paused {
                continue;
            }
            let when = match When::of(&s) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(schedule = %s.name, error = %e, "schedule");
                    continue;
                }
            };
            let mut missed: Option<(u64, bool, DateTime<Utc>, DateTime<Utc>)> = s.firing.map(|f| (1, false, f, f));
            if let Some((n, capped, last)) = s.next_fire.and_then(|due| when.through(due, now)) {
                let due = s.next_fire.expect("checked above");
                missed = Some(match missed {
                    Some((m, _, first, _)) => (m + n, capped, first, last),
                    None => (n, capped, due, last),
                });
            }
            let next = when.next_after(now);
            let Some((count, capped, first, last)) = missed else {
                if s.next_fire.is_none() {
                    self.schedules.update(&s.name, |cur| {
                        cur.next_fire = next;
                        !cur.paused
                    })?;
                }
                continue;
            };
            let miss = Miss { noticed_at: now, count, capped, first, last, policy: s.missed, job: None };
            let claimed = self.schedules.update(&s.name, |cur| {
                if cur.paused || cur.next_fire != s.next_fire {
                    return false;
                }
                (cur.next_fire, cur.firing, cur.last_miss) = (next, None, Some(miss.clone()));
                true
            })?;
            let Some(cur) = claimed else { continue };
            self.schedules.store.flush()?;
            let fires = if count == 1 { "1 fire".to_string() } else { format!("{}{count} fires", if capped { "at least " } else { "" }) };
            let mut data =
                json!({ "count": count, "capped": capped, "first": first, "last": last, "policy": s.missed.name(), "while": "down" });
            match s.missed {
                Missed::Skip => {
                    tracing::info!(schedule = %s.name, missed = count, "schedule: fires missed while the server was down are skipped");
                }
                Missed::Once => {
                    let note = format!(
                        "catch-up run: {fires} missed while the server was down, first {}",
                        first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                    if let Some(job) = self.finish(&cur, now, Some(note), false)? {
                        data["job"] = json!(job);
                        self.schedules.update(&s.name, |cur| {
                            if let Some(m) = &mut cur.last_miss {
                                m.job = Some(job.clone());
                            }
                            true
                        })?;
                    }
                }
            }
            self.schedules.audit("schedule.missed", &cur.owner, "schedule", &cur, data)?;
        }
        self.schedules.store.flush()
    }
}
