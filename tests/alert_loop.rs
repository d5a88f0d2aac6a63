//! The alert loop end to end, with every peer real: a problem raised in a real Zabbix on a host
//! that is a real sshd, error logs in an Elasticsearch-API server, and `alert-remediate` fired by
//! Zabbix's own action through the example webhook media type (examples/zabbix-webhook) to a real
//! `opslet serve`. It checks the logs, restarts the
//! service over ssh (which fails here: the test account may not sudo to root, and the failure is
//! what gets reported), and acknowledges the problem in Zabbix with what it did. Also the dry run
//! (the plan, nothing changed) and the triage and log applets.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Fleet;
use common::zabbix::{admin, block, problem_with, url};
use serde_json::{Value, json};

const ES: &str = "http://127.0.0.1:19200";

fn opslet(data: &Path, args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn applet(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(name).display().to_string()
}

/// Error logs for `service` on `host`: `errors` within the last minutes, plus INFO noise.
fn index_logs(index: &str, host: &str, service: &str, errors: usize) {
    let o = Command::new("bash").args([concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/es.sh"), "start"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    opslet::install_tls_provider();
    block(async {
        // The usual structured-log mapping: keyword fields for level, service and host.
        let mapping = json!({ "mappings": { "properties": {
            "@timestamp": { "type": "date" }, "level": { "type": "keyword" }, "service": { "type": "keyword" },
            "host": { "type": "keyword" }, "message": { "type": "text" } } } });
        let r = reqwest::Client::new().put(format!("{ES}/{index}")).json(&mapping).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let now = chrono::Utc::now();
        let mut body = String::new();
        for i in 0..errors + 10 {
            let level = if i < errors { "ERROR" } else { "INFO" };
            let ts = now - chrono::Duration::seconds(30 * i as i64);
            body.push_str(&format!("{{\"index\":{{\"_index\":\"{index}\"}}}}\n"));
            body.push_str(&json!({ "@timestamp": ts.to_rfc3339(), "level": level, "service": service, "host": host, "message": format!("upstream timed out ({i})") }).to_string());
            body.push('\n');
        }
        let r = reqwest::Client::new()
            .post(format!("{ES}/_bulk?refresh=true"))
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"], false);
    });
}

fn acknowledges(eventid: &str) -> Vec<String> {
    let e = block(admin().call("event.get", json!({ "eventids": [eventid], "output": ["eventid"], "select_acknowledges": ["message"] })))
        .unwrap();
    e[0]["acknowledges"].as_array().unwrap().iter().map(|a| a["message"].as_str().unwrap().to_string()).collect()
}

/// Creates, in Zabbix, the media type of examples/zabbix-webhook pointing at `hook_url`, gives it
/// to Admin, and an action sending problems of `hostid` through it.
fn zabbix_fires_webhooks(tag: &str, hostid: &str, hook_url: &str, secret: &str) {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/zabbix-webhook/opslet-webhook.js")).unwrap();
    block(async {
        let z = admin();
        let params = [
            ("url", hook_url),
            ("secret", secret),
            ("event_id", "{EVENT.ID}"),
            ("event_value", "{EVENT.VALUE}"),
            ("severity", "{EVENT.SEVERITY}"),
            ("host", "{HOST.HOST}"),
            ("name", "{EVENT.NAME}"),
            ("tags", "{EVENT.TAGSJSON}"),
        ];
        let mt = z
            .call(
                "mediatype.create",
                json!({ "type": 4, "name": format!("opslet {tag}"), "script": script, "timeout": "30s",
                        "message_templates": [{ "eventsource": 0, "recovery": 0, "subject": "Problem: {EVENT.NAME}", "message": "{EVENT.NAME}" }],
                        "parameters": params.iter().map(|(n, v)| json!({ "name": n, "value": v })).collect::<Vec<_>>() }),
            )
            .await
            .unwrap();
        let mtid = mt["mediatypeids"][0].as_str().unwrap().to_string();
        let user = z.call("user.get", json!({ "filter": { "username": "Admin" }, "selectMedias": "extend" })).await.unwrap();
        let mut medias: Vec<Value> = user[0]["medias"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| json!({ "mediatypeid": m["mediatypeid"], "sendto": m["sendto"], "active": m["active"], "severity": m["severity"], "period": m["period"] }))
            .collect();
        medias.push(json!({ "mediatypeid": mtid, "sendto": "opslet", "active": 0, "severity": 63, "period": "1-7,00:00-24:00" }));
        z.call("user.update", json!({ "userid": user[0]["userid"], "medias": medias })).await.unwrap();
        z.call(
            "action.create",
            json!({ "name": format!("opslet {tag}"), "eventsource": 0, "status": 0, "esc_period": "1h",
                    "filter": { "evaltype": 0, "conditions": [{ "conditiontype": 1, "operator": 0, "value": hostid }] },
                    "operations": [{ "operationtype": 0, "opmessage": { "default_msg": 1, "mediatypeid": mtid }, "opmessage_usr": [{ "userid": user[0]["userid"] }] }] }),
        )
        .await
        .unwrap();
    });
    // zabbix_server picks up new actions with its configuration cache (every 2 s here): an event
    // raised before that would find no action to run.
    std::thread::sleep(Duration::from_secs(5));
}

/// A data dir that reaches the test Zabbix, the ES-API server and the fleet's first host (in the
/// cmdb, key pinned, optionally in `group`), with the secrets the config names.
fn lab_data(dir: &Path, fleet: &Fleet, group: Option<&str>) -> std::path::PathBuf {
    let host = &fleet.hosts[0];
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("opslet.toml"),
        format!(
            "[zabbix.main]\nurl = \"{}\"\nuser = \"Admin\"\npassword_secret = \"zabbix-pass\"\n\n[es.logs]\nurl = \"{ES}\"\n\n\
             [[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n",
            url()
        ),
    )
    .unwrap();
    let port = host.port.to_string();
    let mut add = vec!["cmdb", "host", "add", &host.name, "--address", &host.address, "--port", &port, "--host-key", &host.host_key];
    if let Some(g) = group {
        add.extend(["--group", g]);
    }
    opslet(&data, &add);
    let mut pw = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["secret", "set", "zabbix-pass"])
        .env("OPSLET_DATA_DIR", &data)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut pw.stdin.take().unwrap(), b"zabbix").unwrap();
    assert!(pw.wait().unwrap().success());
    opslet(&data, &["secret", "set", "ssh-key", "--file", fleet.dir.path().join("client").to_str().unwrap()]);
    data
}

