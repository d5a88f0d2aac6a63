//! Stand-ins for the outside world: fakes an applet's tests declare, transcripts of real runs
//! (`opslet run --record FILE`) and their replay. All three are [`Exchange`]s: host modules ask
//! one at the point a call would leave the process (`kit::exchange::call`), after the call's
//! permission and argument checks.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::context::Exchange;

/// One call a module made (or would have made), as tests and transcripts see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// `ssh.run`, `zabbix.api`, ...
    pub call: String,
    /// The host, device, BMC or API method the call went to.
    pub target: String,
    pub args: Value,
}

/// A fake: the answer to calls that match it.
#[derive(Debug, Clone)]
pub struct Fake {
    pub call: String,
    /// Which calls: `target` (or `host`) and any argument, each equal, or for strings a pattern
    /// with `*`; absent keys match anything.
    pub matching: serde_json::Map<String, Value>,
    /// What the call returns, or the error it fails with (`{ error = "..." }` in Lua).
    pub answer: Value,
}

impl Fake {
    /// Whether a call that was made matches this fake's call and `match`.
    pub fn matches_call(&self, c: &Call) -> bool {
        self.matches(&c.call, &c.target, &c.args)
    }

    fn matches(&self, call: &str, target: &str, args: &Value) -> bool {
        if self.call != call {
            return false;
        }
        self.matching.iter().all(|(k, want)| {
            let got = match k.as_str() {
                "target" | "host" => Value::String(target.to_string()),
                _ => args.get(k).cloned().unwrap_or(Value::Null),
            };
            same(want, &got)
        })
    }
}

/// `want` matches `got`: equal, a string pattern with `*` (or a string `got` shown as text).
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), Value::String(g)) => crate::util::pattern_matches(w, g),
        (Value::String(w), g) if !g.is_null() => crate::util::pattern_matches(w, &g.to_string()),
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, v)| same(v, g.get(k).unwrap_or(&Value::Null))),
        _ => want == got,
    }
}

/// The fakes of one test, and the calls its runs made.
#[derive(Default)]
pub struct Fakes {
    fakes: Mutex<Vec<Fake>>,
    calls: Mutex<Vec<Call>>,
    /// Calls no fake answered, said: a test fails on them even when the applet carried on.
    misses: Mutex<Vec<String>>,
    /// Bytes the fakes may hold (0: no bound), and how many they hold.
    budget: u64,
    held: std::sync::atomic::AtomicU64,
}

/// Most calls one case keeps (for `calls()` and `assert.called`); past it, the case fails.
pub const MAX_CALLS: usize = 100_000;

impl Fakes {
    /// Fakes that hold at most `bytes` of matches and answers (a test's memory limit: they live
    /// outside its Lua heap).
    pub fn within(bytes: u64) -> Fakes {
        Fakes { budget: bytes, ..Fakes::default() }
    }

    /// Adds a fake, unless the fakes would hold more than their budget.
    pub fn add(&self, fake: Fake) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let size =
            (serde_json::to_vec(&fake.answer).map_or(0, |v| v.len()) + serde_json::to_vec(&fake.matching).map_or(0, |v| v.len())) as u64;
        let held = self.held.fetch_add(size, Ordering::Relaxed) + size;
        if self.budget > 0 && held > self.budget {
            return Err(format!(
                "fake: the fakes of this case hold more than its memory limit ({} bytes): declare fewer or smaller answers",
                self.budget
            ));
        }
        self.fakes.lock().push(fake);
        Ok(())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    /// The calls no fake answered, each said once.
    pub fn misses(&self) -> Vec<String> {
        self.misses.lock().clone()
    }
}

/// Keeps a call made, up to [`MAX_CALLS`]; past it, says so (once) and keeps nothing more.
fn keep(calls: &Mutex<Vec<Call>>, misses: &Mutex<Vec<String>>, c: Call) -> bool {
    let mut calls = calls.lock();
    if calls.len() >= MAX_CALLS {
        miss(misses, &format!("more than {MAX_CALLS} module calls in one case: the rest were refused"));
        return false;
    }
    calls.push(c);
    true
}

/// Keeps `m` once.
fn miss(list: &Mutex<Vec<String>>, m: &str) {
    let mut l = list.lock();
    if !l.iter().any(|x| x == m) {
        l.push(m.to_string());
    }
}

