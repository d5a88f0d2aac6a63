//! `opslet approvals`, `opslet approve JOB`, `opslet reject JOB`: decisions on risky runs that
//! wait for approval in the server (docs/approvals.md).

use clap::Args;

use super::Global;
use super::output::{Format, terminal_safe};
use super::stdio::outln;
use crate::error::Error;

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The job waiting for approval (its id, as `opslet run` and `opslet approvals` show it).
    pub job: String,
    /// Why: recorded with the decision (required to reject).
    #[arg(short = 'm', long = "message", value_name = "MESSAGE", default_value = "")]
    pub message: String,
}

/// The server's run service: approvals wait there, and an approved run starts there.
fn service(global: &Global) -> Result<&crate::service::RunService, Error> {
    global.server_service().ok_or_else(|| {
        Error::Usage(
            "approvals wait in the server, and `opslet serve` is not running on this data dir (start it, or use --server URL)".into(),
        )
    })
}

pub fn list(global: &Global, args: ListArgs) -> Result<i32, Error> {
    let pending = service(global)?.pending_approvals(&global.actor())?;
    if args.format != Format::Table {
        let all: Vec<_> =
            pending.iter().map(|(job, why)| serde_json::json!({ "job": job, "may_decide": why.is_none(), "why_not": why })).collect();
        outln!("{}", super::output::render(&serde_json::json!(all), args.format).trim_end());
        return Ok(0);
    }
    if pending.is_empty() {
        outln!("no run waits for approval");
        return Ok(0);
    }
    let safe = |s: &str| terminal_safe(s, false).into_owned();
    for (job, why) in &pending {
        let Some(a) = &job.approval else { continue };
        outln!(
            "job {}  {} by {} ({}), asked {}",
            job.id,
            safe(&job.applet),
            safe(&job.user),
            a.via,
            a.requested_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        outln!("  why:       {}", a.reasons().join("; "));
        outln!(
            "  needs:     {} of {} approvals by {}, until {}",
            a.approved(),
            a.needed,
            a.approvers(),
            a.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        if !job.params.is_empty() {
            outln!("  params:    {}", safe(&serde_json::Value::Object(job.params.clone()).to_string()));
        }
        for d in &a.decisions {
            outln!("  {}: {} {}", if d.approve { "approved" } else { "rejected" }, safe(&d.user), safe(&d.message));
        }
        if a.planning {
            outln!("  plan:      being made (a dry run)");
        } else if let Some(e) = &a.plan_error {
            outln!("  plan:      NONE: {}", safe(e));
        } else {
            outln!("  plan:      {} step{}", a.plan.len(), if a.plan.len() == 1 { "" } else { "s" });
            for step in a.plan.iter().take(50) {
                outln!("    {}", safe(&plan_line(step)));
            }
            if a.plan.len() > 50 {
                outln!("    ... {} more (--format json shows them all)", a.plan.len() - 50);
            }
        }
        match why {
            None => outln!("  you may decide: opslet approve {} -m \"why\" | opslet reject {} -m \"why\"", job.id, job.id),
            Some(w) => outln!("  you may not decide: {}", safe(w)),
        }
        outln!("");
    }
    Ok(0)
}

/// One step of a plan: "ipmi power_cycle bmc1 {…}".
pub(super) fn plan_line(step: &serde_json::Value) -> String {
    let mut detail = step["detail"].clone();
    if let Some(o) = detail.as_object_mut() {
        o.remove("planned");
    }
    // A before/after pair (a cmdb record): only the fields that change.
    if let (Some(before), Some(after)) = (detail["before"].as_object(), detail["after"].as_object()) {
        let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        let null = serde_json::Value::Null;
        let changes: Vec<String> = keys
            .into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| format!("{k}: {} -> {}", before.get(k).unwrap_or(&null), after.get(k).unwrap_or(&null)))
            .collect();
        detail = serde_json::Value::String(if changes.is_empty() { "no change".into() } else { changes.join("; ") });
    }
    let detail = match &detail {
        serde_json::Value::Object(o) if o.is_empty() => String::new(),
        serde_json::Value::Null => String::new(),
        d => format!(" {d}"),
    };
    format!(
        "{}.{} {}{detail}",
        step["module"].as_str().unwrap_or("?"),
        step["action"].as_str().unwrap_or("?"),
        step["target"].as_str().unwrap_or("")
    )
}

pub fn decide(global: &Global, args: DecideArgs, approve: bool) -> Result<i32, Error> {
    let job = service(global)?.decide(&args.job, &global.actor(), approve, &args.message)?;
    let a = job.approval.as_ref();
    let (n, needed) = a.map(|a| (a.approved(), a.needed)).unwrap_or_default();
    match (approve, job.status) {
        (false, _) => outln!("job {}: rejected; it will not run", job.id),
        (true, crate::service::JobStatus::AwaitingApproval) => {
            outln!("job {}: approved ({n} of {needed}); it waits for {} more", job.id, needed.saturating_sub(n))
        }
        (true, status) => outln!("job {}: approved ({n} of {needed}); it is {status} (follow it: GET /api/v1/jobs/{})", job.id, job.id),
    }
    Ok(0)
}
