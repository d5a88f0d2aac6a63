//! Approvals: four eyes before a risky run.
//!
//! opslet.toml's `[[approvals.rule]]` say which permissions make a run risky (`ipmi` power,
//! `netdev` config, `ssh` with sudo, a `config` publish to `env = prod`), how many approvals it
//! needs and who may give them. A risky run from any trigger becomes a job `awaiting_approval`;
//! the run service makes its plan (a dry run of the same package and params: every module call
//! it would make, per host), approvers see the plan and approve or reject, and once approved the
//! job runs exactly the package hash and params that were approved. Requests expire.
//!
//! This file holds the policy (what is risky, who may decide), the record a job carries, and
//! the flow, as methods of the run service: `submit` holds a risky run (`hold`), the plan
//! settles it (`settle`), `decide` records approvals and rejections and starts the approved run
//! (`release`), and `expire_approvals` ends requests whose time is up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Accepted, Dispatch, Job, JobStatus, Prepared, RunService, ServiceError, Slots, pool};
use crate::applet::Manifest;
use crate::auth::{Action, Principal, Role, User};
use crate::config::ApprovalsConfig;
use crate::error::Error;
use crate::runtime::{CancelToken, Origin, RunRequest, RunStatus};

/// The default time a request waits for its approvals.
pub const DEFAULT_EXPIRE: Duration = Duration::from_secs(24 * 3600);

/// The approval rules of opslet.toml, checked.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub expire: Duration,
    pub rules: Vec<Rule>,
}

/// One `[[approvals.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub module: String,
    pub actions: Vec<String>,
    pub env: Vec<String>,
    pub approvals: usize,
    #[serde(flatten)]
    pub approvers: Approvers,
}

/// Who may approve for a rule: any user with one of `roles`, in one of `groups`, or named in
/// `users` (all empty: admins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvers {
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
}

impl Approvers {
    pub fn allows(&self, user: &User) -> bool {
        if self.roles.is_empty() && self.groups.is_empty() && self.users.is_empty() {
            return user.role == Role::Admin;
        }
        self.roles.contains(&user.role) || self.groups.iter().any(|g| user.groups.contains(g)) || self.users.contains(&user.name)
    }

    /// "role admin, group sre or user carol".
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.roles.iter().map(|r| format!("role {}", r.name())));
        parts.extend(self.groups.iter().map(|g| format!("group {g}")));
        parts.extend(self.users.iter().map(|u| format!("user {u}")));
        match parts.len() {
            0 => "role admin".into(),
            1 => parts.remove(0),
            _ => {
                let last = parts.pop().expect("two or more");
                format!("{} or {last}", parts.join(", "))
            }
        }
    }
}

impl Rule {
    /// Whether a grant of the rule's module (its scope as JSON) makes a run risky.
    fn matches(&self, scope: &Value) -> bool {
        if self.actions.is_empty() {
            return true;
        }
        let listed = |l: &Value, a: &str| l.as_array().is_some_and(|l| l.iter().filter_map(Value::as_str).any(|x| x == a || x == "*"));
        let granted = |a: &str| -> bool {
            match scope {
                Value::Bool(b) => *b,
                Value::String(s) => s == a || s == "*",
                Value::Array(_) => listed(scope, a),
                Value::Object(t) => t.get(a).and_then(Value::as_bool).unwrap_or(false) || t.get("actions").is_some_and(|l| listed(l, a)),
                _ => false,
            }
        };
        self.actions.iter().any(|a| granted(a))
    }

    /// Why a run is risky by this rule: "ipmi power (rule bmc-power)".
    pub fn why(&self) -> String {
        let what = if self.actions.is_empty() {
            format!("{} (any use)", self.module)
        } else {
            format!("{} {}", self.module, self.actions.join("/"))
        };
        let env = if self.env.is_empty() { String::new() } else { format!(" to env {}", self.env.join("/")) };
        format!("{what}{env} (rule {})", self.name)
    }

    /// Whether a plan (a dry run's actions) shows what the rule's `env` condition asks for.
    pub fn planned_in(&self, plan: &[Value]) -> bool {
        plan.iter().any(|step| {
            step["module"].as_str() == Some(self.module.as_str())
                && step["detail"]["env"].as_str().is_some_and(|e| self.env.iter().any(|x| x == e))
        })
    }
}

impl Policy {
    /// The policy of opslet.toml (its modules: every one opslet knows, built in or not).
    pub fn of(config: &crate::config::Config) -> Result<Policy, Error> {
        let modules: Vec<&str> = crate::modules::BUILTIN.iter().map(|b| b.name).collect();
        Policy::from_config(&config.approvals, &modules)
    }

