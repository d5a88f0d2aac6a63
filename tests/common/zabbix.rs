//! A real Zabbix for tests: started by scripts/peers/zabbix.sh (idempotent), and a helper that
//! raises a real problem on a new host.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opslet::modules::zabbix::client::{Client, Login};
use serde_json::json;

pub fn url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/zabbix.sh");
        let o = std::process::Command::new("bash").args([script, "start"]).output().expect("running scripts/peers/zabbix.sh");
        assert!(o.status.success(), "scripts/peers/zabbix.sh start failed:\n{}", String::from_utf8_lossy(&o.stderr));
        "http://127.0.0.1:18080/api_jsonrpc.php".to_string()
    })
}

pub fn admin() -> Client {
    Client::new("test", url(), Login::Password { user: "Admin".into(), password: "zabbix".into() }, Duration::from_secs(30), None).unwrap()
}

pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A host with a trapper item `app.load` and a trigger `> 5` (manual close), fed a 9: a real
/// problem. Returns (host name, itemid, eventid).
pub fn problem_host(tag: &str) -> (String, String, String) {
    problem_on(&format!("opslet-{tag}-{}-{}", std::process::id(), chrono::Utc::now().timestamp_micros() % 1_000_000_000))
}

/// Raises a real problem on a new Zabbix host called `name`: (name, itemid, eventid).
pub fn problem_on(name: &str) -> (String, String, String) {
    problem_with(name, "api", |_| {})
}

/// Like `problem_on`, with the host's `service` tag, and `before` called with the host id
/// before the value that raises the problem is sent (to set up actions first).
pub fn problem_with(name: &str, service: &str, before: impl FnOnce(&str) + Send) -> (String, String, String) {
    let name = name.to_string();
    block(async {
        let z = admin();
        let h = z
            .call(
                "host.create",
                json!({ "host": name, "groups": [{ "groupid": "2" }], "tags": [{ "tag": "service", "value": service }],
                "interfaces": [{ "type": 1, "main": 1, "useip": 1, "ip": "127.0.0.1", "dns": "", "port": "10050" }] }),
            )
            .await
            .unwrap();
        let hostid = h["hostids"][0].as_str().unwrap().to_string();
        let i = z
            .call("item.create", json!({ "hostid": hostid, "name": "App load", "key_": "app.load", "type": 2, "value_type": 3 }))
            .await
            .unwrap();
        let itemid = i["itemids"][0].as_str().unwrap().to_string();
        z.call(
            "trigger.create",
            json!({ "description": format!("High load on {name}"), "expression": format!("last(/{name}/app.load)>5"), "priority": 4, "manual_close": 1 }),
        )
        .await
        .unwrap();
        // Off this runtime's thread: `before` may block on calls of its own.
        std::thread::scope(|scope| scope.spawn(|| before(&hostid)).join().expect("the set-up before the problem"));
        // The server accepts values for a new item once its config cache has synced (~2 s).
        let t0 = Instant::now();
        loop {
            let o = std::process::Command::new("zabbix_sender")
                .args(["-z", "127.0.0.1", "-p", "10051", "-s", &name, "-k", "app.load", "-o", "9"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&o.stdout).contains("processed: 1") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "zabbix_sender never got through: {}", String::from_utf8_lossy(&o.stdout));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let t0 = Instant::now();
        let eventid = loop {
            let p = z.call("problem.get", json!({ "hostids": [hostid], "output": ["eventid"] })).await.unwrap();
            if let Some(e) = p.get(0) {
                break e["eventid"].as_str().unwrap().to_string();
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no problem was raised");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        (name, itemid, eventid)
    })
}
