//! The API's own surface: its OpenAPI document, health, metrics, request
//! ids and errors for unknown routes.

use std::collections::BTreeSet;

use serde_json::json;

use crate::kit::Server;

#[tokio::test]
async fn openapi_describes_every_endpoint() {
    let server = Server::embedded().await;
    let (status, doc) = server.http().without_token().get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /v1/tenants",
        "GET /v1/tenants",
        "GET /v1/tenants/{name}",
        "PATCH /v1/tenants/{name}",
        "DELETE /v1/tenants/{name}",
        "POST /v1/tenants/{name}/suspend",
        "POST /v1/tenants/{name}/resume",
        "GET /v1/plans",
        "GET /v1/regions",
        "GET /v1/status",
        "GET /v1/tenants/{tenant}/secrets",
        "GET /v1/tenants/{tenant}/secrets/{path}",
        "PUT /v1/tenants/{tenant}/secrets/{path}",
        "DELETE /v1/tenants/{tenant}/secrets/{path}",
        "GET /v1/tenants/{tenant}/keys",
        "POST /v1/tenants/{tenant}/keys/rotate",
        "POST /v1/tenants/{tenant}/keys/rewrap",
        "PUT /v1/tenants/{tenant}/keys/tenant-key",
        "DELETE /v1/tenants/{tenant}/keys/tenant-key",
        "POST /v1/vault/master-key/rotate",
        "POST /v1/tenants/{tenant}/credentials",
        "GET /v1/tenants/{tenant}/credentials",
        "DELETE /v1/credentials/{lease}",
        "DELETE /v1/tenants/{tenant}/credentials/{lease}",
        "GET /v1/vault/lockouts",
        "DELETE /v1/vault/lockouts/{principal}",
        "POST /v1/tenants/{tenant}/tokens",
        "POST /v1/tenants/{tenant}/realm/rotate",
        "GET /v1/tenants/{tenant}/realm/keys",
        "POST /v1/tenants/{tenant}/realm/revoke-tokens",
        "POST /v1/tenants/{tenant}/apis",
        "GET /v1/tenants/{tenant}/apis",
        "GET /v1/apis/public",
        "POST /v1/verify/isolation",
        "POST /v1/migrations",
        "GET /v1/migrations",
        "GET /v1/migrations/{id}",
        "GET /v1/tenants/{tenant}/apis/{name}",
        "PUT /v1/tenants/{tenant}/apis/{name}",
        "DELETE /v1/tenants/{tenant}/apis/{name}",
        "GET /v1/tenants/{tenant}/guardrails",
        "GET /v1/tenants/{tenant}/guardrails/{name}",
        "PUT /v1/tenants/{tenant}/guardrails/{name}",
        "DELETE /v1/tenants/{tenant}/guardrails/{name}",
        "GET /v1/tenants/{tenant}/tools",
        "GET /v1/tenants/{tenant}/tools/{name}",
        "PUT /v1/tenants/{tenant}/tools/{name}",
        "DELETE /v1/tenants/{tenant}/tools/{name}",
        "GET /v1/tenants/{tenant}/apps",
        "GET /v1/tenants/{tenant}/apps/{name}",
        "PUT /v1/tenants/{tenant}/apps/{name}",
        "DELETE /v1/tenants/{tenant}/apps/{name}",
        "POST /v1/tenants/{tenant}/apps/{name}/start",
        "POST /v1/tenants/{tenant}/apps/{name}/stop",
        "POST /v1/tenants/{tenant}/apps/{name}/pin",
        "POST /v1/tenants/{tenant}/apps/{name}/unpin",
        "POST /v1/rollouts",
        "GET /v1/rollouts",
        "GET /v1/rollouts/{id}",
        "POST /v1/rollouts/{id}/pause",
        "POST /v1/rollouts/{id}/resume",
        "POST /v1/rollouts/{id}/abort",
        "GET /v1/tenants/{tenant}/apps/{name}/logs",
        "GET /v1/tenants/{tenant}/flags",
        "PATCH /v1/tenants/{tenant}/flags",
        "GET /v1/tenants/{tenant}/usage",
        "GET /v1/usage/export",
        "GET /v1/tenants/{tenant}/usage/export",
        "GET /v1/tenants/{tenant}/backups",
        "POST /v1/tenants/{tenant}/backups",
        "GET /v1/tenants/{tenant}/backups/{id}",
        "DELETE /v1/tenants/{tenant}/backups/{id}",
        "POST /v1/tenants/{tenant}/backups/{id}/verify",
        "POST /v1/tenants/{tenant}/backups/{id}/restore",
        "POST /v1/tenants/{tenant}/restore",
        "POST /v1/tenants/{tenant}/final-snapshot/verify",
        "POST /v1/backups/restore",
        "GET /v1/tenants/{tenant}/backup-key",
        "PUT /v1/tenants/{tenant}/backup-key",
        "POST /v1/tenants/{tenant}/backup-key/export",
        "POST /v1/tenants/{tenant}/api-keys",
        "GET /v1/tenants/{tenant}/api-keys",
        "DELETE /v1/tenants/{tenant}/api-keys/{id}",
        "GET /v1/tenants/{tenant}/realm/trust",
        "PUT /v1/tenants/{tenant}/realm/trust",
        "DELETE /v1/tenants/{tenant}/realm/trust",
        "GET /realms/{tenant}/.well-known/openid-configuration",
        "GET /realms/{tenant}/jwks.json",
        "GET /realms/{tenant}/audit-keys.json",
        "GET /v1/tenants/{tenant}/audit/events",
        "GET /v1/tenants/{tenant}/audit/export",
        "GET /v1/audit/platform/events",
        "GET /v1/audit/platform/export",
        "GET /v1/openapi.json",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(operations, expected);
    assert_eq!(doc["components"]["securitySchemes"]["operator_token"]["scheme"], "bearer");
    for schema in ["TenantView", "CreateTenantRequest", "ErrorBody", "Plan", "TenantState"] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "schema {schema}");
    }

    // Every documented operation is served (none answers the 404 fallback,
    // nor 405 for its method).
    let http = server.http();
    http.create("acme", "starter").await;
    server.settle("acme").await;
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path
            .replace("{name}", "acme")
            .replace("{tenant}", "acme")
            .replace("{path}", "db/password")
            .replace("{lease}", "00000000-0000-0000-0000-000000000000")
            .replace("{principal}", "nobody")
            .replace("{id}", "00000000-0000-0000-0000-000000000000");
        let (status, body) = http.send(method.parse().unwrap(), &path, None).await;
        assert_ne!(body["error"]["code"], "not_found", "{operation} answered {status}");
        assert_ne!(status, 405, "{operation} is not served for its method");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = Server::embedded().await;
    let http = server.http().without_token();
    assert_eq!(http.get("/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(http.get("/readyz").await, (200, json!({"status": "ready"})));

    server.http().create("acme", "starter").await;
    server.settle("acme").await;
    let (status, metrics) = http.get("/metrics").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    for expected in [
        "bulkhead_tenants{state=\"active\"} 1",
        "bulkhead_tenants{state=\"failed\"} 0",
        "bulkhead_http_requests_total{method=\"POST\",route=\"/v1/tenants\",status=\"202\"} 1",
        "bulkhead_provisioning_duration_seconds_count 1",
        "# TYPE bulkhead_http_requests_total counter",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in\n{metrics}");
    }
    assert!(!metrics.contains("acme"), "no tenant names in metric labels");
    crate::kit::promtool_accepts(metrics).await;
    // A scraper that asks for OpenMetrics (Prometheus does) gets it.
    let openmetrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.api))
        .header("accept", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.3")
        .send()
        .await
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let openmetrics = openmetrics.text().await.unwrap();
    assert!(openmetrics.contains("# TYPE bulkhead_http_requests counter"), "{openmetrics}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
}

#[tokio::test]
async fn request_ids_and_unknown_routes() {
    let server = Server::embedded().await;
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/v1/plans", server.api))
        .bearer_auth(&server.token)
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-123");
    let response = client.get(format!("{}/v1/plans", server.api)).send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 32, "a fresh id when none was sent");

    let (status, body) = server.http().get("/v1/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = server.http().send(reqwest::Method::PUT, "/v1/plans", None).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn regions_are_listed_without_credentials() {
    let config = "[[regions]]\nname = \"local\"\ndatabases = \"embedded\"\n\n[[regions]]\nname = \"eu\"\ndatabases = \"postgres://postgres:s3cret@127.0.0.1:5432/postgres\"\n";
    let server = Server::start(crate::kit::Store::Embedded, config, &[]).await;
    let (status, body) = server.http().get("/v1/regions").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"regions": [
            {"name": "local", "databases": "embedded", "isolation": ["silo"]},
            {"name": "eu", "databases": "postgres", "isolation": ["pool", "silo"]},
        ]})
    );
    assert!(!server.log().contains("s3cret"));
}