    /// Checks `[approvals]`: every mistake is named with its rule.
    pub fn from_config(cfg: &ApprovalsConfig, modules: &[&str]) -> Result<Policy, Error> {
        let bad = |m: String| Error::Config(format!("invalid config: {m}"));
        let expire = match &cfg.expire {
            None => DEFAULT_EXPIRE,
            Some(s) => crate::util::parse_duration(s).map_err(|m| bad(format!("approvals.expire: {m}")))?,
        };
        if expire.is_zero() {
            return Err(bad("approvals.expire: must be more than 0s".into()));
        }
        let mut rules = Vec::new();
        for (i, r) in cfg.rule.iter().enumerate() {
            let at = |key: &str| format!("approvals.rule[{}]{}", i + 1, if key.is_empty() { String::new() } else { format!(".{key}") });
            if !modules.contains(&r.module.as_str()) {
                return Err(bad(format!("{}: unknown module `{}` (known: {})", at("module"), r.module, modules.join(", "))));
            }
            let approvals = r.approvals.unwrap_or(1);
            if !(1..=10).contains(&approvals) {
                return Err(bad(format!("{}: must be between 1 and 10", at("approvals"))));
            }
            let mut roles = Vec::new();
            for role in &r.roles {
                match Role::ALL.into_iter().find(|x| x.name() == role) {
                    Some(x) => roles.push(x),
                    None => {
                        let known: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
                        return Err(bad(format!("{}: unknown role `{role}` (known: {})", at("roles"), known.join(", "))));
                    }
                }
            }
            if let Some(a) = r.actions.iter().find(|a| a.trim().is_empty()) {
                return Err(bad(format!("{}: `{a}` is empty", at("actions"))));
            }
            if !r.env.is_empty() && r.module != "config" {
                return Err(bad(format!(
                    "{}: only `config` rules can name environments (the config module plans its publishes per env)",
                    at("env")
                )));
            }
            let name = match &r.name {
                Some(n) => {
                    crate::util::validate_name(n).map_err(|m| bad(format!("{}: `{n}` {m}", at("name"))))?;
                    n.clone()
                }
                None if r.actions.is_empty() => r.module.clone(),
                None => format!("{}-{}", r.module, r.actions.join("-")),
            };
            if rules.iter().any(|x: &Rule| x.name == name) {
                return Err(bad(format!("{}: a rule named `{name}` is there already (give each rule its own name)", at("name"))));
            }
            rules.push(Rule {
                name,
                module: r.module.clone(),
                actions: r.actions.clone(),
                env: r.env.clone(),
                approvals,
                approvers: Approvers { roles, groups: r.groups.clone(), users: r.users.clone() },
            });
        }
        Ok(Policy { expire, rules })
    }

    /// The rules a run of this applet may fall under, before its plan is known (a rule with an
    /// `env` condition is decided by the dry run).
    pub fn risks(&self, manifest: &Manifest) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| manifest.permissions.get(&r.module).is_some_and(|s| r.matches(&serde_json::to_value(s).unwrap_or(Value::Null))))
            .collect()
    }

    /// Like [`Policy::risks`], for a published version's permissions.
    pub fn risks_of(&self, permissions: &indexmap::IndexMap<String, Value>) -> Vec<&Rule> {
        self.rules.iter().filter(|r| permissions.get(&r.module).is_some_and(|s| r.matches(s))).collect()
    }

    /// What `opslet show` and the API say of an applet: whether its runs wait for approval,
    /// and why.
    pub fn explain(&self, permissions: &indexmap::IndexMap<String, Value>) -> Value {
        let risks = self.risks_of(permissions);
        let rules: Vec<Value> = risks
            .iter()
            .map(|r| {
                serde_json::json!({
                    "rule": r.name,
                    "why": r.why(),
                    "approvals": r.approvals,
                    "approvers": r.approvers.describe(),
                    "when": if r.env.is_empty() { "always".to_string() } else { format!("when its dry run publishes to env {}", r.env.join("/")) },
                })
            })
            .collect();
        serde_json::json!({ "required": !risks.is_empty(), "rules": rules })
    }
}

/// A decision on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub user: String,
    pub approve: bool,
    #[serde(default)]
    pub message: String,
    pub at: DateTime<Utc>,
}

