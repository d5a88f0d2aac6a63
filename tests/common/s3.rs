//! A real S3 store for tests: SeaweedFS, started by scripts/peers/s3.sh (idempotent, stopped by
//! PID when scripts/test.sh ends), and helpers that make each test a bucket of its own.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use opslet::modules::s3::client::Client;

pub const ACCESS: &str = "opsletaccess";
pub const SECRET: &str = "opsletsecret123";
/// An identity the store lets only read and list.
pub const RO_ACCESS: &str = "readonly";
pub const RO_SECRET: &str = "readonlysecret1";

/// What `scripts/peers/s3.sh env` says, once the store answers.
fn peer_env(name: &str) -> &'static str {
    static ENV: OnceLock<String> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/s3.sh");
        let o = std::process::Command::new("bash").args([script, "start"]).output().expect("running scripts/peers/s3.sh");
        assert!(o.status.success(), "scripts/peers/s3.sh start failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let o = std::process::Command::new("bash").args([script, "env"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    });
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("scripts/peers/s3.sh env names no {name}"))
}

/// The store's endpoint.
pub fn endpoint() -> &'static str {
    peer_env("OPSLET_S3_ENDPOINT")
}

/// The same store over TLS, and the CA file its certificate is signed by.
pub fn https_endpoint() -> (&'static str, &'static str) {
    (peer_env("OPSLET_S3_HTTPS_ENDPOINT"), peer_env("OPSLET_S3_CA"))
}

/// `[s3.NAME]` for the store, its secret key in the secret `s3-secret`.
pub fn connection(name: &str, extra: &str) -> String {
    format!("[s3.{name}]\nendpoint = \"{}\"\naccess_key = \"{ACCESS}\"\nsecret_key_secret = \"s3-secret\"\n{extra}\n", endpoint())
}

fn conn_with(access: &str, secret: &str, extra: &str) -> Client {
    let text = format!("[s3.t]\nendpoint = \"{}\"\naccess_key = \"{access}\"\nsecret_key_secret = \"x\"\n{extra}", endpoint());
    let cfg = opslet::config::Config::parse(&text, "opslet.toml").unwrap();
    let conns = opslet::modules::s3::settings::from_config(&cfg).unwrap();
    let secret = secret.to_string();
    opslet::modules::s3::client_for(&conns, "t", &|_, _| Ok(secret.clone())).unwrap()
}

/// An admin client of the store.
pub fn client() -> Arc<Client> {
    opslet::install_tls_provider();
    Arc::new(conn_with(ACCESS, SECRET, ""))
}

/// A client with `extra` settings (part_size, ...).
pub fn client_with(extra: &str) -> Arc<Client> {
    opslet::install_tls_provider();
    Arc::new(conn_with(ACCESS, SECRET, extra))
}

/// A client of the read-only identity.
pub fn readonly() -> Arc<Client> {
    opslet::install_tls_provider();
    Arc::new(conn_with(RO_ACCESS, RO_SECRET, ""))
}

pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A new bucket of this test's own (versioned when asked).
pub fn bucket(tag: &str, versioned: bool) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("t-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let c = client();
    block(async {
        c.create_bucket(&name).await.unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        if versioned {
            c.set_versioning(&name, true).await.unwrap_or_else(|e| panic!("versioning {name}: {e}"));
        }
    });
    name
}
