//! Manifests through the real binary: `apply`, `diff`, `delete -f` and
//! `get`, the sample manifests of docs/manifests, tenants' plans and limits
//! changed by `apply`, `tenants update` and `PATCH /v1/tenants/{name}`, and
//! those limits at the gateway.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    kit::{Server, exit_code, stderr, stdout},
    upstream::Upstream,
};

/// docs/manifests, as the repository has it.
fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manifests")
}

fn sample(name: &str) -> String {
    std::fs::read_to_string(samples().join(name)).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs the CLI and asserts its exit code; returns what it printed.
fn run(server: &Server, args: &[&str], code: i32) -> (String, String) {
    let output = server.cli(args);
    let (out, err) = (stdout(&output), stderr(&output));
    assert_eq!(exit_code(&output), code, "{args:?}\nstdout: {out}\nstderr: {err}");
    (out, err)
}

/// The events of `action` on the tenant's audit stream, oldest first.
fn events(server: &Server, tenant: &str, action: &str) -> Vec<Value> {
    let all = server.cli_json(&["audit", "tail", "--tenant", tenant, "--lines", "1000"]);
    all.as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

#[tokio::test]
async fn the_sample_manifests_apply_once_and_read_back_unchanged() {
    samples_apply_once_and_read_back(Server::embedded().await, "silo").await;
}

#[tokio::test]
async fn the_sample_manifests_apply_on_postgres_too() {
    // There acme gets its plan's default, a pool; globex asks for a silo.
    samples_apply_once_and_read_back(Server::postgres().await, "pool").await;
}

async fn samples_apply_once_and_read_back(server: Server, acme_isolation: &str) {
    let http = server.http();
    let dir = samples();
    let dir = dir.to_str().unwrap();
    let (out, _) = run(&server, &["apply", "-f", dir], 0);
    assert_eq!(
        out,
        "tenant/acme created\ntenant/globex created\napi/acme/orders created\n\
         api/acme/status created\napi/globex/billing created\n",
        "tenants first, then APIs, each in file order"
    );

    // Everything is as declared.
    let (_, acme) = http.get("/v1/tenants/acme").await;
    assert_eq!(acme["state"], "active");
    assert_eq!(acme["plan"], "professional");
    assert_eq!(acme["isolation"], acme_isolation);
    assert_eq!(acme["admin_email"], "ops@acme.example");
    assert_eq!(
        acme["limits"],
        json!({"max_in_flight": 1024, "rate_limit": {"requests_per_minute": 12000, "burst": 2000}})
    );
    let (_, globex) = http.get("/v1/tenants/globex").await;
    assert_eq!(
        (&globex["state"], &globex["isolation"], &globex["limits"]),
        (&json!("active"), &json!("silo"), &json!({"limiter_fallback": "deny"}))
    );
    let (_, status) = http.get("/v1/tenants/acme/apis/status").await;
    assert_eq!(
        status,
        json!({
            "name": "status", "prefix": "/status", "upstreams": ["http://127.0.0.1:9000"],
            "protocol": "http1", "strip_prefix": false, "methods": ["GET", "HEAD"],
            "auth": "public", "timeouts": {"connect_ms": 2000, "response_ms": 30000, "idle_ms": 60000},
            "max_body_bytes": 10485760, "audit": "denied",
        })
    );
    let (_, orders) = http.get("/v1/tenants/acme/apis/orders").await;
    assert_eq!(orders["roles"], json!(["analyst"]));
    assert_eq!(
        orders["timeouts"],
        json!({"connect_ms": 1000, "response_ms": 10000, "idle_ms": 60000})
    );
    assert_eq!(orders["rate_limit"], json!({"requests_per_minute": 600, "burst": 100}));
    let (_, billing) = http.get("/v1/tenants/globex/apis/billing").await;
    assert_eq!(
        (&billing["upstreams"], &billing["strip_prefix"], &billing["audience"]),
        (
            &json!(["unix:/run/globex/billing.sock"]),
            &json!(true),
            &json!("https://billing.globex.example")
        )
    );

    // Applying again changes nothing, and records nothing.
    let before = server.audit_events(&["acme", "globex"]).len();
    let (out, _) = run(&server, &["apply", "-f", dir], 0);
    assert_eq!(
        out,
        "tenant/acme unchanged\ntenant/globex unchanged\napi/acme/orders unchanged\n\
         api/acme/status unchanged\napi/globex/billing unchanged\n"
    );
    assert_eq!(server.audit_events(&["acme", "globex"]).len(), before);
    let (out, err) = run(&server, &["diff", "-f", dir], 0);
    assert_eq!((out.as_str(), err.as_str()), ("", "0 to create or change, 5 unchanged\n"));

    // What `get` prints, `apply` takes back unchanged.
    let (yaml, _) = run(&server, &["get", "tenant", "acme", "-o", "yaml"], 0);
    assert_eq!(
        yaml,
        format!(
            "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n  \
             admin_email: ops@acme.example\n  isolation: {acme_isolation}\n  limits:\n    \
             max_in_flight: 1024\n    rate_limit:\n      burst: 2000\n      \
             requests_per_minute: 12000\n  plan: professional\n  region: local\n"
        )
    );
    for tenant in ["acme", "globex"] {
        let (yaml, _) = run(&server, &["get", "tenant", tenant, "--apis", "-o", "yaml"], 0);
        let file = write(server.dir.path(), &format!("{tenant}.yaml"), &yaml);
        let (out, _) = run(&server, &["apply", "-f", &file], 0);
        assert!(
            out.lines().all(|line| line.ends_with(" unchanged")) && out.lines().count() > 1,
            "{out}"
        );
    }
    let (yaml, _) = run(&server, &["get", "api", "--tenant", "acme", "status"], 0);
    let file = write(server.dir.path(), "status.yaml", &yaml);
    assert_eq!(run(&server, &["apply", "-f", &file], 0).0, "api/acme/status unchanged\n");
    let document = server.cli_json(&["get", "api", "--tenant", "acme", "status"]);
    let mut spec = status.clone();
    spec.as_object_mut().unwrap().remove("name");
    assert_eq!(
        document,
        json!({
            "apiVersion": "bulkhead.dev/v1", "kind": "Api",
            "metadata": {"name": "status", "tenant": "acme"}, "spec": spec,
        })
    );
    let (_, err) = run(&server, &["tenants", "list", "-o", "yaml"], 2);
    assert_eq!(err, "error: -o yaml is for `bulkhead get`; use -o json or -o table\n");
}

#[tokio::test]
async fn diff_says_what_apply_would_change_and_apply_changes_plan_and_limits() {
    let server = Server::embedded().await;
    let acme = write(server.dir.path(), "acme.yaml", &sample("acme.yaml"));
    run(&server, &["apply", "-f", &acme], 0);
    let changed = sample("acme.yaml")
        .replace("plan: professional", "plan: enterprise")
        .replace("max_in_flight: 1024", "max_in_flight: 64")
        .replace("  audit: all\n", "  audit: all\n  strip_prefix: true\n");
    let changed = write(server.dir.path(), "changed.yaml", &changed);

    let (out, err) = run(&server, &["diff", "-f", &changed], 1);
    assert_eq!(
        out,
        format!(
            "~ tenant/acme ({changed}:4) would change\n    limits.max_in_flight: 1024 -> 64\n    \
             plan: \"professional\" -> \"enterprise\"\n~ api/acme/orders ({changed}:18) would \
             change\n    strip_prefix: false -> true\n"
        )
    );
    assert_eq!(err, "2 to create or change, 1 unchanged\n");
    let output = server.cli(&["diff", "-f", &changed, "-o", "json"]);
    assert_eq!(exit_code(&output), 1);
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        listed[0],
        json!({
            "object": "tenant/acme", "declared": format!("{changed}:4"), "action": "change",
            "changes": [
                {"field": "limits.max_in_flight", "from": 1024, "to": 64},
                {"field": "plan", "from": "professional", "to": "enterprise"},
            ],
        })
    );
    assert_eq!(
        (&listed[2]["object"], &listed[2]["action"]),
        (&json!("api/acme/status"), &json!("unchanged"))
    );
    let (_, tenant) = server.http().get("/v1/tenants/acme").await;
    assert_eq!(tenant["plan"], "professional", "diff changes nothing");

    let (out, _) = run(&server, &["apply", "-f", &changed], 0);
    assert_eq!(out, "tenant/acme changed\napi/acme/orders changed\napi/acme/status unchanged\n");
    let (_, tenant) = server.http().get("/v1/tenants/acme").await;
    assert_eq!(tenant["plan"], "enterprise");
    assert_eq!(tenant["isolation"], "silo", "the tenant keeps its isolation");
    assert_eq!(
        tenant["limits"],
        json!({"max_in_flight": 64, "rate_limit": {"requests_per_minute": 12000, "burst": 2000}})
    );
    let (_, orders) = server.http().get("/v1/tenants/acme/apis/orders").await;
    assert_eq!(orders["strip_prefix"], true);
    let updates = events(&server, "acme", "tenant.update");
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0]["details"],
        json!({
            "before": {"plan": "professional", "limits": {"max_in_flight": 1024, "rate_limit": {"requests_per_minute": 12000, "burst": 2000}}},
            "after": {"plan": "enterprise", "limits": {"max_in_flight": 64, "rate_limit": {"requests_per_minute": 12000, "burst": 2000}}},
        })
    );
    run(&server, &["diff", "-f", &changed], 0);

    // Limits left out of a manifest are the plan's: applying one without
    // them removes the overrides.
    let plain = sample("acme.yaml").replace(
        "  limits:\n    max_in_flight: 1024\n    rate_limit:\n      requests_per_minute: 12000\n      burst: 2000\n",
        "",
    );
    let plain = write(server.dir.path(), "plain.yaml", &plain);
    let (out, _) = run(&server, &["apply", "-f", &plain, "-o", "json"], 0);
    let results: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        results[0],
        json!({"object": "tenant/acme", "kind": "Tenant", "tenant": "acme", "name": "acme", "result": "changed"})
    );
    assert_eq!(results[1]["result"], "changed", "strip_prefix is false again");
    let (_, tenant) = server.http().get("/v1/tenants/acme").await;
    assert_eq!((&tenant["plan"], &tenant["limits"]), (&json!("professional"), &json!({})));
}

