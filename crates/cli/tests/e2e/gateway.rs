//! The gateway through the real binary and real sockets: two tenants, each
//! with its own real upstream; every check asserts what the upstreams
//! received, not only what the client saw.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    identity::ExternalIdp,
    kit::{GatewayProcess, Server, Store, exit_code, promtool_accepts, stderr, stdout},
    upstream::Upstream,
};

/// Two active tenants, `acme` and `globex`, each with an API `echo` at
/// `/echo` on its own upstream.
struct Two {
    server: Server,
    acme: Upstream,
    globex: Upstream,
}

async fn two_tenants(config: &str) -> Two {
    two_tenants_on(Server::start(Store::Embedded, config, &[]).await).await
}

async fn two_tenants_on(server: Server) -> Two {
    let (acme, globex) = (Upstream::start().await, Upstream::start().await);
    for (tenant, upstream) in [("acme", &acme), ("globex", &globex)] {
        let created =
            server.cli(&["tenants", "create", tenant, "--plan", "professional", "--wait"]);
        assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
        create_api(&server, tenant, "echo", &["--prefix", "/echo", "--upstream", &upstream.url()]);
    }
    Two { server, acme, globex }
}

/// `bulkhead apis create --tenant TENANT NAME ARGS...`, which must succeed.
fn create_api(server: &Server, tenant: &str, name: &str, args: &[&str]) {
    let mut all = vec!["apis", "create", "--tenant", tenant, name];
    all.extend(args);
    let created = server.cli(&all);
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
}

fn gateway_addr(server: &Server) -> SocketAddr {
    addr_of(&server.gateway)
}

pub(crate) fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// A client that reaches `{tenant}.localhost` at the gateway, as DNS would.
fn client(server: &Server) -> reqwest::Client {
    client_at(gateway_addr(server))
}

fn client_at(addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve("acme.localhost", addr)
        .resolve("globex.localhost", addr)
        .resolve("nobody.localhost", addr)
        .build()
        .unwrap()
}

fn url(server: &Server, tenant: &str, path: &str) -> String {
    url_at(gateway_addr(server), tenant, path)
}

fn url_at(addr: SocketAddr, tenant: &str, path: &str) -> String {
    format!("http://{tenant}.localhost:{}{path}", addr.port())
}

pub(crate) fn token(server: &Server, tenant: &str, extra: &[&str]) -> String {
    let mut args =
        vec!["auth", "token", "--tenant", tenant, "--subject", "alice", "--role", "analyst"];
    args.extend(extra);
    let output = server.cli(&args);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    stdout(&output).trim().to_owned()
}