/// A Python tool run by the test in `dir` (where it may keep its caches).
fn python(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("python3").args(args).current_dir(dir).output().unwrap()
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_the_api_keeps_to_it() {
    let server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "enterprise", "--wait"]);
    let (_, doc) = server.http().without_token().get("/v1/openapi.json").await;
    let file = server.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    // A standard validator of OpenAPI 3.1 documents.
    let checked =
        python(server.dir.path(), &["-m", "openapi_spec_validator", file.to_str().unwrap()]);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Tenants' own paths name both kinds of credential.
    let secrets = &doc["paths"]["/v1/tenants/{tenant}/secrets"]["get"];
    assert_eq!(secrets["security"], json!([{ "operator_token": [] }, { "tenant_credential": [] }]));
    assert!(
        doc["paths"]["/v1/tenants/{tenant}/audit/events"]["get"]["responses"]["400"].is_object()
    );

    // A property-based tester against the live server, a bounded number of
    // cases per endpoint: no server error, every status and body as
    // documented, requests outside the schema refused. (Not whether every
    // request the schema allows is accepted: tenant names and secret paths
    // have rules the schema does not spell out.)
    let schema = format!("{}/v1/openapi.json", server.api);
    let auth = format!("Authorization: Bearer {}", server.token);
    let report = server.dir.path().join("schemathesis");
    // Tenants' paths on a tenant that exists, so that cases reach more than
    // "not found".
    let config = server.dir.path().join("schemathesis.toml");
    std::fs::write(&config, "[parameters]\n\"path.tenant\" = \"acme\"\n").unwrap();
    let run = python(
        server.dir.path(),
        &[
            "-m",
            "schemathesis.cli",
            "--config-file",
            config.to_str().unwrap(),
            "run",
            &schema,
            "-H",
            &auth,
            "--max-examples",
            "15",
            "--seed",
            "20261202",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_schema_conformance,response_headers_conformance,negative_data_rejection",
            "--report-dir",
            report.to_str().unwrap(),
            // No examples kept between runs: the run is the same every time.
            "--generation-database",
            ":memory:",
        ],
    );
    assert!(
        run.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        server.log()
    );
}
