//! The es module against an Elasticsearch-API server (osmem-server from PyPI, started by
//! scripts/peers/es.sh; no real Elasticsearch is installable here): searches, counts and
//! aggregations checked against indexed fixtures, a scan over more documents than the applet's
//! memory could hold at once, API errors, a dead server, permissions and the query builder.

mod common;

use std::sync::OnceLock;

use common::*;
use opslet::runtime::{RunOutcome, RunStatus, Runtime};
use serde_json::{Value, json};

const ES: &str = "http://127.0.0.1:19200";
const DOCS: usize = 2400;

/// Starts the server (idempotent) and indexes the fixture once per test process.
fn index() -> &'static str {
    static INDEX: OnceLock<String> = OnceLock::new();
    INDEX.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/es.sh");
        let o = std::process::Command::new("bash").args([script, "start"]).output().unwrap();
        assert!(o.status.success(), "scripts/peers/es.sh start failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let index = format!("logs-test-{}", std::process::id());
        opslet::install_tls_provider();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = reqwest::Client::new();
            let mapping = json!({ "mappings": { "properties": {
                "@timestamp": { "type": "date" }, "level": { "type": "keyword" }, "service": { "type": "keyword" },
                "message": { "type": "text" }, "latency_ms": { "type": "integer" } } } });
            let r = c.put(format!("{ES}/{index}")).json(&mapping).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            let now = chrono::Utc::now();
            let pad = "x".repeat(2000);
            let mut body = String::new();
            for i in 0..DOCS {
                // api: every 4th an ERROR; db: every 10th; web: none. Latency = i % 100.
                let service = ["api", "db", "web"][i % 3];
                let level = match service {
                    "api" if i % 4 == 0 => "ERROR",
                    "db" if i % 10 == 0 => "ERROR",
                    _ => "INFO",
                };
                let ts = now - chrono::Duration::seconds((i as i64) % 3000);
                body.push_str(&format!("{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"{i}\"}}}}\n"));
                body.push_str(
                    &json!({ "@timestamp": ts.to_rfc3339(), "level": level, "service": service, "message": format!("request {i} {pad}"), "latency_ms": i % 100 })
                        .to_string(),
                );
                body.push('\n');
            }
            let r = c.post(format!("{ES}/_bulk?refresh=true")).header("Content-Type", "application/x-ndjson").body(body).send().await.unwrap();
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["errors"], false, "bulk failed");
        });
        index
    })
}

fn expected_errors(service: &str) -> usize {
    (0..DOCS)
        .filter(|i| ["api", "db", "web"][i % 3] == service)
        .filter(|i| match service {
            "api" => i % 4 == 0,
            "db" => i % 10 == 0,
            _ => false,
        })
        .count()
}

fn rt(conn: &str) -> Runtime {
    let cfg = opslet::config::Config::parse(&format!("[audit]\nsync = false\n{conn}"), "opslet.toml").unwrap();
    opslet::modules::runtime(&cfg, Some(opslet::store::Store::temporary().unwrap())).unwrap()
}

fn logs() -> Runtime {
    rt(&format!("[es.logs]\nurl = \"{ES}\"\n"))
}

fn applet(rt: &Runtime, scope: &str, limits: &str, main: &str) -> RunOutcome {
    let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nes = {scope}\n{limits}");
    run(rt, package_with(&m, main, &[]))
}

#[test]
fn searches_counts_and_aggregations_match_the_indexed_fixture() {
    let index = index();
    let main = format!(
        r#"local q = require "opslet.es"
        return function()
            local api_errors = es.count("{index}", q.bool({{ filter = {{ q.term("service", "api"), q.term("level", "ERROR") }} }}))
            local recent = es.count("{index}", q.since("@timestamp", "1h"))
            local top = es.search("{index}", q.bool({{ filter = {{ q.term("level", "ERROR") }} }}), {{ size = 3, sort = {{ {{ latency_ms = "desc" }} }}, source = {{ "service", "latency_ms" }} }})
            local a = es.aggs("{index}", {{
                by_service = {{ terms = {{ field = "service" }} }},
                slow = {{ max = {{ field = "latency_ms" }} }},
                mean = {{ avg = {{ field = "latency_ms" }} }},
                p = {{ percentiles = {{ field = "latency_ms", percents = {{ 50 }} }} }},
                per_10m = {{ date_histogram = {{ field = "@timestamp", fixed_interval = "10m" }} }},
            }}, q.term("level", "ERROR"))
            return {{ api_errors = api_errors, recent = recent, top = top, a = a }}
        end"#
    );
    let o = applet(&logs(), "[\"read\"]", "", &main);
    let v = o.result.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["api_errors"], expected_errors("api"));
    assert_eq!(v["recent"], DOCS);
    assert_eq!(v["top"]["total"], expected_errors("api") + expected_errors("db"));
    assert_eq!(v["top"]["hits"].as_array().unwrap().len(), 3);
    assert!(v["top"]["hits"][0]["source"]["latency_ms"].as_u64().unwrap() >= v["top"]["hits"][2]["source"]["latency_ms"].as_u64().unwrap());
    assert!(v["top"]["hits"][0]["source"].get("message").is_none(), "source filtering");
    let buckets = v["a"]["by_service"]["buckets"].as_array().unwrap();
    let count_of = |s: &str| buckets.iter().find(|b| b["key"] == s).map(|b| b["doc_count"].as_u64().unwrap()).unwrap_or(0) as usize;
    assert_eq!(count_of("api"), expected_errors("api"));
    assert_eq!(count_of("db"), expected_errors("db"));
    assert_eq!(count_of("web"), 0);
    let error_latencies: Vec<usize> =
        (0..DOCS).filter(|i| (i % 3 == 0 && i % 4 == 0) || (i % 3 == 1 && i % 10 == 0)).map(|i| i % 100).collect();
    assert_eq!(v["a"]["slow"]["value"].as_f64().unwrap() as usize, *error_latencies.iter().max().unwrap());
    let mean = error_latencies.iter().sum::<usize>() as f64 / error_latencies.len() as f64;
    assert!((v["a"]["mean"]["value"].as_f64().unwrap() - mean).abs() < 0.01);
    assert!(v["a"]["p"]["values"].as_object().is_some_and(|m| !m.is_empty()));
    let per: u64 = v["a"]["per_10m"]["buckets"].as_array().unwrap().iter().map(|b| b["doc_count"].as_u64().unwrap()).sum();
    assert_eq!(per as usize, error_latencies.len());
}