/// What a job awaiting approval carries (and keeps once decided).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// The rules the run falls under (their approvers as they were when it was asked for).
    pub rules: Vec<Rule>,
    /// Approvals needed: the most any of its rules asks.
    pub needed: usize,
    /// How the run was asked for (`http`, `cli`, `hook`, `schedule`), to run it the same way.
    pub via: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The dry run is still making the plan: no decision yet.
    #[serde(default)]
    pub planning: bool,
    /// Each module call the run would make, per host (the dry run's actions).
    #[serde(default)]
    pub plan: Vec<Value>,
    /// Why there is no plan (the dry run failed): the request says so and waits all the same.
    #[serde(default)]
    pub plan_error: Option<String>,
    /// The dry run's own run id (its record in the audit log).
    #[serde(default)]
    pub plan_run: Option<String>,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    /// Accounts besides the requester that asked for the run (who made, changed or ran its
    /// schedule): they may not approve it either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub asked_by: Vec<String>,
    /// Environments the run may not publish to: those of `env` rules its plan did not meet, so
    /// nobody approved a publish there (the run is refused one that its plan did not show).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unapproved_envs: Vec<String>,
}

impl Approval {
    pub fn new(rules: Vec<Rule>, via: &str, expire: Duration) -> Approval {
        let now = Utc::now();
        Approval {
            needed: rules.iter().map(|r| r.approvals).max().unwrap_or(1),
            rules,
            via: via.to_string(),
            requested_at: now,
            expires_at: now + chrono::Duration::from_std(expire).unwrap_or(chrono::Duration::days(1)),
            planning: true,
            plan: Vec::new(),
            plan_error: None,
            plan_run: None,
            decisions: Vec::new(),
            asked_by: Vec::new(),
            unapproved_envs: Vec::new(),
        }
    }

    /// Why the run waits, one line per rule.
    pub fn reasons(&self) -> Vec<String> {
        self.rules.iter().map(Rule::why).collect()
    }

    pub fn approved(&self) -> usize {
        self.decisions.iter().filter(|d| d.approve).count()
    }

    /// Who may decide, in words: "role admin or group sre" (every rule's, when several apply).
    pub fn approvers(&self) -> String {
        let mut seen: Vec<String> = self.rules.iter().map(|r| r.approvers.describe()).collect();
        seen.dedup();
        seen.join("; and ")
    }

    /// Whether `user` is an approver of every rule the run falls under (a run left with no rules
    /// has no approvers).
    pub fn approver(&self, user: &User) -> bool {
        !self.rules.is_empty() && self.rules.iter().all(|r| r.approvers.allows(user))
    }

    /// Why `user` may not decide on a request that `requester` made (None: they may).
    pub fn refusal(&self, user: &User, requester: &str) -> Option<String> {
        if user.name == requester || self.asked_by.contains(&user.name) {
            return Some(format!("{} asked for this run: someone else must decide on it (self-approval is refused)", user.name));
        }
        if let Some(r) = self.rules.iter().find(|r| !r.approvers.allows(user)) {
            return Some(format!(
                "{} ({}) may not decide on this run: rule {} needs {}",
                user.name,
                user.role.name(),
                r.name,
                r.approvers.describe()
            ));
        }
        if self.decisions.iter().any(|d| d.user == user.name) {
            return Some(format!("{} has decided on this run already", user.name));
        }
        None
    }

    /// Keeps the rules that still apply once the plan is known: a rule with an `env`
    /// condition applies when the plan shows it, or when there is no plan.
    pub fn settle(&mut self, plan: Vec<Value>, plan_error: Option<String>) {
        let known = plan_error.is_none();
        let (kept, dropped): (Vec<Rule>, Vec<Rule>) =
            std::mem::take(&mut self.rules).into_iter().partition(|r| r.env.is_empty() || !known || r.planned_in(&plan));
        self.rules = kept;
        for env in dropped.into_iter().flat_map(|r| r.env) {
            if !self.unapproved_envs.contains(&env) {
                self.unapproved_envs.push(env);
            }
        }
        self.needed = self.rules.iter().map(|r| r.approvals).max().unwrap_or(1);
        self.plan = plan;
        self.plan_error = plan_error;
        self.planning = false;
    }
}

/// Jobs awaiting approval in this server, by id, with when their requests expire.
pub(super) type Awaiting = Arc<Mutex<BTreeMap<String, DateTime<Utc>>>>;

/// How often requests are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