impl Exchange for Fakes {
    fn answer(&self, call: &str, target: &str, args: &Value) -> Option<Result<Value, String>> {
        if !keep(&self.calls, &self.misses, Call { call: call.into(), target: target.into(), args: args.clone() }) {
            return Some(Err(format!("more than {MAX_CALLS} module calls in one case")));
        }
        // The fake declared last wins: a test overrides a general fake with a narrower one after it.
        let fakes = self.fakes.lock();
        let Some(f) = fakes.iter().rev().find(|f| f.matches(call, target, args)) else {
            let m = format!(
                "no fake answers {call} on {target} with {args}: declare one, e.g. fake(\"{call}\", {{ target = \"{target}\" }}, {{ ... }})"
            );
            miss(&self.misses, &m);
            return Some(Err(m));
        };
        Some(match f.answer.get("error").and_then(Value::as_str) {
            Some(e) if f.answer.as_object().is_some_and(|o| o.len() == 1) => Err(e.to_string()),
            _ => Ok(f.answer.clone()),
        })
    }

    fn made(&self, _: &str, _: &str, _: &Value, _: &Result<Value, String>) {}
}

/// A transcript: every module call of a real run and its answer, in the order they ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// `name@version` of the applet that was run.
    pub applet: String,
    pub hash: String,
    pub params: Value,
    pub calls: Vec<Entry>,
}

/// One call of a transcript: what was asked and what came back (`answer`, or `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub call: Call,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Transcript {
    pub fn load(path: &std::path::Path) -> Result<Transcript, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading the transcript {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("the transcript {} is not one `opslet run --record` wrote: {e}", path.display()))
    }
}

/// Records the calls of a real run (`opslet run --record`): answers nothing, keeps everything.
/// Values are redacted by the caller (`kit::exchange::call`) before they get here.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Entry>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// The transcript of what was recorded.
    pub fn transcript(&self, applet: &str, hash: &str, params: Value) -> Transcript {
        Transcript { applet: applet.into(), hash: hash.into(), params, calls: self.calls.lock().clone() }
    }
}

impl Exchange for Recorder {
    fn answer(&self, _: &str, _: &str, _: &Value) -> Option<Result<Value, String>> {
        None
    }

