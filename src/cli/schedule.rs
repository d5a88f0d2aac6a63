//! `opslet schedule`: applets run on a cron expression in a time zone, as an owner with that
//! owner's grants (docs/schedules.md). The server fires them; without a running server these
//! commands edit the store, and the fires happen once `opslet serve` runs.

use clap::{Args, Subcommand};

use super::Global;
use super::output::Format;
use super::stdio::{errln, out, outln};
use crate::auth::{Action, Auth};
use crate::error::Error;
use crate::service::schedule::{self, Missed, NewSchedule, Schedule, Schedules};
use crate::store::Store;

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Save a schedule: run APPLET on a cron expression (in --tz), as --owner with their grants.
    Add(AddArgs),
    /// List schedules with their next fire, in their zone and in UTC.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one schedule: its fires, last job, last miss and last refusal.
    Show {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Stop a schedule's fires until it is resumed.
    Pause { name: String },
    /// Fire a paused schedule again, from its next fire after now (no catch-up).
    Resume { name: String },
    /// Delete a schedule.
    Rm { name: String },
    /// Run a schedule's applet now, as its owner (through the running `opslet serve`).
    RunNow { name: String },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The schedule's name.
    pub name: String,
    /// NAME (the current version at each fire), NAME@VERSION or NAME@sha256:PREFIX.
    #[arg(long)]
    pub applet: String,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, e.g.
    /// '0 */6 * * *'.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. Asia/Shanghai [default: UTC].
    #[arg(long)]
    pub tz: Option<String>,
    /// A parameter as NAME=VALUE (repeatable); converted to the param's declared type.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// All parameters as one JSON object; --param values override it.
    #[arg(long, value_name = "JSON")]
    pub params_json: Option<String>,
    /// The account the runs are made as, with its grants at each fire [default: you].
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// What happens to fires missed while no server ran [default: skip].
    #[arg(long, value_parser = super::choice(&Missed::ALL, Missed::name, Missed::describe))]
    pub missed: Option<Missed>,
    /// Save it paused.
    #[arg(long)]
    pub paused: bool,
    /// Replace the schedule of that name (its last fire and job are kept).
    #[arg(long)]
    pub replace: bool,
}

/// The flag a field of a schedule is given with.
fn flag(field: &str) -> String {
    match field.strip_prefix("params.") {
        Some(p) => format!("-p {p}"),
        None if field == "name" => "NAME".into(),
        None => format!("--{field}"),
    }
}

fn via(global: &Global) -> &'static str {
    if global.is_remote() { "remote-cli" } else { "cli" }
}

pub fn run(global: &Global, cmd: ScheduleCmd) -> Result<i32, Error> {
    let store = global.open_store()?;
    let schedules = Schedules::new(store.clone())?;
    let actor = global.actor();
    match cmd {
        ScheduleCmd::Add(a) => {
            let new = new_schedule(a)?;
            let config = global.config()?;
            let local;
            let service = match global.server_service() {
                Some(s) => s,
                None => {
                    local = crate::service::RunService::new(global.runtime(&config, store.clone())?, Default::default())?;
                    &local
                }
            };
            let s = schedules.add(service, new, &actor, via(global)).map_err(|e| match e {
                schedule::ScheduleError::Invalid(fields) => Error::Usage(format!(
                    "invalid schedule:\n{}",
                    fields.iter().map(|f| format!("  {}: {}", flag(&f.param), f.message)).collect::<Vec<_>>().join("\n")
                )),
                other => other.into_error(),
            })?;
            let next = fires(&s);
            errln!("schedule {} saved: {} on `{}` ({}) as {}; next fire {next}", s.name, s.applet, s.cron, s.tz, s.owner);
            if global.server_service().is_none() {
                errln!("no server runs on this data dir: schedules fire while `opslet serve` runs");
            }
        }
        ScheduleCmd::List { format } => {
            let mut list = schedules.list()?;
            if global.is_remote() {
                let p = Auth::new(store.clone())?.principal_of(&actor, "remote-cli").map_err(|e| Error::Denied(e.to_string()))?;
                list.retain(|s| schedule::visible(&p, s));
            }
            match format {
                Format::Table => {
                    let rows = list
                        .iter()
                        .map(|s| {
                            let (local, utc) = next_fire(s);
                            vec![
                                s.name.clone(),
                                s.applet.clone(),
                                s.cron.clone(),
                                s.tz.clone(),
                                s.owner.clone(),
                                local,
                                utc,
                                s.last_fire.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default(),
                                s.last_job.clone().unwrap_or_default(),
                                if s.paused { "paused".into() } else { String::new() },
                                s.missed.name().into(),
                            ]
                        })
                        .collect();
                    if list.is_empty() {
                        errln!("no schedules");
                    } else {
                        out!(
                            "{}",
                            super::output::table(
                                &[
                                    "name",
                                    "applet",
                                    "cron",
                                    "tz",
                                    "owner",
                                    "next fire (zone)",
                                    "next fire (UTC)",
                                    "last fire",
                                    "last job",
                                    "paused",
                                    "missed"
                                ],
                                rows
                            )
                        );
                    }
                }
                f => out!("{}", super::output::render(&serde_json::Value::Array(list.iter().map(Schedule::view).collect()), f)),
            }
        }
        ScheduleCmd::Show { name, format } => {
            let s = schedules.require(&name)?;
            out!("{}", super::output::render(&s.view(), format));
        }
        ScheduleCmd::Pause { name } => {
            schedules.pause(&name, &actor, via(global))?;
            errln!("schedule {name} paused");
        }
        ScheduleCmd::Resume { name } => {
            let s = schedules.resume(&name, &actor, via(global))?;
            errln!("schedule {name} resumed; next fire {}", fires(&s));
        }
        ScheduleCmd::Rm { name } => {
            schedules.remove(&name, &actor, via(global))?;
            errln!("removed schedule {name}");
        }
        ScheduleCmd::RunNow { name } => {
            let Some(service) = global.server_service() else {
                schedules.require(&name)?;
                return Err(Error::Usage(
                    "`schedule run-now` runs in the server: start `opslet serve` on this data dir (or use --server URL), then run it again"
                        .into(),
                ));
            };
            let job = schedules.run_now(service, &name, &actor, via(global)).map_err(crate::service::ServiceError::into_error)?;
            outln!("{job}");
            errln!("schedule {name}: job {job} queued");
        }
    }
    Ok(0)
}

