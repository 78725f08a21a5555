//! Every bad input gets a clear error with a stable code, and changes
//! nothing.

use serde_json::{Value, json};

use crate::kit::{Server, command, entries, exit_code, stderr};

fn error(body: &Value) -> (&str, &str) {
    (body["error"]["code"].as_str().unwrap(), body["error"]["message"].as_str().unwrap())
}

#[tokio::test]
async fn invalid_and_reserved_names() {
    let server = Server::embedded().await;
    let http = server.http();
    for (name, expected) in [
        ("ab", "3 to 40 characters"),
        ("Acme", "contains 'A'"),
        ("acme_corp", "contains '_'"),
        ("-acme", "starts or ends with '-'"),
        ("xn--acme", "internationalised"),
        ("www", "reserved"),
        ("admin", "reserved"),
        ("../plans", "contains '.'"),
    ] {
        let (status, body) = http.create(name, "starter").await;
        assert_eq!(status, 400, "{name}");
        let (code, message) = error(&body);
        assert_eq!(code, "invalid_tenant_name");
        assert!(message.contains(expected), "{name}: {message}");

        let cli = server.cli(&["tenants", "create", "--plan", "starter", "--", name]);
        assert_eq!(exit_code(&cli), 2, "{name}: {}", stderr(&cli));
        assert!(stderr(&cli).contains(expected), "{}", stderr(&cli));
    }
    // A name that would climb out of /v1/tenants/ is refused, not routed.
    let cli = server.cli(&["tenants", "get", "../plans"]);
    assert_eq!(exit_code(&cli), 2, "{}", stderr(&cli));
    assert!(stderr(&cli).contains("DNS labels"));
    assert_eq!(http.get("/v1/tenants").await.1["tenants"], json!([]));
    assert_eq!(entries(&server.data_dir().join("tenants")), Vec::<String>::new());
}