impl RunService {
    /// A risky run: stored as a job `awaiting_approval` (durably, before anyone is answered), and
    /// its plan made by a dry run of the same package and params on a run thread.
    pub(super) fn hold(&self, d: &Dispatch, prepared: Prepared) -> Result<Accepted, ServiceError> {
        let Prepared { mut request, reference, shown, dev, allow_yanked, worker_tag, schedule, note, asked_by } = prepared;
        let manifest = Arc::clone(&request.package);
        let manifest = &manifest.manifest;
        let rules: Vec<Rule> = self.inner.policy.risks(manifest).into_iter().cloned().collect();
        let why = rules.iter().map(Rule::why).collect::<Vec<_>>().join("; ");
        if dev || !matches!(request.origin, Origin::Registry { .. }) {
            return Err(Error::NeedsApproval(format!(
                "{} needs approval ({why}), and approvals are given to published versions only: publish it (`opslet publish`), then run {}@{}",
                manifest.id(),
                manifest.name,
                manifest.version
            ))
            .into());
        }
        // What runs once approved is what was asked for: the params as the run will see them
        // (`k=v` pairs included), kept with the job until it runs.
        let params = match &request.validated {
            Some(v) => v.clone(),
            None => crate::applet::params::resolve_then(manifest, request.params_json.as_ref(), &request.params_pairs, |p| {
                self.inner.runtime.check_selectors(manifest, p)
            })
            .map_err(|errs| {
                Error::Params(super::redact_errors(
                    &request.package,
                    &request.params_json.clone().unwrap_or_default(),
                    &request.params_pairs,
                    errs,
                ))
            })?,
        };
        request.validated = Some(params.clone());
        let mut approval = Approval::new(rules, &request.caller.via, self.inner.policy.expire);
        approval.asked_by = asked_by;
        let mut job = Job::queued(&request, &reference, shown);
        job.status = JobStatus::AwaitingApproval;
        (job.allow_yanked, job.is_async) = (allow_yanked, true);
        (job.schedule, job.note) = (schedule, note);
        if d.queue.is_some() {
            job.worker_tag = Some(worker_tag);
        }
        job.approval = Some(approval.clone());
        d.jobs.accept(&job, &params, request.cancel.clone())?;
        d.awaiting.lock().insert(job.id.clone(), approval.expires_at);
        self.audit_approval(
            "approval.request",
            &job.user,
            &job,
            json!({ "reasons": approval.reasons(), "needed": approval.needed, "approvers": approval.approvers(), "expires_at": approval.expires_at }),
        );
        self.make_plan(d, &job.id, &request);
        let (_, done) = tokio::sync::oneshot::channel();
        Ok(Accepted { job_id: job.id, done, awaiting: Some(approval) })
    }

    /// A queued job that a rule covers now (the rule came with a restart): it waits for approval
    /// like a new request.
    pub(super) fn hold_again(&self, d: &Dispatch, job: &Job, request: &RunRequest) {
        let rules: Vec<Rule> = self.inner.policy.risks(&request.package.manifest).into_iter().cloned().collect();
        let approval = Approval::new(rules, &request.caller.via, self.inner.policy.expire);
        let held = d.jobs.update(&job.id, |j| {
            j.status = JobStatus::AwaitingApproval;
            j.approval = Some(approval.clone());
        });
        let Ok(Some(job)) = held else { return };
        d.awaiting.lock().insert(job.id.clone(), approval.expires_at);
        self.audit_approval(
            "approval.request",
            &job.user,
            &job,
            json!({ "reasons": approval.reasons(), "needed": approval.needed, "approvers": approval.approvers(), "expires_at": approval.expires_at, "after_restart": true }),
        );
        self.make_plan(d, &job.id, request);
    }

    /// Runs the dry run that makes a request's plan, on a run thread.
    fn make_plan(&self, d: &Dispatch, job_id: &str, request: &RunRequest) {
        let mut dry = RunRequest::new(Arc::clone(&request.package), request.caller.clone());
        dry.dry_run = true;
        dry.params_json = request.params_json.clone();
        dry.params_pairs = request.params_pairs.clone();
        dry.validated = request.validated.clone();
        dry.origin = request.origin.clone();
        let plan_run = dry.run_id.clone();
        let _ = d.jobs.update(job_id, |j| {
            if let Some(a) = j.approval.as_mut() {
                a.plan_run = Some(plan_run);
            }
        });
        let (service, id) = (self.clone(), job_id.to_string());
        let work: pool::Work = Box::new(move |thread| {
            // None: the server stops first; the next start makes the plan again.
            if let Some(outcome) = thread.block_on(service.inner.runtime.run(dry), || {}) {
                let error = match (&outcome.status, &outcome.result) {
                    (RunStatus::Ok, _) => None,
                    (s, Err(e)) => Some(format!("its dry run ended {}: {e}", s.name())),
                    (s, Ok(_)) => Some(format!("its dry run ended {}", s.name())),
                };
                service.settle(&id, outcome.plan, error);
            }
        });
        if d.pool.submit(work).is_err() {
            self.settle(job_id, Vec::new(), Some("no run thread was free to make its plan (the run queue is full)".into()));
        }
    }