async fn call(client: &reqwest::Client, url: &str, credential: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends `request` as raw bytes and returns the raw answer (or what came
/// before the gateway closed the connection).
async fn raw(server: &Server, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(gateway_addr(server)).await.unwrap();
    // The gateway may answer and close before it read everything (a huge
    // head): what it answered is still there to read.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    // Until the gateway closes, or falls quiet after answering.
    loop {
        let wait = if answer.is_empty() { 5_000 } else { 300 };
        let mut buf = [0u8; 65_536];
        match tokio::time::timeout(Duration::from_millis(wait), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn a_request_reaches_its_own_tenants_upstream_with_verified_context_only() {
    let Two { server, acme, globex } = two_tenants("").await;
    let client = client(&server);
    let acme_token = token(&server, "acme", &[]);
    let globex_token = token(&server, "globex", &[]);

    // Spoofed context in every spelling, with the real credential.
    let response = client
        .get(url(&server, "acme", "/echo/orders?limit=5"))
        .bearer_auth(&acme_token)
        .header("x-bulkhead-tenant", "globex")
        .header("X-Bulkhead-Roles", "owner")
        .header("x_bulkhead_subject", "mallory")
        .header("x-request-id", "req-123")
        .header("forwarded", "for=10.0.0.1")
        .header("x-forwarded-host", "globex.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let seen = acme.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let seen = &seen[0];
    assert_eq!(seen.target, "/echo/orders?limit=5");
    assert_eq!(seen.header("x-bulkhead-tenant"), ["acme"]);
    assert_eq!(seen.header("x-bulkhead-subject"), ["alice"]);
    assert_eq!(seen.header("x-bulkhead-roles"), ["analyst"]);
    assert_eq!(seen.header("x-bulkhead-api"), ["echo"]);
    assert_eq!(seen.header("x-request-id"), ["req-123"]);
    assert_eq!(seen.header("x-forwarded-host").len(), 1);
    assert!(seen.header("x-forwarded-host")[0].starts_with("acme.localhost"), "{seen:?}");
    assert!(seen.header("forwarded")[0].starts_with("for=127.0.0.1;"), "{seen:?}");
    for (name, _) in &seen.headers {
        assert!(!name.contains('_'), "{name} reached the upstream: {seen:?}");
    }
    assert!(globex.seen().is_empty());

    // Another tenant's genuine token, and a control-API token of the tenant
    // itself: refused like a forgery, and nothing reaches an upstream.
    acme.forget();
    let control = token(&server, "acme", &["--control-api"]);
    let (status, foreign) =
        call(&client, &url(&server, "acme", "/echo"), Some(&globex_token)).await;
    assert_eq!(status, 401, "{foreign}");
    assert_eq!(foreign["error"]["code"], "unauthenticated");
    let (status, body) = call(&client, &url(&server, "acme", "/echo"), Some("not-a-token")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"], foreign["error"]["message"],
        "a foreign token looks like a forged one"
    );
    let (status, _) = call(&client, &url(&server, "acme", "/echo"), Some(&control)).await;
    assert_eq!(status, 401, "a control-API token is not an application token");
    assert!(!foreign.to_string().contains("globex"), "{foreign}");

    // Forgeries: `alg: none`, and another realm's header (its kid) on this
    // realm's claims.
    let parts: Vec<&str> = acme_token.split('.').collect();
    let globex_parts: Vec<&str> = globex_token.split('.').collect();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    let swapped_kid = format!("{}.{}.{}", globex_parts[0], parts[1], parts[2]);
    for forged in [alg_none, swapped_kid] {
        let (status, body) = call(&client, &url(&server, "acme", "/echo"), Some(&forged)).await;
        assert_eq!(status, 401, "{forged}: {body}");
    }

    // A token in the query string or a cookie is not read.
    let query = format!("/echo?access_token={acme_token}");
    let (status, _) = call(&client, &url(&server, "acme", &query), None).await;
    assert_eq!(status, 401);
    let cookie = client
        .get(url(&server, "acme", "/echo"))
        .header("cookie", format!("token={acme_token}; access_token={acme_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cookie.status(), 401);

    // API keys: the tenant's own works, another tenant's does not.
    let key_of = |tenant: &str| {
        let created = server.cli_json(&[
            "apikeys", "create", "--tenant", tenant, "--name", "svc", "--role", "viewer",
        ]);
        created["key"].as_str().unwrap().to_owned()
    };
    let (acme_key, globex_key) = (key_of("acme"), key_of("globex"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&client, &url(&server, "acme", "/echo"), Some(&acme_key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&client, &url(&server, "acme", "/echo"), Some(&globex_key)).await;
    assert_eq!(status, 401);
    assert_eq!(acme.seen().len(), 1, "only the tenant's own key got through");
    assert!(globex.seen().is_empty());

    // An unknown tenant and a host that names nobody look alike.
    let (status, unknown) =
        call(&client, &url(&server, "nobody", "/echo"), Some(&acme_token)).await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"]["code"], "not_found");
    let ip = format!("{}/echo", server.gateway);
    let (status, by_ip) = call(&client, &ip, Some(&acme_token)).await;
    assert_eq!(status, 404);
    assert_eq!(by_ip["error"]["message"], unknown["error"]["message"]);
    assert!(by_ip["error"]["request_id"].is_string());
}

#[tokio::test]
async fn an_external_providers_token_reaches_its_own_tenants_upstream_only() {
    // The stand-in provider is plain http on loopback, which only an
    // operator's allow-list permits.
    let server = Server::start(Store::Embedded, "", &["--insecure-jwks-host", "127.0.0.1"]).await;
    let Two { server, acme, globex } = two_tenants_on(server).await;
    let idp = ExternalIdp::start().await;
    let issuer = "https://idp.acme.example/realms/staff";
    let trusted = server.cli(&[
        "auth",
        "trust",
        "--tenant",
        "acme",
        "--issuer",
        issuer,
        "--jwks-url",
        &idp.jwks_url,
        "--audience",
        "acme-app",
        "--subject-claim",
        "email",
        "--roles-claim",
        "groups",
        "--role-map",
        "staff=analyst",
    ]);
    assert_eq!(exit_code(&trusted), 0, "{}", stderr(&trusted));
    create_api(
        &server,
        "acme",
        "billing",
        &["--prefix", "/billing", "--upstream", &acme.url(), "--audience", "billing-app"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": issuer, "aud": "acme-app", "email": "bob@acme.example", "iat": now,
        "exp": now + 300, "groups": ["staff"],
    });
    let token = idp.sign("k1", &claims);
    let client = client(&server);
    let (status, body) = call(&client, &url(&server, "acme", "/echo/x"), Some(&token)).await;
    assert_eq!(status, 200, "{body} {}", server.log());
    let seen = acme.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].header("x-bulkhead-subject"),
        [format!("{issuer}#bob@acme.example").as_str()]
    );
    assert_eq!(seen[0].header("x-bulkhead-roles"), ["analyst"]);

    // Another tenant does not trust the provider; an API with an audience
    // of its own wants a token for it; a token for another application of
    // the provider is refused; none reaches an upstream.
    acme.forget();
    let (status, _) = call(&client, &url(&server, "globex", "/echo/x"), Some(&token)).await;
    assert_eq!(status, 401);
    let (status, _) = call(&client, &url(&server, "acme", "/billing/x"), Some(&token)).await;
    assert_eq!(status, 401);
    let mut other_app = claims.clone();
    other_app["aud"] = serde_json::json!("billing-app");
    let other_app = idp.sign("k1", &other_app);
    let (status, _) = call(&client, &url(&server, "acme", "/echo/x"), Some(&other_app)).await;
    assert_eq!(status, 401);
    assert!(acme.seen().is_empty() && globex.seen().is_empty());
}

#[tokio::test]
async fn host_path_and_framing_tricks_reach_no_other_route_or_tenant() {
    let Two { server, acme, globex } = two_tenants("").await;
    let client = client(&server);
    let acme_token = token(&server, "acme", &[]);
    let port = gateway_addr(&server).port();

    // The host, however it is spelled, names the tenant.
    for host in [
        format!("ACME.LocalHost:{port}"),
        format!("acme.localhost.:{port}"),
        "acme.localhost".into(),
    ] {
        let response = client
            .get(url(&server, "acme", "/echo"))
            .header("host", &host)
            .bearer_auth(&acme_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    assert_eq!(acme.seen().len(), 3);
    acme.forget();

    // Paths that would leave the prefix, or reach another spelling of it.
    let probes = [
        ("/echoes", 404),
        ("/echo/../other", 400),
        ("/echo/%2e%2e/other", 400),
        ("/echo/%2E%2e/other", 400),
        ("/echo%2Fother", 400),
        ("/echo%2fother", 400),
        ("//echo", 400),
        ("/echo//x", 400),
        ("/echo%5c..%5cx", 400),
        ("/ech%6F/x", 200),
        ("/echo;jsessionid=1", 404),
    ];
    for (path, expected) in probes {
        let answer = raw(
            &server,
            format!(
                "GET {path} HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), expected.to_string(), "{path}: {answer}");
    }
    let seen = acme.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/echo/x", "the upstream gets the canonical path");

    // Framing the gateway refuses: another host in the target, two hosts,
    // two lengths, a length and chunking together.
    let shapes = [
        format!(
            "GET http://globex.localhost/echo HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\n\r\n"
        ),
        format!(
            "GET /echo HTTP/1.1\r\nHost: acme.localhost\r\nHost: globex.localhost\r\nAuthorization: Bearer {acme_token}\r\n\r\n"
        ),
        format!(
            "POST /echo HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        ),
        format!(
            "POST /echo HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
        ),
        // The second request on a kept-alive connection is judged too.
        format!(
            "POST /echo HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\nContent-Length: 2\r\n\r\nhiPOST /echo HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /echo HTTP/1.1\r\nHost: acme.localhost\r\nAuthorization: Bearer {acme_token}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: acme.localhost\r\n\r\n"
        ),
    ];
    for shape in &shapes {
        let answer = raw(&server, shape.as_bytes()).await;
        let last = answer.rfind("HTTP/1.1 ").map_or("", |at| &answer[at..]);
        assert_eq!(status_of(last), "400", "{shape}: {answer}");
    }
    // Only the first, well-framed request of the kept-alive pair arrived.
    assert_eq!(acme.seen().len(), 2, "{:?}", acme.seen());
    assert_eq!(acme.seen()[1].body, b"hi");
    assert!(globex.seen().is_empty(), "{:?}", globex.seen());

    // A 10 MB header is refused before any phase runs.
    let huge = format!(
        "GET /echo HTTP/1.1\r\nHost: acme.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10 << 20)
    );
    let answer = raw(&server, huge.as_bytes()).await;
    assert!(
        answer.is_empty() || status_of(&answer) == "431",
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert_eq!(acme.seen().len(), 2);

    // Bodies over the API's cap are refused; those within arrive whole.
    create_api(
        &server,
        "acme",
        "small",
        &["--prefix", "/small", "--max-body-bytes", "1000", "--upstream", &acme.url()],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    acme.forget();
    let post = |body: Vec<u8>| {
        client.post(url(&server, "acme", "/small")).bearer_auth(&acme_token).body(body).send()
    };
    assert_eq!(post(vec![b'x'; 2000]).await.unwrap().status(), 413);
    assert!(acme.seen().is_empty());
    assert_eq!(post(vec![b'y'; 500]).await.unwrap().status(), 200);
    assert_eq!(acme.seen()[0].body, vec![b'y'; 500]);
}

#[tokio::test]
async fn a_slow_client_is_cut_by_the_header_read_timeout() {
    let Two { server, acme, .. } = two_tenants("[gateway]\nheader_read_timeout = \"1s\"\n").await;
    let mut stream = tokio::net::TcpStream::connect(gateway_addr(&server)).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET /echo HTTP/1.1\r\nHost: acme.localhost\r\n").await.unwrap();
    let mut cut = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"X-Slow: a\r\n").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {
                cut = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut, "the slow client was never cut");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(acme.seen().is_empty());
}

#[tokio::test]
async fn suspension_and_new_apis_reach_the_gateway_within_a_second() {
    let Two { server, acme, .. } = two_tenants("").await;
    let client = client(&server);
    let acme_token = token(&server, "acme", &[]);
    let wait_for = |status: u16, path: &'static str| {
        let (client, url, token) = (client.clone(), url(&server, "acme", path), acme_token.clone());
        async move {
            let started = Instant::now();
            loop {
                let (got, body) = call(&client, &url, Some(&token)).await;
                if got == status {
                    return (started.elapsed(), body);
                }
                assert!(started.elapsed() < Duration::from_secs(1), "still {got} {body} after 1 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let suspended = server.cli(&["tenants", "suspend", "acme"]);
    assert_eq!(exit_code(&suspended), 0, "{}", stderr(&suspended));
    let (took, body) = wait_for(403, "/echo").await;
    assert_eq!(body["error"]["code"], "tenant_suspended");
    eprintln!("suspension reached the gateway in {took:?}");
    assert_eq!(exit_code(&server.cli(&["tenants", "resume", "acme"])), 0);
    wait_for(200, "/echo").await;

    let (status, _) = call(&client, &url(&server, "acme", "/other/x"), Some(&acme_token)).await;
    assert_eq!(status, 404);
    create_api(
        &server,
        "acme",
        "other",
        &["--prefix", "/other", "--strip-prefix", "--upstream", &acme.url()],
    );
    let (took, _) = wait_for(200, "/other/x").await;
    eprintln!("a new API reached the gateway in {took:?}");
    assert_eq!(acme.seen().last().unwrap().target, "/x", "the prefix was stripped");

    // Revoking the realm's tokens ends them at the gateway too.
    let revoked = server.cli(&["auth", "revoke-tokens", "--tenant", "acme"]);
    assert_eq!(exit_code(&revoked), 0, "{}", stderr(&revoked));
    wait_for(401, "/echo").await;
}

#[tokio::test]
async fn apis_are_checked_and_listed() {
    let Two { server, globex, .. } = two_tenants("").await;
    let bad = [
        (vec!["--prefix", "echo", "--upstream", "http://127.0.0.1:1"], "does not start with '/'"),
        (
            vec!["--prefix", "/x", "--upstream", "https://example.com:443"],
            "an upstream is http://host:port",
        ),
        (
            vec![
                "--prefix",
                "/x",
                "--upstream",
                "http://127.0.0.1:1",
                "--public",
                "--role",
                "admin",
            ],
            "a public API takes no credential",
        ),
        (
            vec!["--prefix", "/echo", "--upstream", "http://127.0.0.1:1"],
            "which API \"echo\" serves already",
        ),
    ];
    for (args, expected) in bad {
        let mut all = vec!["apis", "create", "--tenant", "acme", "second"];
        all.extend(args);
        let output = server.cli(&all);
        assert_ne!(exit_code(&output), 0);
        assert!(stderr(&output).contains(expected), "{all:?}: {}", stderr(&output));
    }
    let duplicate = server.cli(&[
        "apis",
        "create",
        "--tenant",
        "acme",
        "echo",
        "--prefix",
        "/e2",
        "--upstream",
        "http://127.0.0.1:1",
    ]);
    assert!(
        stderr(&duplicate).contains("already has an API named \"echo\""),
        "{}",
        stderr(&duplicate)
    );
    let listed = server.cli_json(&["apis", "list", "--tenant", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["auth"], "required");
    let deleted = server.cli(&["apis", "delete", "--tenant", "acme", "echo"]);
    assert_eq!(exit_code(&deleted), 0, "{}", stderr(&deleted));
    let missing = server.cli(&["apis", "get", "--tenant", "acme", "echo"]);
    assert!(stderr(&missing).contains("has no API named \"echo\""), "{}", stderr(&missing));
    let events = server.audit_events(&["acme"]);
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"api.create") && actions.contains(&"api.delete"), "{actions:?}");

    // A public API is explicit, answers without a credential, and is what
    // `verify` lists, across tenants.
    let none = server.cli(&["verify"]);
    assert_eq!(exit_code(&none), 0, "{}", stderr(&none));
    assert!(stdout(&none).contains("public APIs: none"), "{}", stdout(&none));
    create_api(
        &server,
        "globex",
        "status",
        &["--prefix", "/status", "--upstream", &globex.url(), "--public"],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = call(&client(&server), &url(&server, "globex", "/status"), None).await;
    assert_eq!(status, 200);
    assert_eq!(globex.seen().len(), 1);
    assert!(globex.seen()[0].header("x-bulkhead-subject").is_empty());
    let (status, _) = call(&client(&server), &url(&server, "globex", "/echo"), None).await;
    assert_eq!(status, 401, "the tenant's other API still wants a credential");
    let listed = server.cli(&["verify"]);
    assert!(
        stdout(&listed).contains("public APIs: 1 answer without a credential"),
        "{}",
        stdout(&listed)
    );
    let listed = server.cli_json(&["verify"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["tenant"], "globex");
    assert_eq!(listed[0]["api"]["name"], "status");
    assert_eq!(listed[0]["api"]["auth"], "public");
}

#[tokio::test]
async fn an_api_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected() {
    let Two { server, acme, globex } = two_tenants("").await;
    create_api(
        &server,
        "acme",
        "limited",
        &["--prefix", "/limited", "--rate-limit", "60", "--burst", "3", "--upstream", &acme.url()],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    acme.forget();
    let client = client(&server);
    let acme_token = token(&server, "acme", &[]);
    let globex_token = token(&server, "globex", &[]);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = client
            .get(url(&server, "acme", "/limited"))
            .bearer_auth(&acme_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        remaining.push(response.headers()["ratelimit-remaining"].to_str().unwrap().to_owned());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let refused =
        client.get(url(&server, "acme", "/limited")).bearer_auth(&acme_token).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 1, "one request a second");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(acme.seen().len(), 3, "the refused request never reached the upstream");

    // The tenant's other API and the other tenant go on as before.
    let (status, _) = call(&client, &url(&server, "acme", "/echo"), Some(&acme_token)).await;
    assert_eq!(status, 200);
    let (status, _) = call(&client, &url(&server, "globex", "/echo"), Some(&globex_token)).await;
    assert_eq!(status, 200);
    assert_eq!(globex.seen().len(), 1);

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again =
        client.get(url(&server, "acme", "/limited")).bearer_auth(&acme_token).send().await.unwrap();
    assert_eq!(again.status(), 200, "after Retry-After the request passes");
}

#[tokio::test]
async fn decisions_are_counted_as_usage_and_audited_as_the_api_says() {
    let config = "[gateway]\nusage_flush_every = \"1s\"\nmetrics_tenant_labels = 1\n";
    let Two { server, acme, globex: _globex } = two_tenants(config).await;
    create_api(
        &server,
        "acme",
        "audited",
        &["--prefix", "/audited", "--audit", "all", "--upstream", &acme.url()],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = client(&server);
    let acme_token = token(&server, "acme", &[]);
    for path in ["/audited/a", "/audited/b", "/echo"] {
        let (status, _) = call(&client, &url(&server, "acme", path), Some(&acme_token)).await;
        assert_eq!(status, 200);
    }
    let (status, _) = call(&client, &url(&server, "acme", "/echo"), Some("forged")).await;
    assert_eq!(status, 401);
    let globex_token = token(&server, "globex", &[]);
    let (status, _) = call(&client, &url(&server, "globex", "/echo"), Some(&globex_token)).await;
    assert_eq!(status, 200);

    // /metrics: per-tenant series up to the cap (1 here), the rest summed.
    let metrics =
        reqwest::get(format!("{}/metrics", server.api)).await.unwrap().text().await.unwrap();
    for line in [
        "bulkhead_gateway_requests_total{tenant=\"acme\"} 4",
        "bulkhead_gateway_requests_total{tenant=\"_other\"} 1",
        "bulkhead_gateway_tenant_refusals_total{tenant=\"acme\"} 1",
        "bulkhead_gateway_refusals_total{phase=\"authn\",code=\"unauthenticated\"} 1",
        "bulkhead_gateway_upstream_duration_seconds_count 4",
        "bulkhead_gateway_limiter_decisions_total{by=\"local\"}",
        "bulkhead_gateway_record_drops_total{queue=\"usage\"} 0",
        "bulkhead_gateway_snapshot_tenants 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    promtool_accepts(&metrics).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage = server.cli_json(&["usage", "--tenant", "acme"]);
        let total: u64 =
            usage.as_array().unwrap().iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        if total >= 4 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rows = usage.as_array().unwrap();
    let of = |api: Option<&str>| -> (u64, Value) {
        let matching: Vec<&Value> = rows.iter().filter(|r| r["api"].as_str() == api).collect();
        let requests = matching.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        (requests, matching.first().map(|r| r["refused"].clone()).unwrap_or(Value::Null))
    };
    assert_eq!(of(Some("audited")).0, 2, "{usage}");
    assert_eq!(of(Some("echo")).0, 1, "{usage}");
    let (refused, phases) = of(None);
    assert_eq!(refused, 1, "the forged credential was refused before a route: {usage}");
    assert_eq!(phases["authn"], 1, "{usage}");
    let audited_row = rows.iter().find(|r| r["api"] == "audited").unwrap();
    assert!(audited_row["bytes_out"].as_u64().unwrap() > 0, "{audited_row}");
    assert_eq!(audited_row["upstream_responses"], 2);

    // `audit: all` records every request of that API; the default records
    // refusals only.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = server.audit_events(&["acme"]);
        let gateway: Vec<&Value> =
            events.iter().filter(|e| e["action"] == "gateway.request").collect();
        let allowed: Vec<&Value> =
            gateway.iter().copied().filter(|e| e["outcome"] == "ok").collect();
        let denied: Vec<&Value> =
            gateway.iter().copied().filter(|e| e["outcome"] == "denied").collect();
        if allowed.len() >= 2 && !denied.is_empty() {
            assert_eq!(allowed.len(), 2, "{allowed:?}");
            assert!(allowed.iter().all(|e| e["details"]["api"] == "audited"), "{allowed:?}");
            assert_eq!(allowed[0]["actor_id"], "alice");
            assert_eq!(allowed[0]["resource"], "apis/audited");
            assert!(allowed[0]["request_id"].is_string(), "{allowed:?}");
            assert_eq!(denied.len(), 1, "{denied:?}");
            assert_eq!(denied[0]["details"]["phase"], "authn");
            assert_eq!(denied[0]["details"]["code"], "unauthenticated");
            break;
        }
        assert!(Instant::now() < deadline, "{gateway:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The address of the PostgreSQL server tests use.
fn postgres_addr() -> SocketAddr {
    let url = bulkhead_testkit::postgres_admin_url();
    let hostport = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(hostport).unwrap().next().unwrap()
}

pub fn redis_addr() -> SocketAddr {
    let url = std::env::var("BULKHEAD_TEST_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let hostport = url.trim_start_matches("redis://").split('/').next().unwrap().to_owned();
    std::net::ToSocketAddrs::to_socket_addrs(&hostport).unwrap().next().unwrap()
}

/// Statuses of `count` requests, alternating between `urls`.
async fn statuses(urls: &[String], token: &str, count: usize) -> Vec<u16> {
    // Any address will do: the port comes from each URL.
    let client = client_at("127.0.0.1:0".parse().unwrap());
    let mut got = Vec::new();
    for i in 0..count {
        got.push(call(&client, &urls[i % urls.len()], Some(token)).await.0);
    }
    got
}

#[tokio::test]
async fn gateways_on_their_own_share_one_limit_through_redis_and_fall_back_without_it() {
    let Two { server, acme, globex: _globex } = two_tenants_on(Server::postgres().await).await;
    create_api(
        &server,
        "acme",
        "limited",
        &["--prefix", "/limited", "--rate-limit", "1", "--burst", "4", "--upstream", &acme.url()],
    );
    let redis =
        bulkhead_testkit::TcpProxy::start("127.0.0.1:0".parse().unwrap(), redis_addr()).await;
    let prefix = bulkhead_testkit::unique_name("bh-test-", 12) + ":";
    // A loaded test machine may take longer than the default 25 ms.
    let config = format!(
        "[gateway]\nredis = \"redis://{}\"\nredis_prefix = \"{prefix}\"\nredis_timeout_ms = 500\n",
        redis.addr
    );
    let store = &server.postgres_db().url;
    let (a, b) =
        (GatewayProcess::start(store, &config).await, GatewayProcess::start(store, &config).await);
    let acme_token = token(&server, "acme", &[]);
    let urls: Vec<String> =
        [&a, &b].iter().map(|g| url_at(addr_of(&g.url), "acme", "/limited")).collect();
    // Both replicas register in Redis within a heartbeat or two.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let shared = statuses(&urls, &acme_token, 8).await;
    assert_eq!(
        shared.iter().filter(|s| **s == 200).count(),
        4,
        "one limit of 4 for both: {shared:?}"
    );
    assert!(shared.iter().all(|s| *s == 200 || *s == 429), "{shared:?}");

    // globex says `deny` for when Redis is away.
    let deny = server.cli(&["tenants", "update", "globex", "--limiter-fallback", "deny"]);
    assert_eq!(exit_code(&deny), 0, "{}", stderr(&deny));
    let globex_token = token(&server, "globex", &[]);
    let globex_urls: Vec<String> =
        [&a, &b].iter().map(|g| url_at(addr_of(&g.url), "globex", "/echo")).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(statuses(&globex_urls, &globex_token, 2).await, [200, 200]);

    // Redis goes away: acme's plan's fallback (local) gives each replica
    // its share of the burst, in memory; globex is refused until it is back.
    let stopped = redis.stop().await;
    let alone = statuses(&urls, &acme_token, 8).await;
    assert_eq!(
        alone.iter().filter(|s| **s == 200).count(),
        4,
        "2 + 2 from local shares: {alone:?}"
    );
    assert_eq!(statuses(&globex_urls, &globex_token, 2).await, [503, 503], "fallback deny");

    // Back: the shared bucket, still empty, decides again.
    let _redis = stopped.restart().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let back = statuses(&urls, &acme_token, 4).await;
    assert!(back.iter().all(|s| *s == 429), "{back:?}");
    delete_redis_keys(&prefix);
}

/// Deletes every key starting with `prefix` from the tests' Redis.
pub fn delete_redis_keys(prefix: &str) {
    let (ip, port) = (redis_addr().ip(), redis_addr().port());
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("redis-cli -h {ip} -p {port} --scan --pattern '{prefix}*' | xargs -r redis-cli -h {ip} -p {port} del"))
        .status();
}

#[tokio::test]
async fn a_gateway_on_its_own_serves_through_a_store_outage_and_catches_up() {
    let Two { server, acme, .. } = two_tenants_on(Server::postgres().await).await;
    let postgres =
        bulkhead_testkit::TcpProxy::start("127.0.0.1:0".parse().unwrap(), postgres_addr()).await;
    let direct = &server.postgres_db().url;
    let at = direct.split('@').nth(1).unwrap().split('/').next().unwrap();
    let through_proxy = direct.replacen(at, &postgres.addr.to_string(), 1);
    let gateway = GatewayProcess::start(&through_proxy, "").await;
    let client = client_at(addr_of(&gateway.url));
    let at_gateway = |path: &str| url_at(addr_of(&gateway.url), "acme", path);
    let acme_token = token(&server, "acme", &[]);
    let (status, body) = call(&client, &at_gateway("/echo"), Some(&acme_token)).await;
    assert_eq!(status, 200, "{body}\n{}", gateway.log());

    // A change reaches it through the store's notifications.
    let wait_for = |path: &'static str, within: Duration| {
        let (client, url, token) = (client.clone(), at_gateway(path), acme_token.clone());
        async move {
            let started = Instant::now();
            loop {
                let (status, _) = call(&client, &url, Some(&token)).await;
                if status == 200 {
                    return started.elapsed();
                }
                assert!(started.elapsed() < within, "{url} still {status} after {within:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    create_api(&server, "acme", "late", &["--prefix", "/late", "--upstream", &acme.url()]);
    let took = wait_for("/late", Duration::from_secs(1)).await;
    eprintln!("a new API reached a gateway on its own in {took:?}");

    // The store goes away: the gateway keeps serving what it has.
    let stopped = postgres.stop().await;
    for _ in 0..10 {
        let (status, _) = call(&client, &at_gateway("/echo"), Some(&acme_token)).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    create_api(&server, "acme", "during", &["--prefix", "/during", "--upstream", &acme.url()]);
    let (status, _) = call(&client, &at_gateway("/during"), Some(&acme_token)).await;
    assert_eq!(status, 404, "the gateway cannot know yet");

    // Back: it catches up with what it missed.
    let _postgres = stopped.restart().await;
    let took = wait_for("/during", Duration::from_secs(10)).await;
    eprintln!("caught up {took:?} after the store came back");
}

/// `curl` with `args` through the gateway, on a blocking thread: the test's
/// upstream shares this test's single-threaded runtime and must keep
/// answering meanwhile. Returns curl's `-w` output after the body.
async fn curl_at(server: &Server, args: &[&str]) -> String {
    let port = gateway_addr(server).port();
    let mut all: Vec<String> =
        ["-sS", "--max-time", "10", "--resolve"].iter().map(|s| (*s).to_owned()).collect();
    all.push(format!("acme.localhost:{port}:127.0.0.1"));
    all.extend(args.iter().map(|s| s.replace("{port}", &port.to_string())));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&all).output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn http2_clients_and_h2c_upstreams_are_proxied_both_ways() {
    let Two { server, acme, globex: _globex } = two_tenants("").await;
    create_api(
        &server,
        "acme",
        "h2",
        &["--prefix", "/h2", "--upstream", &acme.url(), "--protocol", "h2c"],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bearer = format!("Authorization: Bearer {}", token(&server, "acme", &[]));
    let cases = [
        // (client, path, what the upstream speaks)
        ("--http2-prior-knowledge", "/echo/a", "HTTP/1.1"),
        ("--http2-prior-knowledge", "/h2/b", "HTTP/2.0"),
        ("--http1.1", "/h2/c", "HTTP/2.0"),
    ];
    for (client_flag, path, upstream_version) in cases {
        acme.forget();
        let url = format!("http://acme.localhost:{{port}}{path}");
        let out = curl_at(
            &server,
            &[
                client_flag,
                "-H",
                &bearer,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                &url,
            ],
        )
        .await;
        let expected_client = if client_flag == "--http1.1" { "1.1" } else { "2" };
        assert_eq!(out, format!("200 {expected_client}"), "{path}: {}", server.log());
        let seen = acme.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].version, upstream_version, "{path}");
        assert_eq!(seen[0].target, path);
        assert_eq!(seen[0].header("x-bulkhead-tenant"), ["acme"]);
        assert!(seen[0].header("host")[0].starts_with("acme.localhost"), "{seen:?}");
    }

    // A body goes through both ways, and an HTTP/2 client without a
    // credential is refused like any other.
    acme.forget();
    let url = "http://acme.localhost:{port}/h2/post";
    let out = curl_at(
        &server,
        &[
            "--http2-prior-knowledge",
            "-H",
            &bearer,
            "--data-binary",
            "hello h2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    )
    .await;
    assert_eq!(out, "200");
    assert_eq!(acme.seen()[0].body, b"hello h2");
    acme.forget();
    let out = curl_at(
        &server,
        &["--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", url],
    )
    .await;
    assert_eq!(out, "401");
    assert!(acme.seen().is_empty());
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let Two { server, acme: _upstream, .. } = two_tenants("").await;
    let acme_token = token(&server, "acme", &[]);
    let mut response = client(&server)
        .get(url(&server, "acme", "/echo/sse"))
        .bearer_auth(&acme_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", server.log());
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let mut arrivals = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        let text = String::from_utf8_lossy(&chunk).into_owned();
        for event in text.split("\n\n").filter(|e| !e.is_empty()) {
            arrivals.push((started.elapsed(), event.to_owned()));
        }
    }
    let events: Vec<&str> = arrivals.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(events, ["data: event 0", "data: event 1", "data: event 2"]);
    // The upstream sends one every 300 ms: buffered, they would come at once.
    for pair in arrivals.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(200), "{arrivals:?}");
    }
}

#[tokio::test]
async fn a_tenant_whose_upstream_hangs_fills_only_its_own_bulkhead() {
    let Two { server, acme, globex } = two_tenants("").await;
    // A third tenant on the starter plan (64 requests in flight, 32 upstream
    // connections), whose upstream never answers.
    let created = server.cli(&["tenants", "create", "hog", "--plan", "starter", "--wait"]);
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    create_api(
        &server,
        "hog",
        "hang",
        &["--prefix", "/hang", "--response-timeout", "1h", "--upstream", &acme.url()],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hog_token = token(&server, "hog", &[]);
    let globex_token = token(&server, "globex", &[]);
    let addr = gateway_addr(&server);
    let hog_client = reqwest::Client::builder()
        .resolve("hog.localhost", addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // The flood: more requests than the hog may have in flight.
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let request = hog_client.get(url(&server, "hog", "/hang")).bearer_auth(&hog_token);
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(3), request.send()).await {
                    Ok(Ok(response)) => Some(response.status().as_u16()),
                    _ => None,
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Meanwhile another tenant is served as before.
    let client = client(&server);
    for _ in 0..20 {
        let (status, _) =
            call(&client, &url(&server, "globex", "/echo"), Some(&globex_token)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(globex.seen().len(), 20);

    let mut overloaded = 0;
    let mut hanging = 0;
    for request in flood {
        match request.await.unwrap() {
            Some(503) => overloaded += 1,
            None => hanging += 1,
            Some(other) => panic!("the hog got {other}"),
        }
    }
    // At most 32 reached the upstream (its connection cap); the rest were
    // refused at once, for the hog only.
    assert!(hanging <= 32, "{hanging} hanging, {overloaded} refused");
    assert!(overloaded >= 68, "{hanging} hanging, {overloaded} refused");
    let reached = acme.seen().iter().filter(|s| s.target == "/hang").count();
    assert!(reached <= 32, "{reached} requests reached the hanging upstream");
}

#[tokio::test]
async fn a_websocket_is_proxied_and_echoes() {
    use std::{
        io::BufRead,
        process::{Child, Command, Stdio},
    };
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let Two { server, .. } = two_tenants("").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/ws_echo.py");
    let mut upstream = Killed(
        Command::new("python3").args([script, "serve"]).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut port = String::new();
    std::io::BufReader::new(upstream.0.stdout.take().unwrap()).read_line(&mut port).unwrap();
    create_api(
        &server,
        "acme",
        "chat",
        &["--prefix", "/ws", "--upstream", &format!("http://127.0.0.1:{}", port.trim())],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway_port = gateway_addr(&server).port().to_string();
    let acme_token = token(&server, "acme", &[]);
    let client = Command::new("python3")
        .args([script, "client", &gateway_port, &acme_token])
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&client.stderr),
        server.log()
    );
    let lines: Vec<String> =
        String::from_utf8_lossy(&client.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines, ["tenant=acme", "one", "two", "three"]);

    // Without a valid credential the upgrade never reaches the upstream.
    let refused =
        Command::new("python3").args([script, "client", &gateway_port, "forged"]).output().unwrap();
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("401"), "{error}");
}