#[tokio::test]
async fn a_mistake_in_any_document_applies_nothing() {
    let server = Server::embedded().await;
    let dir = server.dir.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a-acme.yaml", &sample("acme.yaml"));
    let globex =
        sample("globex.yaml").replace("  isolation: silo\n", "  isolation: silo\n  colour: blue\n");
    let b = write(&dir, "b-globex.yml", &globex);
    let c = write(&dir, "c.yaml", "apiVersion: bulkhead.dev/v2\nkind: Tenant\n");
    write(&dir, "notes.txt", "not a manifest");
    let dir = dir.to_str().unwrap();

    let expected = format!(
        "error: {b}:10:3: unknown field `colour`, expected one of plan, isolation, region, \
         admin_email, limits\n{c}:1:13: apiVersion \"bulkhead.dev/v2\" is not one this Bulkhead \
         reads; use bulkhead.dev/v1\nnothing was applied\n"
    );
    let (out, err) = run(&server, &["apply", "-f", dir], 2);
    assert_eq!((out.as_str(), err.as_str()), ("", expected.as_str()));
    // acme's file was fine, and still nothing of it exists.
    let (status, body) = server.http().get("/v1/tenants").await;
    assert_eq!((status, body), (200, json!({"tenants": []})));
    let (_, err) = run(&server, &["diff", "-f", dir], 2);
    assert!(err.starts_with(&format!("error: {b}:10:3: unknown field `colour`")), "{err}");

    // As JSON, the same error.
    let output = server.cli(&["apply", "-f", dir, "-o", "json"]);
    let error: Value = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(error["error"]["kind"], "usage");
    assert_eq!(error["error"]["exit_code"], 2);
    assert!(error["error"]["message"].as_str().unwrap().ends_with("\nnothing was applied"));

    // An object declared twice, an API of a tenant nobody declares, an
    // unknown plan: all found before anything is done.
    let twice = format!("{}---\n{}", sample("acme.yaml"), sample("globex.yaml"))
        .replace("globex", "acme")
        .replace("plan: enterprise", "plan: gold");
    let twice = write(server.dir.path(), "twice.yaml", &twice);
    let (_, err) = run(&server, &["apply", "-f", &twice], 2);
    assert_eq!(
        err,
        format!(
            "error: {twice}:53: tenant/acme is declared twice: at {twice}:4 and here\nnothing was applied\n"
        )
    );
    let orphan = sample("acme.yaml");
    let orphan = &orphan[orphan.find("---").unwrap() + 4..];
    let orphan = write(server.dir.path(), "orphan.yaml", orphan);
    let (_, err) = run(&server, &["apply", "-f", &orphan], 2);
    assert_eq!(
        err,
        format!(
            "error: {orphan}:2: api/acme/orders: tenant \"acme\" does not exist; declare it in a \
             Tenant document or create it first\n{orphan}:23: api/acme/status: tenant \"acme\" \
             does not exist; declare it in a Tenant document or create it first\nnothing was \
             applied\n"
        )
    );
    let gold = write(
        server.dir.path(),
        "gold.yaml",
        &sample("globex.yaml").replace("plan: enterprise", "plan: gold"),
    );
    let (_, err) = run(&server, &["apply", "-f", &gold], 2);
    assert_eq!(
        err,
        format!(
            "error: {gold}:3: tenant/globex: unknown plan \"gold\"; valid plans: starter, \
             professional, enterprise\nnothing was applied\n"
        )
    );
    let (_, body) = server.http().get("/v1/tenants").await;
    assert_eq!(body, json!({"tenants": []}));
}