    /// The plan is made (or could not be): the request shows it and waits for decisions, or,
    /// when the plan shows nothing its rules guard, the run goes ahead.
    fn settle(&self, job_id: &str, plan: Vec<Value>, error: Option<String>) {
        let Ok(d) = self.dispatch() else { return };
        let _one = self.inner.decisions.lock();
        let mut settled = None;
        let updated = d.jobs.update(job_id, |j| {
            if j.status == JobStatus::AwaitingApproval
                && let Some(a) = j.approval.as_mut()
            {
                a.settle(plan, error);
                settled = Some(a.clone());
            }
        });
        let (Ok(Some(job)), Some(a)) = (updated, settled) else { return };
        if a.rules.is_empty() {
            self.audit_approval(
                "approval.not_needed",
                &job.user,
                &job,
                json!({ "why": "its plan shows none of what the approval rules guard", "steps": a.plan.len() }),
            );
            d.awaiting.lock().remove(job_id);
            if let Err(e) = self.release(d, &job) {
                let _ = d.jobs.finish(job_id, JobStatus::Rejected, None, Some(format!("not started: {e}")), Vec::new());
            }
            return;
        }
        self.audit_approval(
            "approval.plan",
            &job.user,
            &job,
            json!({ "steps": a.plan.len(), "plan_error": a.plan_error, "plan_run": a.plan_run, "needed": a.needed }),
        );
        d.jobs.touched(job_id);
        if let Some(n) = &d.notifier {
            n.approval_needed(&job, &a.reasons(), a.needed);
        }
    }

    /// An approver's decision on a job awaiting approval, as `user` (an account): recorded and
    /// audited; the run starts with the last approval it needs, and a rejection ends it.
    pub fn decide(&self, job_id: &str, user: &str, approve: bool, message: &str) -> Result<Job, Error> {
        let d = self.dispatch()?;
        let account = d
            .auth
            .user(user)?
            .ok_or_else(|| Error::Denied(format!("{user} has no opslet account: approvals are decided by accounts (`opslet user add`)")))?;
        let message = message.trim();
        if message.chars().count() > 2000 {
            return Err(Error::Usage("the message is longer than 2000 characters".into()));
        }
        if !approve && message.is_empty() {
            return Err(Error::Usage("say why it is rejected (-m MESSAGE, or `message` in the body)".into()));
        }
        let one = self.inner.decisions.lock();
        let job = d.jobs.get(job_id)?.ok_or_else(|| Error::NotFound(format!("no job {job_id}")))?;
        let Some(a) = job.approval.clone().filter(|_| job.status == JobStatus::AwaitingApproval) else {
            return Err(Error::Usage(format!("job {job_id} is not awaiting approval (it is {})", job.status)));
        };
        if Utc::now() >= a.expires_at {
            drop(one);
            self.expire(d, job_id);
            return Err(Error::Usage(format!("the approval request of job {job_id} expired at {}", a.expires_at.to_rfc3339())));
        }
        if a.planning {
            return Err(Error::Busy("its plan is still being made (a dry run): decide once the plan is shown".into()));
        }
        if let Some(why) = a.refusal(&account, &job.user) {
            let _ = self.inner.runtime.store().map(|s| {
                s.audit().append(crate::store::audit::AuditEvent {
                    kind: "approval.denied".into(),
                    run_id: Some(job.id.clone()),
                    actor: Some(user.to_string()),
                    via: Some("approval".into()),
                    applet: Some(job.applet.clone()),
                    status: Some("denied".into()),
                    data: json!({ "job": job.id, "why": why, "approve": approve }),
                })
            });
            return Err(Error::Denied(why));
        }
        let decision = Decision { user: user.to_string(), approve, message: message.to_string(), at: Utc::now() };
        let job = d
            .jobs
            .update(job_id, |j| {
                if let Some(a) = j.approval.as_mut() {
                    a.decisions.push(decision);
                }
            })?
            .ok_or_else(|| Error::NotFound(format!("no job {job_id}")))?;
        let a = job.approval.clone().expect("set above");
        let (kind, n) = if approve { ("approval.approve", a.approved()) } else { ("approval.reject", a.approved()) };
        self.audit_approval(kind, user, &job, json!({ "message": message, "approvals": n, "needed": a.needed }));
        if !approve {
            d.awaiting.lock().remove(job_id);
            d.jobs.finish(job_id, JobStatus::Rejected, None, Some(format!("rejected by {user}: {message}")), Vec::new())?;
        } else if n >= a.needed {
            d.awaiting.lock().remove(job_id);
            let approvers: Vec<&str> = a.decisions.iter().filter(|d| d.approve).map(|d| d.user.as_str()).collect();
            self.audit_approval("approval.granted", user, &job, json!({ "approvers": approvers }));
            if let Err(e) = self.release(d, &job) {
                d.jobs.finish(job_id, JobStatus::Rejected, None, Some(format!("approved, but not started: {e}")), Vec::new())?;
            }
        } else {
            d.jobs.touched(job_id);
        }
        drop(one);
        Ok(d.jobs.get(job_id)?.unwrap_or(job))
    }