fn new_schedule(a: AddArgs) -> Result<NewSchedule, Error> {
    let params = match &a.params_json {
        None => Default::default(),
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return Err(Error::Usage("--params-json must be a JSON object".into())),
            Err(e) => return Err(Error::Usage(format!("--params-json is not valid JSON: {e}"))),
        },
    };
    let mut pairs = Vec::new();
    for p in &a.params {
        match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => pairs.push((k.trim().to_string(), v.to_string())),
            _ => return Err(Error::Usage(format!("--param `{p}`: expected NAME=VALUE"))),
        }
    }
    Ok(NewSchedule {
        name: a.name,
        applet: a.applet,
        cron: a.cron,
        tz: a.tz,
        params,
        pairs,
        owner: a.owner,
        missed: a.missed.map(|m| m.name().to_string()),
        paused: a.paused,
        replace: a.replace,
    })
}

/// The next fire in the schedule's zone and in UTC (empty while paused).
fn next_fire(s: &Schedule) -> (String, String) {
    let Some(t) = s.next_fire else { return (String::new(), String::new()) };
    let local = schedule::parse_tz(&s.tz).map(|tz| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %:z").to_string()).unwrap_or_default();
    (local, t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn fires(s: &Schedule) -> String {
    match next_fire(s) {
        (l, _) if l.is_empty() => "none (paused)".into(),
        (l, u) => format!("{l} ({u})"),
    }
}

/// What a remote caller (`--server`) must be allowed for `cmd`: listing is open to every
/// account (each sees their own schedules, admins all); a schedule of one's own needs the grant
/// to run its applet, another owner's needs admin. Refusals are audited by `authorize`.
pub(super) fn authorize(
    cmd: &ScheduleCmd,
    user: &str,
    store: &Store,
    authorize: &dyn Fn(Action<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let existing = |name: &str| -> Result<Schedule, Error> { Schedules::new(store.clone())?.require(name) };
    match cmd {
        ScheduleCmd::List { .. } => authorize(Action::ReadRegistry),
        ScheduleCmd::Add(a) => {
            // The names as they are saved (trimmed), so a padded name meets the schedule it replaces.
            let (name, applet) = (a.name.trim(), a.applet.trim());
            let applet = crate::registry::Reference::parse(applet).map(|r| r.name().to_string()).unwrap_or_else(|_| applet.to_string());
            let owner = a.owner.as_deref().map(str::trim).unwrap_or(user);
            authorize(schedule::needed(user, owner, &applet))?;
            if a.replace
                && let Ok(Some(old)) = Schedules::new(store.clone()).and_then(|s| s.get(name))
            {
                authorize(schedule::needed(user, &old.owner, &old.applet_name()))?;
            }
            Ok(())
        }
        ScheduleCmd::Show { name, .. } => {
            let s = existing(name)?;
            authorize(if s.owner == user { Action::ReadRegistry } else { Action::Admin })
        }
        ScheduleCmd::Pause { name } | ScheduleCmd::Resume { name } | ScheduleCmd::Rm { name } | ScheduleCmd::RunNow { name } => {
            let s = existing(name)?;
            let applet = s.applet_name();
            authorize(schedule::needed(user, &s.owner, &applet))
        }
    }
}