/// This test process's mark for the names it makes in the shared Zabbix and Elasticsearch: its
/// process id with its start time, since a process id comes again in a later run on the same
/// machine, whose Zabbix still holds the hosts an earlier run made.
fn run_mark() -> String {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| format!("{}t{}", std::process::id(), chrono::Utc::now().timestamp_micros() % 1_000_000_000)).clone()
}

#[test]
fn webhook_remediate_acknowledge_loop() {
    let tag = format!("loop{}x", run_mark());
    let fleet = Fleet::start(1, &tag);
    let host = &fleet.hosts[0];
    // A service name of this test's own, so other tests' logs do not count as evidence.
    let service = format!("checkout{}", run_mark());
    let index = format!("logs-{tag}");
    index_logs(&index, &host.name, &service, 4);

    let dir = tempfile::tempdir().unwrap();
    let data = lab_data(dir.path(), &fleet, Some("api"));
    for a in ["alert-remediate", "zabbix-triage", "log-errors"] {
        opslet(&data, &["publish", &applet(a), "-m", "bundled"]);
    }
    let secret =
        opslet(&data, &["hook", "add", "zabbix-problem", "--applet", "alert-remediate", "--map", "eventid=$.event.id"]).trim().to_string();

    // opslet serve, for Zabbix's webhook.
    let (mut child, addr) = common::serve::spawn(&data, &[]);
    let hook_url = format!("http://{addr}/hooks/zabbix-problem");

    // The problem: Zabbix's action sends it through the example media type to the hook.
    let (_, _, eventid) = problem_with(&host.name, &service, |hostid| zabbix_fires_webhooks(&tag, hostid, &hook_url, &secret));

    // The applet acknowledged the problem in Zabbix with what happened on the host.
    let t0 = Instant::now();
    let acks = loop {
        let a = acknowledges(&eventid);
        if !a.is_empty() {
            break a;
        }
        let alerts = block(admin().call("alert.get", json!({ "eventids": [eventid], "output": ["status", "error", "retries"] }))).unwrap();
        // Status 2: Zabbix gave up sending it.
        if alerts.as_array().is_some_and(|a| a.iter().any(|x| x["status"] == "2")) || t0.elapsed() > Duration::from_secs(90) {
            panic!("the problem was never acknowledged; Zabbix's alerts for it: {alerts}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(acks[0].starts_with(&format!("opslet alert-remediate: restarting {service} on {} FAILED", host.name)), "{acks:?}");
    assert!(acks[0].contains("sudo") && acks[0].contains("4 error(s) in the logs"), "{acks:?}");
    // Stopped the way an operator would (SIGTERM): it finishes and flushes the store.
    // SAFETY: signalling our own child process by pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();

    // Triage and log evidence from the CLI, now that the server is gone.
    let triage: Value =
        serde_json::from_str(&opslet(&data, &["run", "zabbix-triage", "-q", "--format", "json", "-p", "since=1h"])).unwrap();
    let row = triage.as_array().unwrap().iter().find(|r| r["eventid"] == eventid.as_str()).expect("the problem is in the triage");
    assert_eq!(
        (row["host"].as_str(), row["groups"].as_str(), row["service"].as_str()),
        (Some(host.name.as_str()), Some("api"), Some(service.as_str()))
    );
    assert_eq!(row["acknowledged"], true);
    let logs: Value =
        serde_json::from_str(&opslet(&data, &["run", "log-errors", "-q", "--format", "json", "-p", &format!("index={index}")])).unwrap();
    assert_eq!(logs[0]["service"], service.as_str());
    assert_eq!(logs[0]["errors"], 4);
    assert!(logs[0]["latest"].as_str().unwrap().contains("upstream timed out (0)"));

    // A dry run on the (now acknowledged) problem plans nothing more and changes nothing.
    let logins = fleet.logins();
    let plan: Value = serde_json::from_str(&opslet(
        &data,
        &["run", "alert-remediate", "--dry-run", "-q", "--format", "json", "-p", &format!("eventid={eventid}")],
    ))
    .unwrap();
    assert_eq!((plan["decision"].as_str(), plan["reason"].as_str()), (Some("leave"), Some("already acknowledged by someone")), "{plan}");
    assert_eq!(fleet.logins(), logins);
    assert_eq!(acknowledges(&eventid).len(), 1);

    // The audit log holds the whole story: the hook's run, the ssh command on the host, the ack.
    let audit: Value = serde_json::from_str(&opslet(&data, &["audit", "list", "--format", "json", "--limit", "80"])).unwrap();
    assert!(audit.to_string().contains("hook:zabbix-problem"), "the run is recorded as the hook's");
    let acts: Vec<&Value> = audit.as_array().unwrap().iter().filter(|r| r["kind"] == "action").collect();
    assert!(
        acts.iter().any(|a| a["data"]["module"] == "ssh"
            && a["data"]["target"] == host.name.as_str()
            && a["data"]["detail"]["command"].as_str().unwrap().contains(&format!("systemctl restart {service}"))),
        "{acts:?}"
    );
    assert!(
        acts.iter().any(|a| a["data"]["module"] == "zabbix" && a["data"]["action"] == "ack" && a["data"]["target"] == eventid.as_str())
    );
}

#[test]
fn a_dry_run_shows_the_plan_and_touches_nothing() {
    let tag = format!("dry{}x", run_mark());
    let fleet = Fleet::start(1, &tag);
    let host = &fleet.hosts[0];
    let service = format!("billing{}", run_mark());
    index_logs(&format!("logs-{tag}"), &host.name, &service, 2);
    let (_, _, eventid) = problem_with(&host.name, &service, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let data = lab_data(dir.path(), &fleet, None);
    let logins = fleet.logins();
    let plan: Value = serde_json::from_str(&opslet(
        &data,
        &["run", applet("alert-remediate").as_str(), "--dry-run", "-q", "--format", "json", "-p", &format!("eventid={eventid}")],
    ))
    .unwrap();
    assert_eq!(plan["decision"], "restart", "{plan}");
    assert_eq!(plan["errors_15m"], 2);
    assert_eq!(plan["planned_command"], format!("sudo -n -H -u root -- sh -c 'systemctl restart {service}'"));
    assert_eq!(fleet.logins(), logins, "a dry run connects nowhere");
    assert!(acknowledges(&eventid).is_empty(), "a dry run acknowledges nothing");
    // With a higher bar for evidence, the rule says no.
    let plan: Value = serde_json::from_str(&opslet(
        &data,
        &[
            "run",
            applet("alert-remediate").as_str(),
            "--dry-run",
            "-q",
            "--format",
            "json",
            "-p",
            &format!("eventid={eventid}"),
            "-p",
            "min_errors=10",
        ],
    ))
    .unwrap();
    assert_eq!(plan["decision"], "leave");
    assert!(plan["reason"].as_str().unwrap().contains("only 2 error(s)"), "{plan}");
}