    /// Runs an approved job: exactly the package hash and params that were approved, as the
    /// caller who asked, if they may still run it.
    fn release(&self, d: &Dispatch, job: &Job) -> Result<(), Error> {
        let name = job.reference.split('@').next().unwrap_or_default().to_string();
        if !self.may_still_run(d, job)? {
            return Err(Error::Denied(format!("{} may no longer run {name}", job.user)));
        }
        let via = job.approval.as_ref().map_or("http", |a| a.via.as_str());
        let mut req = self.prepare(self.again(d, job, via)?)?.request;
        if req.package.hash != job.hash {
            return Err(Error::Internal(format!("the package of job {} is not the one approved", job.id)));
        }
        req.run_id = job.id.clone();
        req.unapproved_envs = job.approval.as_ref().map(|a| a.unapproved_envs.clone()).unwrap_or_default();
        d.jobs.requeue(&job.id, req.cancel.clone())?;
        let tag = job.worker_tag.clone().unwrap_or_else(|| super::queue::DEFAULT_TAG.into());
        Slots::take(d, &name, &job.user).and_then(|slots| self.start(d, req, slots, &tag)).map_err(ServiceError::into_error)?;
        Ok(())
    }

    /// Ends a request whose time is up (unless it was decided meanwhile).
    fn expire(&self, d: &Dispatch, job_id: &str) {
        let _one = self.inner.decisions.lock();
        d.awaiting.lock().remove(job_id);
        let Ok(Some(job)) = d.jobs.get(job_id) else { return };
        let Some(a) = job.approval.as_ref().filter(|_| job.status == JobStatus::AwaitingApproval) else { return };
        let why = format!("its approval request expired at {} with {} of {} approvals", a.expires_at.to_rfc3339(), a.approved(), a.needed);
        self.audit_approval(
            "approval.expire",
            "opslet",
            &job,
            json!({ "approvals": a.approved(), "needed": a.needed, "expires_at": a.expires_at }),
        );
        let _ = d.jobs.finish(job_id, JobStatus::Expired, None, Some(why), Vec::new());
    }