#[tokio::test]
async fn isolation_and_region_cannot_change() {
    let server = Server::embedded().await;
    let http = server.http();
    let acme = "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n  plan: starter\n";
    let file = write(server.dir.path(), "acme.yaml", acme);
    assert_eq!(run(&server, &["apply", "-f", &file], 0).0, "tenant/acme created\n");

    let pool = write(
        server.dir.path(),
        "pool.yaml",
        &format!("{acme}  isolation: pool\n").replace("plan: starter", "plan: professional"),
    );
    let (_, err) = run(&server, &["apply", "-f", &pool], 2);
    assert_eq!(
        err,
        format!(
            "error: {pool}:1: tenant/acme: spec.isolation is pool but tenant \"acme\" has silo: \
             isolation is fixed when a tenant is created and cannot change (to move a tenant, \
             create a new one and move its data)\nnothing was applied\n"
        )
    );
    let (_, err) = run(&server, &["diff", "-f", &pool], 2);
    assert!(err.contains("spec.isolation is pool but tenant \"acme\" has silo"), "{err}");
    let eu = write(server.dir.path(), "eu.yaml", &format!("{acme}  region: eu\n"));
    let (_, err) = run(&server, &["apply", "-f", &eu], 2);
    assert!(err.starts_with(&format!("error: {eu}:1: tenant/acme: spec.region is eu but tenant \"acme\" has local: region is fixed")), "{err}");
    let (_, tenant) = http.get("/v1/tenants/acme").await;
    assert_eq!(tenant["plan"], "starter", "nothing was applied");

    // The API says so too; repeating the tenant's own is fine.
    let patch = |body: Value| http.send(reqwest::Method::PATCH, "/v1/tenants/acme", Some(body));
    assert_eq!(
        patch(json!({"isolation": "pool", "plan": "professional"})).await,
        (
            409,
            json!({"error": {"code": "immutable_field", "message": "isolation cannot change for an existing tenant: \"acme\" is silo, not pool (to move it, create a new tenant and move its data)"}})
        )
    );
    assert_eq!(
        patch(json!({"region": "eu"})).await,
        (
            409,
            json!({"error": {"code": "immutable_field", "message": "region cannot change for an existing tenant: \"acme\" is in region local, not in eu (to move it, create a new tenant and move its data)"}})
        )
    );
    let (status, tenant) =
        patch(json!({"isolation": "silo", "region": "local", "plan": "enterprise"})).await;
    assert_eq!(
        (status, &tenant["plan"], &tenant["isolation"]),
        (200, &json!("enterprise"), &json!("silo"))
    );
}

