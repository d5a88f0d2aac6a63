//! Embedding opslet's runtime in another Rust program: load an applet folder, run it with
//! params, read the result, logs and audit trail. Run with:
//!
//!     cargo run --example embed -- applets/log-excerpt
use std::sync::Arc;

use opslet::applet::AppletPackage;
use opslet::config::Config;
use opslet::runtime::RunRequest;
use opslet::runtime::context::Caller;
use opslet::store::Store;
use opslet::store::audit::Filter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "applets/log-excerpt".into());
    let package = Arc::new(AppletPackage::load_dir(dir.as_ref())?);
    let store = Store::temporary()?;
    let runtime = opslet::modules::runtime(&Config::default(), Some(store.clone()))?;

    let mut req = RunRequest::new(package, Caller { user: "example".into(), via: "embed".into() });
    req.params_pairs = vec![
        ("text".into(), "2024-05-01T10:00:00Z ERROR [api] timeout after 3000 ms\n2024-05-01T10:00:01Z INFO [api] ok".into()),
        ("mode".into(), "summary".into()),
    ];
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = tokio.block_on(runtime.run(req));

    for line in &outcome.logs {
        println!("log [{}] {}", line.level.name(), line.message);
    }
    match &outcome.result {
        Ok(v) => println!("result: {}", serde_json::to_string_pretty(v)?),
        Err(e) => println!("failed: {e}"),
    }
    println!("took {:?} ({:?} CPU)", outcome.duration, outcome.cpu);
    for rec in store.audit().list(&Filter { run_id: Some(outcome.run_id.clone()), ..Filter::default() })? {
        println!("audit #{} {} {}", rec.seq, rec.kind, rec.status.unwrap_or_default());
    }
    Ok(())
}