#[tokio::test]
async fn duplicates_and_concurrent_creates() {
    let server = Server::embedded().await;
    let http = server.http();
    assert_eq!(http.create("acme", "starter").await.0, 202);
    let (status, body) = http.create("acme", "enterprise").await;
    assert_eq!(status, 409);
    assert_eq!(error(&body), ("tenant_exists", "a tenant named \"acme\" already exists"));
    let cli = server.cli(&["tenants", "create", "acme", "--plan", "starter"]);
    assert_eq!(exit_code(&cli), 4);

    let racers: Vec<_> = (0..12)
        .map(|_| {
            let http = server.http();
            tokio::spawn(async move { http.create("race", "starter").await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 11, "{statuses:?}");
    assert_eq!(server.settle("race").await.unwrap()["state"], "active");
}

#[tokio::test]
async fn unknown_plan_region_and_unavailable_isolation() {
    let server = Server::embedded().await;
    let http = server.http();
    let (status, body) = http.create("acme", "gold").await;
    assert_eq!(status, 400);
    assert_eq!(
        error(&body),
        ("unknown_plan", "unknown plan \"gold\"; valid plans: starter, professional, enterprise")
    );
    let cli = server.cli(&["tenants", "create", "acme", "--plan", "gold"]);
    assert_eq!(exit_code(&cli), 2);
    assert!(stderr(&cli).contains("valid plans: starter, professional, enterprise"));

    let (status, body) = http
        .post("/v1/tenants", json!({"name": "acme", "plan": "starter", "region": "mars"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(error(&body), ("unknown_region", "unknown region \"mars\"; valid regions: local"));

    let (status, body) = http
        .post("/v1/tenants", json!({"name": "acme", "plan": "starter", "isolation": "pool"}))
        .await;
    assert_eq!(status, 400);
    let (code, message) = error(&body);
    assert_eq!(code, "isolation_unavailable");
    assert!(message.contains("needs a PostgreSQL region"), "{message}");
    let cli =
        server.cli(&["tenants", "create", "acme", "--plan", "starter", "--isolation", "pool"]);
    assert_eq!(exit_code(&cli), 2);
    assert!(stderr(&cli).contains("--store postgres://"), "{}", stderr(&cli));

    let cli =
        server.cli(&["tenants", "create", "acme", "--plan", "starter", "--isolation", "bridge"]);
    assert_eq!(exit_code(&cli), 2);
    assert!(stderr(&cli).contains("valid values: pool, silo"), "{}", stderr(&cli));

    let (status, body) = http
        .post(
            "/v1/tenants",
            json!({"name": "acme", "plan": "starter", "admin_email": "not-an-email"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(error(&body).0, "invalid_admin_email");
    assert_eq!(http.get("/v1/tenants").await.1["tenants"], json!([]), "nothing was created");
}

#[tokio::test]
async fn unknown_tenants_are_not_found() {
    let server = Server::embedded().await;
    let http = server.http();
    for (method, path) in [
        (reqwest::Method::GET, "/v1/tenants/nobody"),
        (reqwest::Method::DELETE, "/v1/tenants/nobody"),
        (reqwest::Method::POST, "/v1/tenants/nobody/suspend"),
        (reqwest::Method::POST, "/v1/tenants/nobody/resume"),
    ] {
        let (status, body) = http.send(method.clone(), path, None).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(error(&body), ("tenant_not_found", "tenant \"nobody\" does not exist"));
    }
    for args in [
        vec!["tenants", "get", "nobody"],
        vec!["tenants", "delete", "nobody", "--yes"],
        vec!["tenants", "suspend", "nobody"],
    ] {
        let cli = server.cli(&args);
        assert_eq!(exit_code(&cli), 3, "{args:?}: {}", stderr(&cli));
        assert!(stderr(&cli).contains("does not exist"));
    }
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_one_uniform_401() {
    let server = Server::embedded().await;
    let bodies = [
        server.http().without_token().get("/v1/tenants").await,
        server.http().with_token("bho_wrong").get("/v1/tenants").await,
        server.http().with_token("").create("acme", "starter").await,
        server.http().with_token(&format!("{}x", server.token)).get("/v1/plans").await,
    ];
    for (status, body) in &bodies {
        assert_eq!(*status, 401);
        assert_eq!(
            body,
            &json!({"error": {"code": "unauthorized", "message": "authentication required"}})
        );
    }
    let response = reqwest::Client::new()
        .get(format!("{}/v1/tenants", server.api))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    let cli = crate::kit::command()
        .env("BULKHEAD_DATA_DIR", server.data_dir())
        .args(["--token", "bho_wrong", "tenants", "list"])
        .output()
        .unwrap();
    assert_eq!(exit_code(&cli), 6, "{}", stderr(&cli));
    assert!(
        stderr(&cli).contains("the credential from --token (or BULKHEAD_TOKEN) was refused"),
        "{}",
        stderr(&cli)
    );
    assert!(stderr(&cli).contains("(request "), "with the request id: {}", stderr(&cli));
    assert!(!server.log().contains("bho_wrong"), "tokens are never logged");
    assert!(!server.log().contains(&server.token), "tokens are never logged");
}

#[tokio::test]
async fn malformed_json_names_the_field() {
    let server = Server::embedded().await;
    let client = reqwest::Client::new();
    let post = |body: &'static str, content_type: &'static str| {
        client
            .post(format!("{}/v1/tenants", server.api))
            .bearer_auth(&server.token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, expected) in [
        (
            r#"{"name": 5, "plan": "starter"}"#,
            "application/json",
            "name: invalid type: integer `5`",
        ),
        (r#"{"name": "acme"}"#, "application/json", "missing field `plan`"),
        (r#"{"name": "acme", "plna": "starter"}"#, "application/json", "unknown field `plna`"),
        (
            r#"{"name": "acme", "plan": "starter", "isolation": "bridge"}"#,
            "application/json",
            "isolation: unknown variant `bridge`",
        ),
        (r#"{"name": "acme", "#, "application/json", "EOF while parsing"),
        (r#"name=acme"#, "application/x-www-form-urlencoded", "content-type: application/json"),
    ] {
        let response = post(body, content_type).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_json", "{body}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let huge = format!(r#"{{"name": "acme", "plan": "{}"}}"#, "x".repeat(100_000));
    let response = client
        .post(format!("{}/v1/tenants", server.api))
        .bearer_auth(&server.token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn query_parameters_are_checked() {
    let server = Server::embedded().await;
    let http = server.http();
    for (path, expected) in [
        ("/v1/tenants?limit=0", "limit 0 is out of range"),
        ("/v1/tenants?limit=5000", "use 1 to 1000"),
        ("/v1/tenants?limit=ten", "limit"),
        ("/v1/tenants?state=gone", "valid states"),
        ("/v1/tenants?colour=red", "unknown field `colour`"),
    ] {
        let (status, body) = http.get(path).await;
        assert_eq!(status, 400, "{path}");
        let (code, message) = error(&body);
        assert_eq!(code, "invalid_request");
        assert!(message.contains(expected), "{path}: {message}");
    }
}

#[tokio::test]
async fn lifecycle_actions_respect_the_state_machine() {
    let server = Server::embedded().await;
    let http = server.http();
    http.create("acme", "starter").await;
    server.settle("acme").await;
    // Idempotent no-ops.
    let (status, body) = http.post("/v1/tenants/acme/resume", json!(null)).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("active")));
    http.post("/v1/tenants/acme/suspend", json!(null)).await;
    let (status, body) = http.post("/v1/tenants/acme/suspend", json!(null)).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("suspended")));

    http.delete("/v1/tenants/acme").await;
    server.settle("acme").await;
    let (status, body) = http.post("/v1/tenants/acme/resume", json!(null)).await;
    assert_eq!(status, 409);
    assert_eq!(
        error(&body),
        ("invalid_state", "tenant \"acme\" is deleted; only suspended tenants can be resumed")
    );
    let cli = server.cli(&["tenants", "suspend", "acme"]);
    assert_eq!(exit_code(&cli), 4);
}

#[tokio::test]
async fn delete_needs_confirmation() {
    let server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    let cli = server.cli(&["tenants", "delete", "acme"]);
    assert_eq!(exit_code(&cli), 2);
    assert!(stderr(&cli).contains("pass --yes"), "{}", stderr(&cli));
    assert_eq!(server.cli_json(&["tenants", "get", "acme"])["state"], "active");
}

#[tokio::test]
async fn deleting_while_provisioning_is_refused() {
    // A region whose server takes connections and never answers keeps the
    // tenant provisioning: a listener nobody accepts from (the kernel still
    // completes the handshake).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    let config = format!(
        "[[regions]]\nname = \"slow\"\ndatabases = \"postgres://postgres@{address}/postgres\"\n"
    );
    let server = crate::kit::Server::start(crate::kit::Store::Embedded, &config, &[]).await;
    let http = server.http();
    assert_eq!(http.create("acme", "starter").await.0, 202);
    let (status, body) = http.delete("/v1/tenants/acme").await;
    assert_eq!(status, 409);
    let (code, message) = error(&body);
    assert_eq!(code, "invalid_state");
    assert!(message.contains("still provisioning"), "{message}");
}

#[test]
fn bad_cost_caps_and_a_misplaced_csv_are_usage_errors_that_say_what_to_give() {
    let run = |args: &[&str]| command().args(args).output().unwrap();
    for (caps, says) in [
        ("5", "\"5\" is not SOFT/HARD in whole units, such as 50/100"),
        ("a/b", "is not SOFT/HARD in whole units"),
        ("100/50", "soft_usd (100) must not be above hard_usd (50)"),
        ("9/2000000000", "hard_usd must be at most 1000000000"),
    ] {
        let output = run(&["tenants", "update", "acme", "--cost-caps", caps]);
        assert_eq!(exit_code(&output), 2, "{caps}");
        assert!(stderr(&output).contains(says), "{caps}: {}", stderr(&output));
    }
    let csv = run(&["-o", "csv", "tenants", "list"]);
    assert_eq!(exit_code(&csv), 2);
    assert!(stderr(&csv).contains("-o csv is for `bulkhead usage export`"), "{}", stderr(&csv));
    let no_period = run(&["usage", "export"]);
    assert_eq!(exit_code(&no_period), 2);
    assert!(stderr(&no_period).contains("--period <YYYY-MM>"), "{}", stderr(&no_period));
}

/// Runs the CLI with its standard output closed before it writes.
fn with_stdout_closed(server: &Server, args: &[&str]) -> std::process::Output {
    let mut child = command()
        .env("BULKHEAD_DATA_DIR", server.data_dir())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // No reader is left: the child's first write finds the pipe closed.
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// A reader that stops early (`bulkhead status | head -0`) is no error: the
/// command does all it would have, quietly, and ends with success; what
/// is shown only once and could not be printed is a failure.
#[tokio::test]
async fn a_closed_stdout_ends_a_command_quietly() {
    let server = Server::embedded().await;
    for args in [&["status"][..], &["tenants", "list"], &["-o", "json", "tenants", "list"]] {
        let output = with_stdout_closed(&server, args);
        assert_eq!(exit_code(&output), 0, "{args:?}: {}", stderr(&output));
        assert_eq!(stderr(&output), "", "{args:?}");
    }
    // Every object of the file is applied, not only the first.
    let globex = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/manifests/globex.yaml");
    let applied = with_stdout_closed(&server, &["apply", "-f", globex]);
    assert_eq!(exit_code(&applied), 0, "{}", stderr(&applied));
    let api = server.cli(&["apis", "get", "billing", "--tenant", "globex"]);
    assert!(api.status.success(), "{}", stderr(&api));
    let token = with_stdout_closed(
        &server,
        &["auth", "token", "--tenant", "globex", "--subject", "ana", "--role", "viewer"],
    );
    assert_eq!(exit_code(&token), 1, "{}", stderr(&token));
    assert!(stderr(&token).contains("token could not be printed"), "{}", stderr(&token));
}