#[test]
fn scan_walks_everything_in_pages_within_a_small_memory_limit() {
    let index = index();
    let limits = "[limits]\nmemory = \"3MiB\"\n";
    // ~2 KB per document, 2400 of them: about 5 MB, more than the 3 MiB heap could hold.
    let main = format!(
        r#"return function()
            local n, bytes = 0, 0
            local seen = es.scan("{index}", nil, function(hit) n += 1; bytes += #hit.source.message end, {{ size = 200 }})
            local stopped = es.scan("{index}", nil, function(hit) return false end)
            return {{ n = n, seen = seen, bytes = bytes, stopped = stopped }}
        end"#
    );
    let o = applet(&logs(), "[\"read\"]", limits, &main);
    let v = o.result.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((v["n"].as_u64(), v["seen"].as_u64(), v["stopped"].as_u64()), (Some(DOCS as u64), Some(DOCS as u64), Some(1)));
    assert!(v["bytes"].as_u64().unwrap() > 4_000_000);
    // The same documents fetched in one search do not fit.
    let main = format!(r#"return function() return #es.search("{index}", nil, {{ size = 2400 }}).hits end"#);
    let o = applet(&logs(), "[\"read\"]", limits, &main);
    assert_eq!(o.status, RunStatus::LimitExceeded, "{:?}", o.result);
}

#[test]
fn errors_are_clear_and_permissions_hold() {
    let index = index();
    let o = applet(&logs(), "[\"read\"]", "", &format!(r#"return function() return es.search("{index}", {{ bogus = {{}} }}) end"#));
    let e = err_text(&o);
    assert!(e.contains("es.search: logs answered HTTP 400: parsing_exception: unknown query [bogus]"), "{e}");

    let dead = rt("[es.logs]\nurl = \"http://127.0.0.1:1\"\n");
    let o = applet(&dead, "[\"read\"]", "", "return function() return es.count('x') end");
    let e = err_text(&o);
    assert!(e.contains("127.0.0.1:1") && e.to_lowercase().contains("connect"), "{e}");

    for (main, want) in [
        (r#"es.search("../etc", nil)"#, "is not an index name"),
        (r#"es.search("..", nil)"#, "is not an index name"),
        (r#"es.count("logs,.security")"#, "is not an index name"),
        (r#"es.search("logs", nil, { size = 20000 })"#, "at most 10000"),
        (r#"es.search("logs", nil, { sise = 1 })"#, "unknown option `sise`"),
        (r#"es.connection("nope")"#, "no es connection `nope`"),
        (r#"require("opslet.es").since("@timestamp", "yesterday")"#, "not a duration"),
    ] {
        let o = applet(&logs(), "[\"read\"]", "", &format!("return function() return {main} end"));
        assert!(err_text(&o).contains(want), "{main}: {}", err_text(&o));
    }
    let o = run(&logs(), package("return function() return es.count('x') end"));
    assert!(err_text(&o).contains("does not declare the `es` permission"));
    let bad = opslet::applet::AppletPackage::from_files(
        [
            ("applet.toml".to_string(), b"name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nes = [\"write\"]\n".to_vec()),
            ("main.lua".to_string(), b"return function() end".to_vec()),
        ]
        .into(),
    )
    .unwrap();
    assert!(bad.check_modules(logs().modules()).unwrap_err().to_string().contains("only reads"));
    let _ = json!(null);
}
