//! The virt module's OpenStack backend against a real control plane (Keystone, Nova with its
//! fake virt driver, Placement, Glance; RabbitMQ and MariaDB), started by
//! scripts/peers/openstack.sh: logins by password and application credential, a revoked token
//! re-authenticated, a wrong password; every call, a server's whole life; a server that goes
//! to ERROR reported with its fault; permissions refused before anything changes; dry-run
//! plans; and the VM applets on OpenStack.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::*;
use opslet::runtime::{RunOutcome, Runtime};
use opslet::store::Store;
use serde_json::{Value, json};

/// `scripts/peers/openstack.sh env`, once the cloud answers.
fn env() -> &'static BTreeMap<String, String> {
    static ENV: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/openstack.sh");
        let o = std::process::Command::new("bash").args([script, "start"]).output().expect("running scripts/peers/openstack.sh");
        assert!(o.status.success(), "scripts/peers/openstack.sh start failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let o = std::process::Command::new("bash").args([script, "env"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('\'').trim_matches('"').to_string()))
            .collect()
    })
}

fn e(k: &str) -> &'static str {
    env().get(k).unwrap_or_else(|| panic!("openstack.sh env names no {k}")).as_str()
}

struct Lab {
    store: Store,
    rt: Runtime,
}

/// A runtime whose `[virt.cloud]` logs in as `who` ("admin" or "demo"), with `extra` keys or a
/// whole other connection in `tables`.
fn lab(who: &str, tables: &str) -> Lab {
    let store = Store::temporary().unwrap();
    let secrets = opslet::secrets::Secrets::open(store.clone()).unwrap();
    secrets.set("os-admin", e("OPSLET_OS_ADMIN_PASSWORD").as_bytes(), "tester").unwrap();
    secrets.set("os-demo", e("OPSLET_OS_DEMO_PASSWORD").as_bytes(), "tester").unwrap();
    let (user, project, secret) = match who {
        "admin" => (e("OPSLET_OS_ADMIN_USER"), e("OPSLET_OS_ADMIN_PROJECT"), "os-admin"),
        _ => (e("OPSLET_OS_DEMO_USER"), e("OPSLET_OS_DEMO_PROJECT"), "os-demo"),
    };
    let config = format!(
        "[audit]\nsync = false\n[limits]\ntimeout = \"600s\"\n[virt.cloud]\nauth_url = \"{}\"\nuser = \"{user}\"\npassword_secret = \"{secret}\"\nproject = \"{project}\"\nregion = \"{}\"\nwait = \"180s\"\n{tables}",
        e("OPSLET_OS_AUTH_URL"),
        e("OPSLET_OS_REGION"),
    );
    let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    Lab { store, rt }
}

impl Lab {
    fn run(&self, scope: &str, main: &str, dry_run: bool) -> RunOutcome {
        let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nvirt = {scope}\n[limits]\ntimeout = \"600s\"\n");
        let mut r = req(package_with(&m, main, &[]));
        r.dry_run = dry_run;
        run_req(&self.rt, r)
    }
}

/// A name of this test process's own.
fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), chrono::Utc::now().timestamp_micros() % 1_000_000)
}

/// A Keystone token for `user` in `project` (to set things up the module does not do).
fn keystone_token(user: &str, password: &str, project: &str) -> (String, Value) {
    opslet::install_tls_provider();
    block_on(async {
        let body = json!({ "auth": { "identity": { "methods": ["password"], "password": { "user": { "name": user, "domain": { "name": "Default" }, "password": password } } },
            "scope": { "project": { "name": project, "domain": { "name": "Default" } } } } });
        let r = reqwest::Client::new().post(format!("{}/auth/tokens", e("OPSLET_OS_AUTH_URL"))).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "login {user}: {}", r.status());
        let token = r.headers()["x-subject-token"].to_str().unwrap().to_string();
        (token, r.json().await.unwrap())
    })
}

