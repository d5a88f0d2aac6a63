//! `opslet notify`: the notification deliveries `opslet serve` made (docs/notifications.md), and
//! a test message through one rule.

use std::time::{Duration, Instant};

use clap::Subcommand;

use super::Global;
use super::output::Format;
use super::stdio::{errln, out, outln};
use crate::error::Error;
use crate::service::notify::{self, DeliveryStatus, Notifier};

#[derive(Subcommand, Debug)]
pub enum NotifyCmd {
    /// List deliveries, newest first: rule, event, channel, status, attempts, last error.
    List {
        /// Only `pending`, `delivered` or `failed` ones.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print as a table, JSON or YAML instead of plain lines.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Send a test message through the rule named NAME (`name` in `[[notify.rule]]`, or
    /// `rule[N]`) and wait for its outcome.
    Test {
        #[arg(long)]
        rule: String,
        /// How long to wait for the outcome (retries included).
        #[arg(long, default_value = "60s")]
        wait: String,
    },
}

pub fn run(global: &Global, cmd: NotifyCmd) -> Result<i32, Error> {
    match cmd {
        NotifyCmd::List { status, limit, format } => {
            let status = status
                .map(|s| {
                    DeliveryStatus::parse(&s).ok_or_else(|| Error::Usage(format!("--status `{s}`: give pending, delivered or failed")))
                })
                .transpose()?;
            let list = notify::list(&global.open_store()?, status, limit.max(1))?;
            match format {
                Some(f) => {
                    let v = serde_json::Value::Array(list.iter().map(|d| d.view()).collect());
                    out!("{}", super::output::render(&v, f));
                }
                None => {
                    for d in &list {
                        let error = d.last_error.as_deref().map(|e| format!("  {e}")).unwrap_or_default();
                        outln!(
                            "{}  {}  {}  {} -> {}  {:?}  attempts {}/{}  {}{error}",
                            d.created_at.format("%Y-%m-%d %H:%M:%S"),
                            d.id,
                            d.rule,
                            d.event,
                            d.channel,
                            d.status,
                            d.attempts,
                            d.max_attempts,
                            d.target,
                        );
                    }
                }
            }
            Ok(0)
        }
        NotifyCmd::Test { rule, wait } => {
            let wait = crate::util::parse_duration(&wait).map_err(|m| Error::Usage(format!("--wait: {m}")))?;
            let store = global.open_store()?;
            // In a running server, its notifier sends (and keeps trying if this command stops
            // waiting); else one of this process's own.
            let own;
            let notifier = match global.server_service().and_then(|s| s.notifier()) {
                Some(n) => n,
                None => {
                    own = Notifier::new(&global.config()?.notify, &store)?;
                    &own
                }
            };
            let id = notifier.test(&rule, &global.actor())?;
            let deadline = Instant::now() + wait;
            loop {
                let d = notify::get(&store, &id)?;
                match d {
                    Some(d) if d.status == DeliveryStatus::Delivered => {
                        errln!("delivered to {} ({} attempt{})", d.target, d.attempts, if d.attempts == 1 { "" } else { "s" });
                        return Ok(0);
                    }
                    Some(d) if d.status == DeliveryStatus::Failed => {
                        return Err(Error::Internal(format!(
                            "not delivered to {} after {} attempts: {}",
                            d.target,
                            d.attempts,
                            d.last_error.unwrap_or_default()
                        )));
                    }
                    Some(d) if Instant::now() >= deadline => {
                        return Err(Error::Busy(format!(
                            "not delivered yet ({} attempts, last error: {}); see `opslet notify list`",
                            d.attempts,
                            d.last_error.unwrap_or_default()
                        )));
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
}
