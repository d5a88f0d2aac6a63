//! `[notify]` of opslet.toml: where `opslet serve` sends word of job failures, successes, limits
//! hit, runs waiting for approval and config drift (docs/notifications.md). The doc comments are
//! the reference; `check` is every rule a value must follow, run when the file is read.

use std::time::Duration;

use serde::Deserialize;

use crate::util::{parse_duration, validate_name};

/// The longest wait between two attempts of a delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `[notify]`: delivery settings, the mail server, and the rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Attempts per delivery before it is given up as `failed` (default 5, at most 100).
    pub attempts: u32,
    /// Wait before the first retry, doubled after each failed attempt, at most 5m (default "2s").
    pub backoff: String,
    /// The mail server, for rules that send email.
    pub smtp: Option<SmtpConfig>,
    /// `[[notify.rule]]` entries: each event a rule matches is one delivery to its channel.
    pub rule: Vec<toml::Spanned<NotifyRule>>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig { attempts: 5, backoff: "2s".into(), smtp: None, rule: Vec::new() }
    }
}

/// `[notify.smtp]`: the SMTP server email goes through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name or address of the server.
    pub host: String,
    /// Port (default 587 with `starttls`, 465 with `tls`, 25 with `none`).
    pub port: Option<u16>,
    /// The sender, like `"opslet <opslet@example.com>"`.
    pub from: String,
    /// `starttls` (default: the connection must be upgraded to TLS), `tls` (TLS from the first
    /// byte, usually port 465) or `none` (plain text, refused unless `host` is a loopback
    /// address or `localhost`).
    #[serde(default)]
    pub tls: SmtpTls,
    /// Login name, when the server wants one (with `password_secret`).
    pub user: Option<String>,
    /// The name of a stored secret (`opslet secret set NAME`) holding the password.
    pub password_secret: Option<String>,
    /// A PEM file of extra root certificates to trust for the server's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// Time for one connection and message (default "30s").
    pub timeout: Option<String>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.as_deref().and_then(|t| parse_duration(t).ok()).unwrap_or(Duration::from_secs(30))
    }
}

/// What a rule is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    /// A job ended `error`, `invalid_params`, `invalid_applet`, `interrupted` or `rejected`.
    Failure,
    /// A job ended `ok`.
    Success,
    /// A job ended `limit_exceeded`.
    Limit,
    /// A run waits for approval.
    Approval,
    /// A run's `config.check` found hosts whose file drifted or is missing.
    Drift,
}

impl NotifyEvent {
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Failure => "failure",
            NotifyEvent::Success => "success",
            NotifyEvent::Limit => "limit",
            NotifyEvent::Approval => "approval",
            NotifyEvent::Drift => "drift",
        }
    }
}

/// `[[notify.rule]]`: which events, of which applets, go where. Give exactly one of `webhook`,
/// `email` and `chat`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRule {
    /// A name for the delivery records and `opslet notify test --rule NAME` (default
    /// `rule[N]`, its place in the file counted from 0).
    pub name: Option<String>,
    /// The events: `failure`, `success`, `limit`, `approval`, `drift`.
    pub on: Vec<NotifyEvent>,
    /// Applet name patterns (`*` matches any run of characters); absent: every applet.
    pub applets: Option<Vec<String>>,
    /// An `https://` (or `http://`) URL that receives a signed JSON POST.
    pub webhook: Option<String>,
    /// With `webhook`: the name of a stored secret the body is signed with, the way `opslet
    /// serve` checks inbound hook deliveries.
    pub secret: Option<String>,
    /// Mail recipients, like `["ops@example.com"]` (needs `[notify.smtp]`).
    pub email: Option<Vec<String>>,
    /// A chat incoming-webhook URL (Slack, Mattermost and alike) that receives `{"text": "..."}`.
    pub chat: Option<String>,
}

impl NotifyRule {
    /// Where this rule sends, as one of the three channels.
    pub fn channel(&self) -> &'static str {
        if self.webhook.is_some() {
            "webhook"
        } else if self.email.is_some() {
            "email"
        } else {
            "chat"
        }
    }

    /// Whether events of `applet` (a name, no version) reach this rule.
    pub fn matches_applet(&self, applet: &str) -> bool {
        self.applets.as_ref().is_none_or(|pats| pats.iter().any(|p| crate::util::pattern_matches(p, applet)))
    }
}