    fn made(&self, call: &str, target: &str, args: &Value, answer: &Result<Value, String>) {
        let (answer, error) = match answer {
            Ok(v) => (Some(v.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        self.calls.lock().push(Entry { call: Call { call: call.into(), target: target.into(), args: args.clone() }, answer, error });
    }
}

/// Answers a run's calls from a transcript: each call takes the first unused entry of the same
/// call, target and arguments; a call the transcript lacks fails, naming it.
pub struct Replay {
    entries: Vec<Entry>,
    used: Mutex<Vec<bool>>,
    calls: Mutex<Vec<Call>>,
    misses: Mutex<Vec<String>>,
}

impl Replay {
    pub fn new(t: &Transcript) -> Replay {
        Replay { used: Mutex::new(vec![false; t.calls.len()]), entries: t.calls.clone(), calls: Mutex::default(), misses: Mutex::default() }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    /// The calls the transcript lacks, each said once.
    pub fn misses(&self) -> Vec<String> {
        self.misses.lock().clone()
    }

    /// The transcript's calls no run has made (yet).
    pub fn unused(&self) -> Vec<Call> {
        let used = self.used.lock();
        self.entries.iter().zip(used.iter()).filter(|(_, u)| !**u).map(|(e, _)| e.call.clone()).collect()
    }
}

impl Exchange for Replay {
    fn answer(&self, call: &str, target: &str, args: &Value) -> Option<Result<Value, String>> {
        if !keep(&self.calls, &self.misses, Call { call: call.into(), target: target.into(), args: args.clone() }) {
            return Some(Err(format!("more than {MAX_CALLS} module calls in one case")));
        }
        let mut used = self.used.lock();
        let found = self
            .entries
            .iter()
            .enumerate()
            .find(|(i, e)| !used[*i] && e.call.call == call && e.call.target == target && e.call.args == *args);
        Some(match found {
            Some((i, e)) => {
                used[i] = true;
                match (&e.answer, &e.error) {
                    (_, Some(err)) => Err(err.clone()),
                    (Some(v), None) => Ok(v.clone()),
                    (None, None) => Ok(Value::Null),
                }
            }
            None => {
                let same_call: Vec<String> = self
                    .entries
                    .iter()
                    .filter(|e| e.call.call == call && e.call.target == target)
                    .map(|e| e.call.args.to_string())
                    .collect();
                let recorded = if same_call.is_empty() {
                    format!("it recorded no {call} on {target}")
                } else {
                    format!("it recorded {call} on {target} with {}", same_call.join(", "))
                };
                let m = format!("the transcript has no {call} on {target} with {}: {recorded}", json!(args));
                miss(&self.misses, &m);
                Err(m)
            }
        })
    }

    fn made(&self, _: &str, _: &str, _: &Value, _: &Result<Value, String>) {}
}

/// Where two JSON values differ, as "path: expected X, got Y" lines (at most 20).
pub fn diff(expected: &Value, got: &Value) -> Vec<String> {
    fn empty(v: &Value) -> bool {
        matches!(v, Value::Array(a) if a.is_empty()) || matches!(v, Value::Object(o) if o.is_empty())
    }
    fn walk(path: &str, e: &Value, g: &Value, out: &mut Vec<String>) {
        // An empty Lua table is an empty list and an empty map alike.
        if out.len() >= 20 || e == g || (empty(e) && empty(g)) {
            return;
        }
        match (e, g) {
            (Value::Object(eo), Value::Object(go)) => {
                let mut keys: Vec<&String> = eo.keys().chain(go.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    walk(&format!("{path}.{k}"), eo.get(k).unwrap_or(&Value::Null), go.get(k).unwrap_or(&Value::Null), out);
                }
            }
            (Value::Array(ea), Value::Array(ga)) => {
                for i in 0..ea.len().max(ga.len()) {
                    walk(&format!("{path}[{}]", i + 1), ea.get(i).unwrap_or(&Value::Null), ga.get(i).unwrap_or(&Value::Null), out);
                }
            }
            _ => out.push(format!(
                "{}: expected {}, got {}",
                if path.is_empty() { "value" } else { path.trim_start_matches('.') },
                shown(e),
                shown(g)
            )),
        }
    }
    fn shown(v: &Value) -> String {
        if v.is_null() { "nil".into() } else { v.to_string() }
    }
    let mut out = Vec::new();
    walk("", expected, got, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(call: &str, m: Value, answer: Value) -> Fake {
        Fake { call: call.into(), matching: m.as_object().cloned().unwrap_or_default(), answer }
    }

    #[test]
    fn the_last_matching_fake_answers_and_a_call_without_one_is_named() {
        let f = Fakes::within(1 << 20);
        f.add(fake("ssh.run", json!({}), json!({ "stdout": "any" }))).unwrap();
        f.add(fake("ssh.run", json!({ "host": "web1", "command": "journalctl*" }), json!({ "stdout": "ERROR" }))).unwrap();
        f.add(fake("ssh.run", json!({ "host": "web2" }), json!({ "error": "host down" }))).unwrap();
        let big = Fakes::within(100);
        assert!(big.add(fake("ssh.run", json!({}), json!({ "stdout": "x".repeat(200) }))).unwrap_err().contains("memory limit"));
        let args = json!({ "command": "journalctl -u nginx" });
        assert_eq!(f.answer("ssh.run", "web1", &args), Some(Ok(json!({ "stdout": "ERROR" }))));
        assert_eq!(f.answer("ssh.run", "web3", &args), Some(Ok(json!({ "stdout": "any" }))));
        assert_eq!(f.answer("ssh.run", "web2", &args), Some(Err("host down".into())));
        let none = f.answer("zabbix.api", "problem.get", &json!({})).unwrap().unwrap_err();
        assert!(none.contains("no fake answers zabbix.api on problem.get"), "{none}");
        assert_eq!(f.calls().len(), 4);
    }

    #[test]
    fn a_replay_answers_each_recorded_call_once_and_names_a_missing_one() {
        let r = Recorder::new();
        r.made("ssh.run", "web1", &json!({ "command": "uptime" }), &Ok(json!({ "stdout": "up 3 days" })));
        r.made("ssh.run", "web2", &json!({ "command": "uptime" }), &Err("connection refused".into()));
        let t = r.transcript("a@1.0.0", "h", json!({}));
        let text = serde_json::to_string(&t).unwrap();
        let back: Transcript = serde_json::from_str(&text).unwrap();
        let p = Replay::new(&back);
        assert_eq!(p.answer("ssh.run", "web2", &json!({ "command": "uptime" })), Some(Err("connection refused".into())));
        assert_eq!(p.unused().len(), 1);
        assert_eq!(p.answer("ssh.run", "web1", &json!({ "command": "uptime" })), Some(Ok(json!({ "stdout": "up 3 days" }))));
        let again = p.answer("ssh.run", "web1", &json!({ "command": "uptime" })).unwrap().unwrap_err();
        assert!(again.contains("the transcript has no ssh.run on web1"), "{again}");
        let other = p.answer("ssh.run", "web1", &json!({ "command": "reboot" })).unwrap().unwrap_err();
        assert!(
            other.contains("with {\"command\":\"reboot\"}") && other.contains("it recorded ssh.run on web1 with {\"command\":\"uptime\"}"),
            "{other}"
        );
    }

    #[test]
    fn diffs_name_the_paths_that_differ() {
        let d = diff(&json!({ "restarted": ["web1", "web2"], "n": 2 }), &json!({ "restarted": ["web1"], "n": 1 }));
        assert_eq!(d, ["n: expected 2, got 1", "restarted[2]: expected \"web2\", got nil"]);
        assert!(diff(&json!({ "failed": {} }), &json!({ "failed": [] })).is_empty(), "an empty table is either");
    }
}