#[tokio::test]
async fn tenants_update_changes_plan_and_limits() {
    let server = Server::embedded().await;
    let http = server.http();
    let created = server.cli_json(&[
        "tenants",
        "create",
        "acme",
        "--plan",
        "starter",
        "--max-in-flight",
        "10",
        "--wait",
    ]);
    assert_eq!(created["limits"], json!({"max_in_flight": 10}));

    // Flags change their own fields and keep the others.
    let updated =
        server.cli_json(&["tenants", "update", "acme", "--rate-limit", "120", "--burst", "20"]);
    assert_eq!(
        (&updated["plan"], &updated["limits"]),
        (
            &json!("starter"),
            &json!({"max_in_flight": 10, "rate_limit": {"requests_per_minute": 120, "burst": 20}})
        )
    );
    let updated = server.cli_json(&[
        "tenants",
        "update",
        "acme",
        "--plan",
        "professional",
        "--limiter-fallback",
        "deny",
    ]);
    assert_eq!(updated["plan"], "professional");
    assert_eq!(updated["limits"]["limiter_fallback"], "deny");
    let (out, _) = run(&server, &["tenants", "get", "acme"], 0);
    assert!(
        out.contains(
            "\nLimits:      120/min +20, 10 in flight, fallback deny; the plan's otherwise\n"
        ),
        "{out}"
    );
    let updated = server.cli_json(&[
        "tenants",
        "update",
        "acme",
        "--reset-limits",
        "--max-upstream-connections",
        "4",
    ]);
    assert_eq!(updated["limits"], json!({"max_upstream_connections": 4}));
    let updated = server.cli_json(&["tenants", "update", "acme", "--reset-limits"]);
    assert_eq!(updated["limits"], json!({}));
    let (out, _) = run(&server, &["tenants", "get", "acme"], 0);
    assert!(out.contains("\nLimits:      the plan's\n"), "{out}");
    assert_eq!(events(&server, "acme", "tenant.update").len(), 4);

    let (_, err) = run(&server, &["tenants", "update", "acme"], 2);
    assert_eq!(
        err,
        "error: nothing to change: give --plan, a limit flag (--rate-limit, --max-in-flight, ...) \
         or --reset-limits\n"
    );
    let (_, err) = run(&server, &["tenants", "update", "acme", "--plan", "gold"], 2);
    assert!(
        err.starts_with(
            "error: unknown plan \"gold\"; valid plans: starter, professional, enterprise (request "
        ),
        "{err}"
    );
    let (_, err) = run(&server, &["tenants", "update", "acme", "--max-in-flight", "0"], 2);
    assert!(err.starts_with("error: limits.max_in_flight: must be 1 to 1000000 (to stop a tenant's traffic, suspend it) (request "), "{err}");
    let (_, err) = run(&server, &["tenants", "update", "nobody", "--plan", "starter"], 3);
    assert!(err.starts_with("error: tenant \"nobody\" does not exist"), "{err}");

    // Bad bodies are refused with 4xx, and change nothing.
    let patch = |body: Value| http.send(reqwest::Method::PATCH, "/v1/tenants/acme", Some(body));
    assert_eq!(
        patch(json!({"limits": {"rate_limit": {"requests_per_minute": 0, "burst": 1}}})).await,
        (
            400,
            json!({"error": {"code": "invalid_limits", "message": "limits.rate_limit: requests_per_minute must be 1 to 60000000 and burst 1 to 1000000"}})
        )
    );
    for body in [
        json!([null, null]),
        json!({"limits": [1]}),
        json!({"limits": {"max_inflight": 3}}),
        json!({"admin_email": "a@b.io"}),
        json!({"plan": 5}),
    ] {
        let (status, answer) = patch(body.clone()).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("invalid_json")),
            "{body}: {answer}"
        );
    }
    assert_eq!(patch(json!({})).await.0, 200, "nothing to change is no error");
    assert_eq!(events(&server, "acme", "tenant.update").len(), 4);

    // Plans and limits are the operator's: a tenant's own admin may not.
    let token = server.cli(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "ann",
        "--role",
        "owner",
        "--control-api",
    ]);
    let token = stdout(&token).trim().to_owned();
    let (status, body) = server
        .http()
        .with_token(&token)
        .send(reqwest::Method::PATCH, "/v1/tenants/acme", Some(json!({"plan": "enterprise"})))
        .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"error": {"code": "forbidden", "message": "this endpoint needs an operator token"}})
        )
    );
}