fn url(at: &str, key: &str, u: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(u).map_err(|e| format!("{at}: {key} `{u}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{at}: {key} `{u}` must be an http:// or https:// URL with a host"));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl NotifyConfig {
    /// The backoff as a duration.
    pub fn backoff(&self) -> Duration {
        parse_duration(&self.backoff).unwrap_or(Duration::from_secs(2)).min(MAX_BACKOFF)
    }

    /// The name of rule `i` in records.
    pub fn rule_name(&self, i: usize) -> String {
        self.rule[i].get_ref().name.clone().unwrap_or_else(|| format!("rule[{i}]"))
    }

    /// Every rule of the section; an error names the key, with the byte offset of the rule it
    /// is about when there is one.
    pub fn check(&self) -> Result<(), (Option<usize>, String)> {
        if !(1..=100).contains(&self.attempts) {
            return Err((None, format!("notify.attempts must be between 1 and 100, not {}", self.attempts)));
        }
        let backoff = parse_duration(&self.backoff).map_err(|m| (None, format!("notify.backoff: {m}")))?;
        if backoff.is_zero() {
            return Err((None, "notify.backoff must be more than 0s".into()));
        }
        if let Some(s) = &self.smtp {
            let e = |m: String| (None, format!("notify.smtp: {m}"));
            if s.host.trim().is_empty() {
                return Err(e("host is empty".into()));
            }
            s.from.parse::<lettre::message::Mailbox>().map_err(|x| e(format!("from `{}` is not a mail address: {x}", s.from)))?;
            if s.tls == SmtpTls::None && !is_loopback(&s.host) {
                return Err(e(format!(
                    "tls = \"none\" sends mail and password in plain text; it is only taken for a loopback host, not `{}` (use \"starttls\" or \"tls\")",
                    s.host
                )));
            }
            match (&s.user, &s.password_secret) {
                (Some(_), None) => return Err(e("user needs password_secret (the name of a stored secret)".into())),
                (None, Some(_)) => return Err(e("password_secret needs user".into())),
                (_, Some(p)) => validate_name(p).map_err(|m| e(format!("password_secret `{p}`: a secret name {m}")))?,
                (None, None) => {}
            }
            if let Some(t) = &s.timeout {
                parse_duration(t).map_err(|m| e(format!("timeout: {m}")))?;
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, spanned) in self.rule.iter().enumerate() {
            let r = spanned.get_ref();
            let at = format!("notify.rule[{i}]");
            let err = |m: String| (Some(spanned.span().start), m);
            if let Some(n) = &r.name {
                validate_name(n).map_err(|m| err(format!("{at}: name `{n}` {m}")))?;
                if !names.insert(n.clone()) {
                    return Err(err(format!("{at}: another rule is named `{n}`")));
                }
            }
            if r.on.is_empty() {
                return Err(err(format!("{at}: `on` is empty (give some of failure, success, limit, approval, drift)")));
            }
            if let Some(pats) = &r.applets
                && (pats.is_empty() || pats.iter().any(|p| p.trim().is_empty()))
            {
                return Err(err(format!("{at}: applets must be name patterns like \"deploy-*\" (leave it out for every applet)")));
            }
            let given = [r.webhook.is_some(), r.email.is_some(), r.chat.is_some()].iter().filter(|x| **x).count();
            if given != 1 {
                return Err(err(format!("{at}: give one of webhook, email, chat")));
            }
            if let Some(u) = &r.webhook {
                url(&at, "webhook", u).map_err(err)?;
                let Some(secret) = &r.secret else {
                    return Err(err(format!("{at}: a webhook needs `secret`, the name of a stored secret its deliveries are signed with")));
                };
                validate_name(secret).map_err(|m| err(format!("{at}: secret `{secret}`: a secret name {m}")))?;
            } else if r.secret.is_some() {
                return Err(err(format!("{at}: `secret` signs webhook deliveries; this rule has no webhook")));
            }
            if let Some(u) = &r.chat {
                url(&at, "chat", u).map_err(err)?;
            }
            if let Some(to) = &r.email {
                if to.is_empty() {
                    return Err(err(format!("{at}: email has no recipients")));
                }
                for a in to {
                    a.parse::<lettre::message::Mailbox>().map_err(|x| err(format!("{at}: email `{a}` is not a mail address: {x}")))?;
                }
                if self.smtp.is_none() {
                    return Err(err(format!("{at}: sends email, but there is no [notify.smtp]")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        match Config::parse(text, "opslet.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const SMTP: &str = "[notify.smtp]\nhost = \"127.0.0.1\"\nport = 2525\nfrom = \"opslet <o@example.com>\"\ntls = \"none\"\n";

    #[test]
    fn a_good_section_parses() {
        let text = format!(
            "[notify]\nattempts = 3\nbackoff = \"1s\"\n{SMTP}[[notify.rule]]\nname = \"mail\"\non = [\"failure\", \"limit\"]\napplets = [\"deploy-*\"]\nemail = [\"ops@example.com\"]\n[[notify.rule]]\non = [\"success\"]\nwebhook = \"https://hooks.example.com/x\"\nsecret = \"k\"\n"
        );
        let c = Config::parse(&text, "opslet.toml").unwrap();
        assert_eq!(c.notify.attempts, 3);
        assert_eq!(c.notify.rule.len(), 2);
        assert_eq!(c.notify.rule_name(1), "rule[1]");
        assert!(c.notify.rule[0].get_ref().matches_applet("deploy-web"));
        assert!(!c.notify.rule[0].get_ref().matches_applet("backup"));
        assert!(c.tables.is_empty(), "[notify] is opslet's own table");
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        let e = err("[notify]\n\n[[notify.rule]]\non = [\"failure\"]\n");
        assert!(e.contains("opslet.toml:3:") && e.contains("notify.rule[0]: give one of webhook, email, chat"), "{e}");
        let e = err(
            "[[notify.rule]]\non = [\"failure\"]\nwebhook = \"https://x.example\"\nsecret = \"k\"\n[[notify.rule]]\non = [\"failure\"]\nchat = \"https://c.example\"\nwebhook = \"https://x.example\"\n",
        );
        assert!(e.contains("opslet.toml:5:") && e.contains("notify.rule[1]: give one of webhook, email, chat"), "{e}");
        let e = err("[[notify.rule]]\non = [\"boom\"]\nchat = \"https://c.example\"\n");
        assert!(e.contains("opslet.toml:2:") && e.contains("boom") && e.contains("failure"), "{e}");
        let e = err("[[notify.rule]]\non = [\"failure\"]\nwebhook = \"https://x.example\"\n");
        assert!(e.contains("notify.rule[0]: a webhook needs `secret`"), "{e}");
        let e = err("[[notify.rule]]\non = [\"failure\"]\nchat = \"ftp://c.example\"\n");
        assert!(e.contains("notify.rule[0]: chat `ftp://c.example` must be an http:// or https:// URL"), "{e}");
        let e = err("[[notify.rule]]\non = [\"failure\"]\nchat = \"not a url\"\n");
        assert!(e.contains("notify.rule[0]: chat `not a url` is not a URL"), "{e}");
        let e = err("[[notify.rule]]\non = [\"failure\"]\nemail = [\"ops@example.com\"]\n");
        assert!(e.contains("notify.rule[0]: sends email, but there is no [notify.smtp]"), "{e}");
        let e = err(&format!("{SMTP}[[notify.rule]]\non = [\"failure\"]\nemail = [\"not an address\"]\n"));
        assert!(e.contains("notify.rule[0]: email `not an address` is not a mail address"), "{e}");
        let e = err("[notify.smtp]\nhost = \"smtp.example.com\"\nfrom = \"o@example.com\"\ntls = \"none\"\n");
        assert!(e.contains("notify.smtp: tls = \"none\"") && e.contains("loopback"), "{e}");
        let e = err("[notify]\nattempts = 0\n");
        assert!(e.contains("notify.attempts must be between 1 and 100"), "{e}");
        let e = err("[notify]\nbackoff = \"soon\"\n");
        assert!(e.contains("notify.backoff"), "{e}");
        let e = err("[notify]\ncolour = 1\n");
        assert!(e.contains("opslet.toml:2:") && e.contains("colour"), "{e}");
        let e = err("[[notify.rule]]\non = []\nchat = \"https://c.example\"\n");
        assert!(e.contains("notify.rule[0]: `on` is empty"), "{e}");
        let e = err(
            "[[notify.rule]]\nname = \"a\"\non = [\"failure\"]\nchat = \"https://c.example\"\n[[notify.rule]]\nname = \"a\"\non = [\"failure\"]\nchat = \"https://c.example\"\n",
        );
        assert!(e.contains("notify.rule[1]: another rule is named `a`"), "{e}");
        let e = err("[[notify.rule]]\non = [\"failure\"]\nchat = \"https://c.example\"\nsecret = \"k\"\n");
        assert!(e.contains("notify.rule[0]: `secret` signs webhook deliveries"), "{e}");
    }
}
