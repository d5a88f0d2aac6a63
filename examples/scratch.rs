use opslet::applet::AppletPackage;
use opslet::config::Config;
use opslet::runtime::context::Caller;
use opslet::runtime::{RunRequest, Runtime};
use std::collections::BTreeMap;
use std::sync::Arc;
fn main() {
    let mut files = BTreeMap::new();
    files.insert(
        "applet.toml".to_string(),
        b"name = \"bench\"\nversion = \"1.0.0\"\n[params.n]\ntype = \"integer\"\ndefault = 1\n".to_vec(),
    );
    files.insert("main.lua".to_string(), b"return function(params, ctx) return { n = params.n + 1, id = ctx.applet_id } end".to_vec());
    let pkg = Arc::new(AppletPackage::from_files(files).unwrap());
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = opslet::store::Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
    let rt = Runtime::new(&Config::parse("[audit]\nsync = false\n", "x").unwrap(), Some(store)).unwrap();
    let t = std::time::Instant::now();
    let mut n = 0;
    while t.elapsed() < std::time::Duration::from_secs(3) {
        let o = tokio.block_on(rt.run(RunRequest::new(Arc::clone(&pkg), Caller { user: "b".into(), via: "b".into() })));
        assert!(o.result.is_ok());
        n += 1;
    }
    println!("{:?}/run", t.elapsed() / n);
}