/// Makes the flavor `m1.small` (1 vCPU, 1 GiB) the resize test goes to, when it is not there.
fn small_flavor() {
    let (token, body) = keystone_token(e("OPSLET_OS_ADMIN_USER"), e("OPSLET_OS_ADMIN_PASSWORD"), e("OPSLET_OS_ADMIN_PROJECT"));
    let nova = body["token"]["catalog"].as_array().unwrap().iter().find(|s| s["type"] == "compute").unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["interface"] == "public")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    block_on(async {
        let c = reqwest::Client::new();
        let r = c.get(format!("{nova}/flavors/m1.small")).header("X-Auth-Token", &token).send().await.unwrap();
        if r.status() == 404 {
            let f = json!({ "flavor": { "name": "m1.small", "id": "m1.small", "ram": 1024, "vcpus": 1, "disk": 1 } });
            let r = c.post(format!("{nova}/flavors")).header("X-Auth-Token", &token).json(&f).send().await.unwrap();
            assert!(r.status().is_success() || r.status() == 409, "creating m1.small: {}", r.status());
        }
    });
}

#[test]
fn a_server_lives_its_whole_life_through_the_module_and_is_audited() {
    small_flavor();
    let lab = lab("demo", "");
    let name = unique("life");
    let image = e("OPSLET_OS_IMAGE");
    let main = format!(
        r#"return function()
            local seen = {{}}
            local function note(step) local vm = virt.info("cloud", "{name}") table.insert(seen, {{ step = step, state = vm.state, status = vm.status, flavor = vm.flavor }}) end
            virt.create("cloud", {{ name = "{name}", flavor = "m1.tiny", image = "{image}", metadata = {{ owner = "ops" }} }})
            note("created")
            local vm = virt.info("cloud", "{name}")
            virt.reboot("cloud", "{name}")
            note("rebooted")
            virt.reboot("cloud", "{name}", {{ hard = true }})
            note("hard-rebooted")
            virt.shutdown("cloud", "{name}")
            note("stopped")
            local off = virt.list("cloud", {{ state = "shutoff" }})
            virt.start("cloud", "{name}")
            note("started")
            virt.resize("cloud", "{name}", "m1.small")
            note("resized")
            virt.confirm_resize("cloud", "{name}")
            note("confirmed")
            local log = virt.console_log("cloud", "{name}", {{ lines = 5 }})
            local flavors = virt.flavors("cloud")
            local images = virt.images("cloud")
            virt.delete("cloud", "{name}")
            local after = virt.list("cloud")
            local gone = true
            for _, v in ipairs(after) do if v.name == "{name}" then gone = false end end
            return {{ seen = seen, vm = vm, off = off, log = log, flavors = flavors, images = images, gone = gone }}
        end"#
    );
    let o = lab.run(r#"["read", "write"]"#, &main, false);
    let v = ok(&o);
    let steps: Vec<(String, String)> = v["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().to_string()))
        .collect();
    let want = [
        ("created", "running"),
        ("rebooted", "running"),
        ("hard-rebooted", "running"),
        ("stopped", "shutoff"),
        ("started", "running"),
        ("resized", "verify_resize"),
        ("confirmed", "running"),
    ];
    assert_eq!(steps, want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>(), "{v}");
    assert_eq!(v["seen"][6]["flavor"], "m1.small", "the resize took");
    let vm = &v["vm"];
    assert_eq!((vm["flavor"].as_str(), vm["vcpus"].as_u64(), vm["memory_mib"].as_u64()), (Some("m1.tiny"), Some(1), Some(512)));
    assert_eq!(vm["image"], image);
    assert_eq!(vm["power_state"], "running");
    assert!(vm["project"].is_string() && vm["created"].is_string());
    assert!(v["off"].as_array().unwrap().iter().any(|s| s["name"] == name.as_str()), "listed as shutoff while stopped");
    assert!(v["log"].is_string());
    assert!(v["flavors"].as_array().unwrap().iter().any(|f| f["name"] == "m1.tiny" && f["memory_mib"] == 512));
    assert!(v["images"].as_array().unwrap().iter().any(|i| i["id"] == image));
    assert_eq!(v["gone"], true);

    // Audited: each change with the state before and after.
    let acts = actions(&lab.store, &o);
    let of = |a: &str| acts.iter().filter(|r| r.data["action"] == a).collect::<Vec<_>>();
    assert_eq!(of("create").len(), 1);
    assert_eq!(of("create")[0].data["detail"]["after"]["status"], "ACTIVE");
    assert_eq!(of("reboot").len(), 2);
    let stop = of("shutdown");
    assert_eq!(
        (stop[0].data["detail"]["before"]["status"].as_str(), stop[0].data["detail"]["after"]["status"].as_str()),
        (Some("ACTIVE"), Some("SHUTOFF"))
    );
    assert_eq!(of("resize")[0].data["detail"]["after"]["status"], "VERIFY_RESIZE");
    assert_eq!(of("delete")[0].data["detail"]["after"], Value::Null);
    assert!(of("delete")[0].data["detail"]["before"]["id"].is_string());
}

#[test]
fn logins_by_password_and_application_credential_a_revoked_token_and_a_wrong_password() {
    // An application credential of the demo user, made through Keystone.
    let (token, body) = keystone_token(e("OPSLET_OS_DEMO_USER"), e("OPSLET_OS_DEMO_PASSWORD"), e("OPSLET_OS_DEMO_PROJECT"));
    let user_id = body["token"]["user"]["id"].as_str().unwrap().to_string();
    let cred: Value = block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/users/{user_id}/application_credentials", e("OPSLET_OS_AUTH_URL")))
            .header("X-Auth-Token", &token)
            // The role named: left out, Keystone copies the token's roles, implied ones
            // (reader) included, and then may not find those assigned.
            .json(&json!({ "application_credential": { "name": unique("opslet-test"), "roles": [{ "name": "member" }] } }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{status}: {text}");
        serde_json::from_str(&text).unwrap()
    });
    let id = cred["application_credential"]["id"].as_str().unwrap();
    let secret = cred["application_credential"]["secret"].as_str().unwrap();
    let app = {
        let store = Store::temporary().unwrap();
        opslet::secrets::Secrets::open(store.clone()).unwrap().set("os-app", secret.as_bytes(), "tester").unwrap();
        let config = format!(
            "[audit]\nsync = false\n[virt.app]\nauth_url = \"{}\"\napplication_credential_id = \"{id}\"\napplication_credential_secret = \"os-app\"\n",
            e("OPSLET_OS_AUTH_URL")
        );
        let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
        Lab { rt: opslet::modules::runtime(&cfg, Some(store.clone())).unwrap(), store }
    };
    let o = app.run(r#"["read"]"#, r#"return function() return #virt.flavors("app") end"#, false);
    assert!(ok(&o).as_u64().unwrap() >= 2, "the application credential logs in");

    // A wrong password: Keystone's refusal, named with who tried.
    let store = Store::temporary().unwrap();
    opslet::secrets::Secrets::open(store.clone()).unwrap().set("os-bad", b"not-the-password", "tester").unwrap();
    let config = format!(
        "[audit]\nsync = false\n[virt.bad]\nauth_url = \"{}\"\nuser = \"{}\"\npassword_secret = \"os-bad\"\nproject = \"{}\"\n",
        e("OPSLET_OS_AUTH_URL"),
        e("OPSLET_OS_DEMO_USER"),
        e("OPSLET_OS_DEMO_PROJECT")
    );
    let bad = Lab {
        rt: opslet::modules::runtime(&opslet::config::Config::parse(&config, "opslet.toml").unwrap(), Some(store.clone())).unwrap(),
        store,
    };
    let o = bad.run(r#"["read"]"#, r#"return function() return virt.list("bad") end"#, false);
    let err = err_text(&o);
    assert!(err.contains("virt.list: Keystone refused the login as") && err.contains("(HTTP 401)"), "{err}");
    assert!(!err.contains("not-the-password"));

    // A token revoked under the client (as an expired one answers 401): one new login, and
    // the call goes through.
    let settings = opslet::config::Config::parse(
        &format!(
            "[virt.c]\nauth_url = \"{}\"\nuser = \"{}\"\npassword_secret = \"x\"\nproject = \"{}\"\n",
            e("OPSLET_OS_AUTH_URL"),
            e("OPSLET_OS_DEMO_USER"),
            e("OPSLET_OS_DEMO_PROJECT")
        ),
        "opslet.toml",
    )
    .unwrap();
    let conns = opslet::modules::virt::settings::from_config(&settings).unwrap();
    let Some(opslet::modules::virt::settings::Conn::OpenStack(conf)) = conns.get("c") else { panic!() };
    let cloud = opslet::modules::virt::openstack::Cloud::new("c", conf, e("OPSLET_OS_DEMO_PASSWORD").to_string()).unwrap();
    block_on(async {
        cloud.flavors().await.unwrap();
        assert_eq!(cloud.logins.load(std::sync::atomic::Ordering::Relaxed), 1);
        let held = cloud.current_token().unwrap();
        let r = reqwest::Client::new()
            .delete(format!("{}/auth/tokens", e("OPSLET_OS_AUTH_URL")))
            .header("X-Auth-Token", &token)
            .header("X-Subject-Token", &held)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "revoking: {}", r.status());
        cloud.flavors().await.unwrap();
        assert_eq!(cloud.logins.load(std::sync::atomic::Ordering::Relaxed), 2, "logged in again after the 401");
        assert_ne!(cloud.current_token().unwrap(), held);
    });
}

#[test]
fn a_server_that_goes_to_error_is_reported_with_its_fault() {
    let lab = lab("demo", "");
    let name = unique("huge");
    let main = format!(
        r#"return function()
            local ok, err = pcall(virt.create, "cloud", {{ name = "{name}", flavor = "{}", image = "{}" }})
            local vm = virt.info("cloud", "{name}")
            virt.delete("cloud", "{name}")
            return {{ ok = ok, err = tostring(err), state = vm.state, fault = vm.fault }}
        end"#,
        e("OPSLET_OS_HUGE_FLAVOR"),
        e("OPSLET_OS_IMAGE")
    );
    let o = lab.run(r#"["read", "write"]"#, &main, false);
    let v = ok(&o);
    assert_eq!(v["ok"], false);
    assert!(v["err"].as_str().unwrap().contains(&format!("{name} went to ERROR: No valid host was found")), "{v}");
    assert_eq!(v["state"], "error");
    assert!(v["fault"]["message"].as_str().unwrap().contains("No valid host"), "{v}");
    let acts = actions(&lab.store, &o);
    let create = acts.iter().find(|r| r.data["action"] == "create").unwrap();
    assert_eq!(create.status.as_deref(), Some("error"));
    assert!(create.data["detail"]["error"].as_str().unwrap().contains("No valid host"));
}

#[test]
fn permissions_refuse_before_anything_changes_and_dry_runs_plan() {
    let admin = lab("admin", "");
    let name = unique("guarded");
    // A server in the admin project.
    let o = admin.run(
        r#"["read", "write"]"#,
        &format!(
            r#"return function() return virt.create("cloud", {{ name = "{name}", flavor = "m1.tiny", image = "{}" }}) end"#,
            e("OPSLET_OS_IMAGE")
        ),
        false,
    );
    assert_eq!(ok(&o), true);
    let demo_project = e("OPSLET_OS_DEMO_PROJECT");
    for (scope, call, want) in [
        (r#"["read"]"#, format!(r#"virt.reboot("cloud", "{name}")"#), "does not grant `write`"),
        (r#"["read", "power"]"#, format!(r#"virt.delete("cloud", "{name}")"#), "does not grant `write`"),
        (r#"["read", "power"]"#, format!(r#"virt.resize("cloud", "{name}", "m1.small")"#), "does not grant `write`"),
        (
            r#"{ actions = ["read", "write"], connections = ["other"] }"#,
            format!(r#"virt.delete("cloud", "{name}")"#),
            "connection `cloud` is not among",
        ),
        (
            &format!(r#"{{ actions = ["read", "write"], projects = ["{demo_project}"] }}"#) as &str,
            format!(r#"virt.shutdown("cloud", "{name}")"#),
            "not among the applet's virt projects",
        ),
        (
            r#"["read", "write"]"#,
            r#"virt.create("cloud", { name = "x", image = "nope-image", flavor = "m1.tiny" })"#.to_string(),
            "spec.image: no image `nope-image`",
        ),
        (r#"["read", "write"]"#, r#"virt.create("cloud", { name = "x", flavor = "m1.tiny" })"#.to_string(), "spec.image is required"),
        (
            r#"["read", "write"]"#,
            r#"virt.create("cloud", { name = "x", disk = "/x.qcow2", image = "tiny" })"#.to_string(),
            "spec.disk: a libvirt key",
        ),
        (r#"["read"]"#, r#"virt.info("cloud", "no-such-server")"#.to_string(), "no server `no-such-server`"),
        (r#"["read"]"#, r#"virt.list("cloud", { stat = "running" })"#.to_string(), "unknown option `stat`"),
    ] {
        let o = admin.run(scope, &format!("return function() return {call} end"), false);
        assert!(err_text(&o).contains(want), "{call}: {}", err_text(&o));
    }
    // A project-limited applet sees only its projects' servers.
    let o = admin.run(
        &format!(r#"{{ actions = ["read"], projects = ["{demo_project}"] }}"#),
        r#"return function() return virt.list("cloud", { all_projects = true }) end"#,
        false,
    );
    assert!(!ok(&o).as_array().unwrap().iter().any(|s| s["name"] == name.as_str()), "another project's server is not listed");

    // A dry run reads what its plan rests on and changes nothing.
    let o = admin.run(
        r#"["read", "write"]"#,
        &format!(
            r#"return function()
                return {{ virt.reboot("cloud", "{name}", {{ hard = true }}), virt.delete("cloud", "{name}"),
                    virt.create("cloud", {{ name = "{name}-2", vcpus = 1, memory = 400, image = "{}" }}) }}
            end"#,
            e("OPSLET_OS_IMAGE")
        ),
        true,
    );
    assert_eq!(ok(&o), &json!([false, false, false]));
    let plan: Vec<&Value> = o.plan.iter().filter(|s| s["module"] == "virt").collect();
    assert_eq!(plan.len(), 3, "{:?}", o.plan);
    assert_eq!(plan[0]["detail"]["before"], "ACTIVE");
    assert_eq!(plan[2]["detail"]["create"]["flavor"], "m1.tiny", "the smallest flavor that fits");
    let o = admin.run(r#"["read"]"#, &format!(r#"return function() return virt.info("cloud", "{name}").state end"#), false);
    assert_eq!(ok(&o), "running", "still there, untouched");
    let o = admin.run(r#"["read", "write"]"#, &format!(r#"return function() return virt.delete("cloud", "{name}") end"#), false);
    assert_eq!(ok(&o), true);
}

#[test]
fn the_resource_pool_and_every_project_as_an_admin_sees_them() {
    let admin = lab("admin", "");
    let o = admin.run(
        r#"["read"]"#,
        r#"return function()
            return { hv = virt.hypervisors("cloud"), usage = virt.usage("cloud", { since = "1h" }), all = virt.list("cloud", { all_projects = true, limit = 5 }) }
        end"#,
        false,
    );
    let v = ok(&o);
    let hv = &v["hv"][0];
    assert!(hv["vcpus"].as_u64().unwrap() >= 1 && hv["memory_mib"].as_u64().unwrap() >= 1024, "{hv}");
    assert_eq!(hv["state"], "up");
    assert!(v["usage"].is_array());
    assert!(v["all"].as_array().unwrap().len() <= 5);
    // A member of a project may not read the hypervisors: the cloud's refusal passes through.
    let demo = lab("demo", "");
    let o = demo.run(r#"["read"]"#, r#"return function() return virt.hypervisors("cloud") end"#, false);
    assert!(err_text(&o).contains("(HTTP 403)"), "{}", err_text(&o));
}

#[test]
fn the_vm_applets_run_on_openstack_as_on_libvirt() {
    let admin = lab("admin", "");
    let dir = |n: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(n);
    let run_applet = |name: &str, params: &[(&str, &str)], dry_run: bool| {
        let mut r = req(std::sync::Arc::new(opslet::applet::AppletPackage::load_dir(&dir(name)).unwrap()));
        r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r.dry_run = dry_run;
        run_req(&admin.rt, r)
    };
    let name = unique("prov");
    let image = e("OPSLET_OS_IMAGE");
    // vm-provision: no flavor given, the smallest fitting 1 vCPU and 256 MiB is chosen.
    let params = [("connection", "cloud"), ("name", name.as_str()), ("vcpus", "1"), ("memory_mib", "256"), ("image", image)];
    let o = run_applet("vm-provision", &params, true);
    assert_eq!(ok(&o)["planned"], true);
    let o = run_applet("vm-provision", &params, false);
    let v = ok(&o);
    assert_eq!(
        (v["name"].as_str(), v["state"].as_str(), v["flavor"].as_str()),
        (Some(name.as_str()), Some("running"), Some("m1.tiny")),
        "{v}"
    );
    // vm-inventory lists it, running ones first.
    let o = run_applet("vm-inventory", &[("connection", "cloud"), ("state", "running")], false);
    let rows = ok(&o).as_array().unwrap();
    assert!(rows.iter().any(|r| r["name"] == name.as_str() && r["vcpus"] == 1 && r["memory_mib"] == 512), "{rows:?}");
    // vm-capacity: the pool, and a server in ERROR across projects.
    let demo = lab("demo", "");
    let broken = unique("broken");
    let o = demo.run(
        r#"["read", "write"]"#,
        &format!(
            r#"return function() return pcall(virt.create, "cloud", {{ name = "{broken}", flavor = "{}", image = "{image}" }}) end"#,
            e("OPSLET_OS_HUGE_FLAVOR")
        ),
        false,
    );
    assert!(o.result.is_ok());
    let o = run_applet("vm-capacity", &[("connection", "cloud")], false);
    let v = ok(&o);
    assert!(v["totals"]["vcpus"].as_u64().unwrap() >= 1 && v["totals"]["running_vms"].as_u64().unwrap() >= 1, "{v}");
    let err = v["error"].as_array().unwrap().iter().find(|e| e["name"] == broken.as_str()).unwrap_or_else(|| panic!("{v}"));
    assert!(err["fault"].as_str().unwrap().contains("No valid host"), "{err}");
    assert_ne!(err["project"], Value::Null);
    for (lab, n) in [(&admin, name.as_str()), (&demo, broken.as_str())] {
        let o = lab.run(r#"["read", "write"]"#, &format!(r#"return function() return virt.delete("cloud", "{n}") end"#), false);
        assert_eq!(ok(&o), true);
    }
}

#[test]
fn a_change_still_under_way_when_the_wait_ends_is_an_error_naming_its_state() {
    let lab = lab("demo", "");
    let name = unique("slow");
    let main = format!(
        r#"return function()
            -- Building takes seconds (scheduling, placement, the spawn): 50 ms is not enough.
            local ok, err = pcall(virt.create, "cloud", {{ name = "{name}", flavor = "m1.tiny", image = "{}" }}, {{ timeout = 0.05 }})
            -- it settles by itself; then it goes
            for _ = 1, 200 do
                if virt.info("cloud", "{name}").state == "running" then break end
                time.sleep(0.1)
            end
            virt.delete("cloud", "{name}")
            return {{ ok = ok, err = tostring(err) }}
        end"#,
        e("OPSLET_OS_IMAGE")
    );
    let o = lab.run(r#"["read", "write"]"#, &main, false);
    let v = ok(&o);
    assert_eq!(v["ok"], false);
    let err = v["err"].as_str().unwrap();
    assert!(err.contains(&format!("virt.create: {name} is still BUILD")) && err.contains("after 50ms (waiting for ACTIVE)"), "{err}");
    let acts = actions(&lab.store, &o);
    let create = acts.iter().find(|r| r.data["action"] == "create").unwrap();
    assert_eq!(create.status.as_deref(), Some("error"), "recorded as failed: its outcome was not seen");
}