    /// Expires requests whose time is up, until the server stops (`opslet serve` runs it).
    pub async fn expire_approvals(self) {
        let Ok(d) = self.dispatch() else { return };
        loop {
            tokio::time::sleep(EXPIRY_TICK).await;
            let now = Utc::now();
            let due: Vec<String> = d.awaiting.lock().iter().filter(|(_, at)| **at <= now).map(|(id, _)| id.clone()).collect();
            for id in due {
                let service = self.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(d) = service.dispatch() {
                        service.expire(d, &id);
                    }
                })
                .await;
            }
        }
    }

    /// A job awaiting approval that its caller (or an admin) takes back.
    pub(super) fn withdraw(&self, d: &Dispatch, job_id: &str) -> bool {
        let _one = self.inner.decisions.lock();
        let Ok(Some(job)) = d.jobs.get(job_id) else { return false };
        if job.status != JobStatus::AwaitingApproval {
            return false;
        }
        d.awaiting.lock().remove(job_id);
        self.audit_approval("approval.withdraw", &job.user, &job, json!({}));
        d.jobs.finish(job_id, JobStatus::Cancelled, None, Some("cancelled before it was approved".into()), Vec::new()).is_ok()
    }

    /// After a start: requests still waiting get their live state (and their plan, if the
    /// server stopped while making it).
    pub(super) fn recover_approvals(&self, d: &Dispatch) -> Result<usize, Error> {
        let mut n = 0;
        for job in d.jobs.open_jobs()?.into_iter().filter(|j| j.status == JobStatus::AwaitingApproval) {
            let Some(a) = job.approval.clone() else { continue };
            n += 1;
            d.jobs.relive(&job.id, CancelToken::default());
            d.awaiting.lock().insert(job.id.clone(), a.expires_at);
            if a.planning {
                match self.prepare(self.again(d, &job, &a.via)?) {
                    Ok(p) => self.make_plan(d, &job.id, &p.request),
                    Err(e) => self.settle(&job.id, Vec::new(), Some(format!("its plan could not be made: {e}"))),
                }
            }
        }
        Ok(n)
    }

    /// Whether a job's caller may still run its applet (hooks run as `hook:NAME`).
    pub(super) fn may_still_run(&self, d: &Dispatch, job: &Job) -> Result<bool, Error> {
        let name = job.reference.split('@').next().unwrap_or_default();
        Ok(match job.user.strip_prefix("hook:") {
            Some(hook) => d.hooks.get(hook)?.is_some(),
            None => d.auth.user(&job.user)?.is_some_and(|u| {
                Principal { user: u.name, role: u.role, groups: u.groups, token_id: String::new() }
                    .allows(&Action::Run(name), &d.auth.grants().unwrap_or_default())
            }),
        })
    }

    /// Jobs awaiting approval that `viewer` may see, oldest first: those they may decide on,
    /// their own, and every one for those who read all jobs; each with why `viewer` may not
    /// decide on it (None: they may).
    pub fn pending_approvals(&self, viewer: &str) -> Result<Vec<(Job, Option<String>)>, Error> {
        let d = self.dispatch()?;
        let account = d.auth.user(viewer)?;
        let grants = d.auth.grants()?;
        let reads_all = account.as_ref().is_some_and(|u| {
            Principal { user: u.name.clone(), role: u.role, groups: u.groups.clone(), token_id: String::new() }
                .allows(&Action::ReadAllJobs, &grants)
        });
        let mut out = Vec::new();
        for job in d.jobs.open_jobs()?.into_iter().filter(|j| j.status == JobStatus::AwaitingApproval) {
            let Some(a) = &job.approval else { continue };
            let approver = account.as_ref().is_some_and(|u| a.approver(u));
            if !(approver || job.user == viewer || a.asked_by.iter().any(|x| x == viewer) || reads_all) {
                continue;
            }
            let why = match &account {
                None => Some(format!("{viewer} has no opslet account")),
                Some(u) if a.planning => a.refusal(u, &job.user).or_else(|| Some("its plan is still being made".into())),
                Some(u) => a.refusal(u, &job.user),
            };
            out.push((job, why));
        }
        Ok(out)
    }

    fn audit_approval(&self, kind: &str, actor: &str, job: &Job, mut data: Value) {
        let Some(store) = self.inner.runtime.store() else { return };
        data["job"] = json!(job.id);
        data["hash"] = json!(job.hash);
        data["requested_by"] = json!(job.user);
        let applet = if job.applet.is_empty() { job.reference.clone() } else { job.applet.clone() };
        if let Err(e) = store.audit().append(crate::store::audit::AuditEvent {
            kind: kind.into(),
            run_id: Some(job.id.clone()),
            actor: Some(actor.to_string()),
            via: Some("approval".into()),
            applet: Some(applet),
            status: Some("ok".into()),
            data,
        }) {
            tracing::warn!(job = %job.id, error = %e, "recording {kind} in the audit log");
        }
        let _ = store.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Result<Policy, Error> {
        let cfg = crate::config::Config::parse(toml_text, "opslet.toml")?;
        Policy::from_config(&cfg.approvals, &["ssh", "ipmi", "config", "cmdb", "netdev"])
    }

    fn manifest(perms: &str) -> Manifest {
        Manifest::parse(&format!("name = \"a\"\nversion = \"1.0.0\"\n[permissions]\n{perms}\n")).unwrap()
    }

    fn user(name: &str, role: Role, groups: &[&str]) -> User {
        User { name: name.into(), role, groups: groups.iter().map(|g| g.to_string()).collect(), created_at: Utc::now() }
    }

    #[test]
    fn rules_match_the_granted_actions_only() {
        let p = policy(
            r#"
[[approvals.rule]]
module = "ipmi"
actions = ["power"]
[[approvals.rule]]
module = "ssh"
actions = ["sudo"]
approvals = 2
groups = ["sre"]
"#,
        )
        .unwrap();
        assert_eq!(p.risks(&manifest(r#"ipmi = ["read"]"#)).len(), 0);
        assert_eq!(p.risks(&manifest(r#"ipmi = ["read", "power"]"#))[0].name, "ipmi-power");
        assert_eq!(p.risks(&manifest(r#"ipmi = { hosts = ["*"], actions = ["power"] }"#)).len(), 1);
        assert_eq!(p.risks(&manifest(r#"ssh = { hosts = ["*"] }"#)).len(), 0);
        assert_eq!(p.risks(&manifest(r#"ssh = { hosts = ["*"], sudo = false }"#)).len(), 0);
        let r = p.risks(&manifest(r#"ssh = { hosts = ["*"], sudo = true }"#));
        assert_eq!((r.len(), r[0].approvals), (1, 2));
        let json = |m: Manifest| m.permissions.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap())).collect();
        let explained = p.explain(&json(manifest(r#"ssh = { hosts = ["*"], sudo = true }"#)));
        assert_eq!(explained["required"], true);
        assert_eq!(explained["rules"][0]["approvers"], "group sre");
        assert_eq!(p.explain(&json(manifest(r#"ipmi = ["read"]"#)))["required"], false);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = policy("[[approvals.rule]]\nmodule = \"ipmi\"\n[[approvals.rule]]\nmodule = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("approvals.rule[2].module: unknown module `nope`"), "{e}");
        let e = policy("[[approvals.rule]]\nmodule = \"ipmi\"\nroles = [\"boss\"]\n").unwrap_err().to_string();
        assert!(e.contains("approvals.rule[1].roles: unknown role `boss`"), "{e}");
        let e = policy("[[approvals.rule]]\nmodule = \"ipmi\"\napprovals = 0\n").unwrap_err().to_string();
        assert!(e.contains("approvals.rule[1].approvals: must be between 1 and 10"), "{e}");
        let e = policy("[[approvals.rule]]\nmodule = \"ipmi\"\nenv = [\"prod\"]\n").unwrap_err().to_string();
        assert!(e.contains("approvals.rule[1].env: only `config` rules"), "{e}");
        let e = policy("[approvals]\nexpire = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("approvals.expire"), "{e}");
        let e = policy("[[approvals.rule]]\nmodule = \"ipmi\"\n[[approvals.rule]]\nmodule = \"ipmi\"\n").unwrap_err().to_string();
        assert!(e.contains("approvals.rule[2].name: a rule named `ipmi`"), "{e}");
    }

    #[test]
    fn who_may_decide() {
        let p = policy("[[approvals.rule]]\nmodule = \"ipmi\"\ngroups = [\"sre\"]\nusers = [\"carol\"]\n").unwrap();
        let a = Approval::new(p.rules.clone(), "http", DEFAULT_EXPIRE);
        assert!(a.refusal(&user("alice", Role::Admin, &["sre"]), "alice").unwrap().contains("self-approval is refused"));
        assert!(a.refusal(&user("bob", Role::Operator, &["sre"]), "alice").is_none());
        assert!(a.refusal(&user("carol", Role::Viewer, &[]), "alice").is_none());
        let no = a.refusal(&user("dave", Role::Admin, &["web"]), "alice").unwrap();
        assert!(no.contains("rule ipmi needs group sre or user carol"), "{no}");
        // No approvers named: admins.
        let p = policy("[[approvals.rule]]\nmodule = \"ipmi\"\n").unwrap();
        let mut a = Approval::new(p.rules.clone(), "http", DEFAULT_EXPIRE);
        assert!(a.refusal(&user("bob", Role::Operator, &[]), "alice").is_some());
        assert!(a.refusal(&user("root", Role::Admin, &[]), "alice").is_none());
        a.decisions.push(Decision { user: "root".into(), approve: true, message: String::new(), at: Utc::now() });
        assert!(a.refusal(&user("root", Role::Admin, &[]), "alice").unwrap().contains("decided on this run already"));
    }

    #[test]
    fn env_rules_are_settled_by_the_plan() {
        let p = policy("[[approvals.rule]]\nmodule = \"config\"\nactions = [\"publish\"]\nenv = [\"prod\"]\napprovals = 2\n[[approvals.rule]]\nmodule = \"ssh\"\n").unwrap();
        let staging =
            vec![serde_json::json!({ "module": "config", "action": "publish", "target": "web1", "detail": { "env": "staging" } })];
        let prod = vec![serde_json::json!({ "module": "config", "action": "publish", "target": "web9", "detail": { "env": "prod" } })];
        let mut a = Approval::new(p.rules.clone(), "http", DEFAULT_EXPIRE);
        a.settle(staging, None);
        assert_eq!((a.rules.len(), a.needed), (1, 1));
        assert_eq!(a.unapproved_envs, ["prod"], "the run may not publish to prod, which nobody approved");
        let mut a = Approval::new(p.rules.clone(), "http", DEFAULT_EXPIRE);
        a.settle(prod, None);
        assert_eq!((a.rules.len(), a.needed), (2, 2));
        assert!(a.unapproved_envs.is_empty());
        let mut a = Approval::new(p.rules[..1].to_vec(), "http", DEFAULT_EXPIRE);
        a.settle(Vec::new(), Some("the dry run failed".into()));
        assert_eq!((a.rules.len(), a.needed, a.planning), (1, 2, false));
        let mut a = Approval::new(p.rules[..1].to_vec(), "http", DEFAULT_EXPIRE);
        a.settle(Vec::new(), None);
        assert!(a.rules.is_empty(), "no publish to prod planned: no approval needed");
    }
}
