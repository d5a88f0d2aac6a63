//! The alert loop end to end, with every peer real: a problem raised in a real Zabbix on a host
//! that is a real sshd, error logs in an Elasticsearch-API server, and `alert-remediate` fired
//! through a signed webhook delivery to a real `opslet serve`. It checks the logs, restarts the
//! service over ssh (which fails here: the test account may not sudo to root, and the failure is
//! what gets reported), and acknowledges the problem in Zabbix with what it did. Also the dry run
//! (the plan, nothing changed) and the triage and log applets.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Fleet;
use common::zabbix::{admin, block, problem_on, url};
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

#[test]
fn webhook_remediate_acknowledge_loop() {
    let tag = format!("loop{}x", std::process::id());
    let fleet = Fleet::start(1, &tag);
    let host = &fleet.hosts[0];
    let (_, _, eventid) = problem_on(&host.name);
    let index = format!("logs-{tag}");
    index_logs(&index, &host.name, "api", 4);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
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
    opslet(
        &data,
        &[
            "cmdb",
            "host",
            "add",
            &host.name,
            "--address",
            &host.address,
            "--port",
            &host.port.to_string(),
            "--group",
            "api",
            "--host-key",
            &host.host_key,
        ],
    );
    let mut pw = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["secret", "set", "zabbix-pass"])
        .env("OPSLET_DATA_DIR", &data)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut pw.stdin.take().unwrap(), b"zabbix").unwrap();
    assert!(pw.wait().unwrap().success());
    opslet(&data, &["secret", "set", "ssh-key", "--file", fleet.dir.path().join("client").to_str().unwrap()]);
    for a in ["alert-remediate", "zabbix-triage", "log-errors"] {
        opslet(&data, &["publish", &applet(a), "-m", "bundled"]);
    }

    // Triage and log evidence from the CLI.
    let triage: Value =
        serde_json::from_str(&opslet(&data, &["run", "zabbix-triage", "-q", "--format", "json", "-p", "since=1h"])).unwrap();
    let row = triage.as_array().unwrap().iter().find(|r| r["eventid"] == eventid.as_str()).expect("the problem is in the triage");
    assert_eq!(
        (row["host"].as_str(), row["groups"].as_str(), row["service"].as_str()),
        (Some(host.name.as_str()), Some("api"), Some("api"))
    );
    let logs: Value =
        serde_json::from_str(&opslet(&data, &["run", "log-errors", "-q", "--format", "json", "-p", &format!("index={index}")])).unwrap();
    assert_eq!(logs[0]["service"], "api");
    assert_eq!(logs[0]["errors"], 4);
    assert!(logs[0]["latest"].as_str().unwrap().contains("upstream timed out (0)"));

    // The dry run shows the plan and changes nothing.
    let logins = fleet.logins();
    let plan: Value = serde_json::from_str(&opslet(
        &data,
        &[
            "run",
            "alert-remediate",
            "--dry-run",
            "-q",
            "--format",
            "json",
            "-p",
            &format!("eventid={eventid}"),
            "-p",
            &format!("index={index}"),
        ],
    ))
    .unwrap();
    assert_eq!(plan["decision"], "restart", "{plan}");
    assert_eq!(plan["errors_15m"], 4);
    assert_eq!(plan["planned_command"], "sudo -n -H -u root -- sh -c 'systemctl restart api'");
    assert_eq!(fleet.logins(), logins, "a dry run connects nowhere");
    assert!(acknowledges(&eventid).is_empty(), "a dry run acknowledges nothing");

    // The loop: a signed webhook delivery, as Zabbix's media type (examples/zabbix-webhook) sends it.
    let secret = opslet(
        &data,
        &["hook", "add", "zabbix-problem", "--applet", "alert-remediate", "--map", "eventid=$.event.id", "--map", "index=$.opslet.index"],
    );
    let secret = secret.trim().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OPSLET_DATA_DIR", &data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let body = json!({ "event": { "id": eventid, "severity": "High", "status": "PROBLEM" }, "host": { "name": host.name }, "opslet": { "index": index } }).to_string();
    let ts = chrono::Utc::now().timestamp();
    let sig = opslet::http::hooks::sign(&secret, ts, body.as_bytes());
    let (code, answer) = block(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/hooks/zabbix-problem"))
            .header("Content-Type", "application/json")
            .header("X-Opslet-Timestamp", ts.to_string())
            .header("X-Opslet-Signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(code, 202, "{answer}");

    // The applet acknowledged the problem in Zabbix with what happened on the host.
    let t0 = Instant::now();
    let acks = loop {
        let a = acknowledges(&eventid);
        if !a.is_empty() {
            break a;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the problem was never acknowledged");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(acks[0].starts_with(&format!("opslet alert-remediate: restarting api on {} FAILED", host.name)), "{acks:?}");
    assert!(acks[0].contains("sudo") && acks[0].contains("4 error(s) in the logs"), "{acks:?}");
    assert!(fleet.logins() > logins, "the restart went to the host over ssh");
    let _ = child.kill();
    let _ = child.wait();

    // The audit log holds the whole story: the hook's run, the ssh command on the host, the ack.
    let audit: Value = serde_json::from_str(&opslet(&data, &["audit", "list", "--format", "json", "--limit", "50"])).unwrap();
    let text = audit.to_string();
    assert!(text.contains("hook:zabbix-problem"), "the run is recorded as the hook's");
    let acts: Vec<&Value> = audit.as_array().unwrap().iter().filter(|r| r["kind"] == "action").collect();
    assert!(acts.iter().any(|a| a["data"]["module"] == "ssh"
        && a["data"]["target"] == host.name.as_str()
        && a["data"]["detail"]["command"].as_str().unwrap().contains("systemctl restart api")));
    assert!(
        acts.iter().any(|a| a["data"]["module"] == "zabbix" && a["data"]["action"] == "ack" && a["data"]["target"] == eventid.as_str())
    );
}