#[tokio::test]
async fn a_tenants_own_limits_reach_the_gateway() {
    let server = Server::embedded().await;
    let upstream = Upstream::start().await;
    let manifest = |max_in_flight: u32| {
        format!(
            "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata: {{name: acme}}\nspec:\n  plan: \
             starter\n  limits: {{max_in_flight: {max_in_flight}}}\n---\napiVersion: \
             bulkhead.dev/v1\nkind: Api\nmetadata: {{name: everything, tenant: acme}}\nspec:\n  \
             prefix: /\n  upstreams: [\"{}\"]\n  auth: public\n",
            upstream.url()
        )
    };
    let one = write(server.dir.path(), "one.yaml", &manifest(1));
    run(&server, &["apply", "-f", &one], 0);

    let addr: std::net::SocketAddr = server.gateway.trim_start_matches("http://").parse().unwrap();
    let client = reqwest::Client::builder().resolve("acme.localhost", addr).build().unwrap();
    let url = |path: &str| format!("http://acme.localhost:{}{path}", addr.port());
    let call = |path: &str| {
        let request = client.get(url(path)).timeout(Duration::from_secs(5));
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    // Once the gateway routes acme, one request hangs upstream and holds
    // acme's only slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while call("/ready").await != 200 {
        assert!(Instant::now() < deadline, "the gateway never routed acme");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hanging = tokio::spawn(client.get(url("/hang")).send());
    while !upstream.seen().iter().any(|s| s.target == "/hang") {
        assert!(Instant::now() < deadline, "the hanging request never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call("/x").await, 503, "past acme's own max_in_flight of 1");

    let three = write(server.dir.path(), "three.yaml", &manifest(3));
    let (out, _) = run(&server, &["apply", "-f", &three], 0);
    assert_eq!(out, "tenant/acme changed\napi/acme/everything unchanged\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while call("/x").await != 200 {
        assert!(Instant::now() < deadline, "the new limit never reached the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hanging.abort();
}

#[tokio::test]
async fn delete_f_deletes_apis_then_tenants() {
    let server = Server::embedded().await;
    let http = server.http();
    let dir = samples();
    let dir = dir.to_str().unwrap();
    run(&server, &["apply", "-f", dir], 0);

    // An API alone needs no confirmation.
    let acme = sample("acme.yaml");
    let status = write(server.dir.path(), "status.yaml", &acme[acme.rfind("---").unwrap()..]);
    assert_eq!(run(&server, &["delete", "-f", &status], 0).0, "api/acme/status deleted\n");
    assert_eq!(http.get("/v1/tenants/acme/apis/status").await.0, 404);
    assert_eq!(run(&server, &["apply", "-f", &status], 0).0, "api/acme/status created\n");

    // Tenants need --yes, and without it nothing is deleted.
    let (_, err) = run(&server, &["delete", "-f", dir], 2);
    assert_eq!(err, "error: refusing to delete tenant \"acme\" without confirmation: pass --yes\n");
    assert_eq!(http.get("/v1/tenants/acme/apis/status").await.0, 200);

    let (out, _) = run(&server, &["delete", "-f", dir, "--yes"], 0);
    assert_eq!(
        out,
        "api/acme/orders deleted\napi/acme/status deleted\napi/globex/billing deleted\n\
         tenant/acme deleted\ntenant/globex deleted\n"
    );
    for tenant in ["acme", "globex"] {
        let settled = server.settle(tenant).await.unwrap();
        assert_eq!(settled["state"], "deleted", "kept as deleted: not purged");
    }
    let deletes: Vec<String> = events(&server, "acme", "api.delete")
        .iter()
        .map(|e| e["details"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deletes, ["status", "orders", "status"]);

    // Again: the APIs are gone, the tenants already deleted.
    let (out, _) = run(&server, &["delete", "-f", dir, "--yes", "-o", "json"], 0);
    let results: Vec<(String, String)> = serde_json::from_str::<Vec<Value>>(&out)
        .unwrap()
        .iter()
        .map(|r| {
            (r["object"].as_str().unwrap().to_owned(), r["result"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        results,
        [
            ("api/acme/orders".to_owned(), "absent".to_owned()),
            ("api/acme/status".to_owned(), "absent".to_owned()),
            ("api/globex/billing".to_owned(), "absent".to_owned()),
            ("tenant/acme".to_owned(), "deleted".to_owned()),
            ("tenant/globex".to_owned(), "deleted".to_owned()),
        ]
    );
    // A deleted tenant's name is free: applying again makes new tenants.
    let (out, _) = run(&server, &["apply", "-f", dir], 0);
    assert!(out.contains("tenant/acme created"), "{out}");
}
