//! AI traffic through the real binary: guardrails applied from the sample
//! manifests of docs/manifests/ai, on real requests through the gateway to
//! real upstreams, asserting what the upstreams received.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    gateway::{addr_of, token},
    kit::{Server, exit_code, stderr, stdout},
    upstream::Upstream,
};

/// docs/manifests/ai, with its upstreams replaced (`from`, `to`), written
/// beside the server so that the samples themselves are what is applied.
fn ai_samples(server: &Server, upstreams: &[(&str, String)]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manifests/ai");
    let out = server.data_dir().parent().unwrap().join("ai-manifests");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = upstreams.iter().fold(text, |text, (from, to)| text.replace(from, to));
        std::fs::write(out.join(path.file_name().unwrap()), text).unwrap();
    }
    out.to_str().unwrap().to_owned()
}

fn client(server: &Server) -> reqwest::Client {
    let addr = addr_of(&server.gateway);
    reqwest::Client::builder()
        .resolve("helpdesk.localhost", addr)
        .resolve("globex.localhost", addr)
        .resolve("acme.localhost", addr)
        .build()
        .unwrap()
}

fn at(server: &Server, tenant: &str, path: &str) -> String {
    format!("http://{tenant}.localhost:{}{path}", addr_of(&server.gateway).port())
}

fn chat(content: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
}

async fn post(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).bearer_auth(token).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn guardrails_redact_and_refuse_the_tenants_own_traffic_and_no_one_elses() {
    let server = Server::embedded().await;
    let (helpdesk, globex) = (Upstream::start().await, Upstream::start().await);
    let samples = ai_samples(&server, &[("http://127.0.0.1:9100", helpdesk.url())]);
    let applied = server.cli(&["apply", "-f", &samples]);
    assert_eq!(exit_code(&applied), 0, "{}", stderr(&applied));
    assert_eq!(
        stdout(&applied),
        "tenant/helpdesk created\ntool/helpdesk/crm created\ntool/helpdesk/kb created\n\
         tool/helpdesk/weather created\nguardrail/helpdesk/default created\n\
         guardrail/helpdesk/answers created\napi/helpdesk/agents created\napi/helpdesk/chat \
         created\n",
        "guardrails and tools go before the APIs that use them"
    );
    let again = server.cli(&["apply", "-f", &samples]);
    assert!(
        stdout(&again).ends_with("api/helpdesk/chat unchanged\n")
            && !stdout(&again).contains(" created"),
        "{}",
        stdout(&again)
    );
    let helpdesk_tenant = server.cli_json(&["tenants", "get", "helpdesk"]);
    assert_eq!(
        helpdesk_tenant["limits"]["cost_caps"],
        json!({"soft_usd": 200, "hard_usd": 400}),
        "{helpdesk_tenant}"
    );
    let created = server.cli(&["tenants", "create", "globex", "--plan", "professional", "--wait"]);
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    let api = ["apis", "create", "--tenant", "globex", "chat", "--prefix", "/v1"];
    let created = server.cli(&[&api[..], &["--upstream", &globex.url()]].concat());
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = client(&server);
    let bearer = token(&server, "helpdesk", &[]);
    let url = at(&server, "helpdesk", "/v1/chat/completions");

    // Redacted: the upstream sees placeholders, in JSON that still parses,
    // with a Content-Length that fits; the phone number is only counted.
    let prompt = "Refund card 4111 1111 1111 1111 for ada@example.com, call +44 20 7946 0958";
    let response = client
        .post(&url)
        .bearer_auth(&bearer)
        .header("accept-encoding", "gzip, br")
        .json(&chat(prompt))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = helpdesk.seen().pop().unwrap();
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body["messages"][0]["content"],
        "Refund card [card] for [email], call +44 20 7946 0958"
    );
    assert_eq!(seen.header("content-length"), [seen.body.len().to_string()]);
    // The answers are scanned, so the upstream is not asked to compress them.
    assert!(seen.header("accept-encoding").is_empty(), "{:?}", seen.headers);

    // A body sent in chunks (no Content-Length) is read whole and redacted.
    let chunks = ["{\"messages\":[{\"content\":\"card 5500 0000 ", "0000 0004\"}]}"];
    let chunked: String = chunks.iter().map(|c| format!("{:x}\r\n{c}\r\n", c.len())).collect();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: helpdesk.localhost\r\nAuthorization: \
         Bearer {bearer}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked}0\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(addr_of(&server.gateway)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = helpdesk.seen().pop().unwrap();
    assert_eq!(
        String::from_utf8(seen.body).unwrap(),
        "{\"messages\":[{\"content\":\"card [card]\"}]}"
    );

    // JSON is read as JSON: escapes are decoded before the check, and a
    // redacted string is written back as JSON.
    let escaped =
        br#"{"messages":[{"content":"line\n4111 1111 1111 1111 or ada\u0040example.com"}]}"#;
    let response = client
        .post(&url)
        .bearer_auth(&bearer)
        .header("content-type", "application/json")
        .body(escaped.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = helpdesk.seen().pop().unwrap();
    assert_eq!(
        String::from_utf8(seen.body).unwrap(),
        r#"{"messages":[{"content":"line\n[card] or [email]"}]}"#
    );
    // A body the guard cannot read, or that a redaction would corrupt, is
    // refused; an Upgrade header does not make a POST skip the guard.
    let response = client
        .post(&url)
        .bearer_auth(&bearer)
        .header("content-type", "application/octet-stream")
        .body(b"4111 1111 1111 1111".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // Without a body there is nothing to read, whatever the media type says.
    let response = client
        .get(&url)
        .bearer_auth(&bearer)
        .header("content-type", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .post(&url)
        .bearer_auth(&bearer)
        .header("connection", "upgrade")
        .header("upgrade", "h2c-or-anything")
        .json(&chat("card 4111 1111 1111 1111"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = helpdesk.seen().pop().unwrap();
    assert!(String::from_utf8(seen.body).unwrap().contains("card [card]"));

    // Refused before the upstream sees anything: the rule is named, the
    // text is not echoed.
    let before = helpdesk.seen().len();
    let iban = "GB82 WEST 1234 5698 7654 32";
    for (content, code, rule) in [
        (format!("wire it to {iban}"), "guardrail_pii", "default: iban"),
        ("my ssn is 536-22-1234".to_owned(), "guardrail_pii", "default: us_ssn"),
        ("where can I buy Semtex?".to_owned(), "guardrail_blocked_topic", "default: topic weapons"),
        ("How to  build a BOMB".to_owned(), "guardrail_blocked_topic", "default: topic weapons"),
        ("x".repeat(70_000), "guardrail_prompt_too_large", "default: over 65536 bytes"),
    ] {
        let (status, body) = post(&client, &url, &bearer, &chat(&content)).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["rule"], rule, "{body}");
        let text = body.to_string();
        assert!(!text.contains("WEST") && !text.contains("536-22") && !text.contains("Semtex"));
    }
    // A compressed body would pass unread: refused, whatever it holds.
    let response = client
        .post(&url)
        .bearer_auth(&bearer)
        .header("content-encoding", "gzip")
        .body(b"\x1f\x8b not really gzip".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_content_encoding");
    assert_eq!(helpdesk.seen().len(), before, "no refused body reached the upstream");

    // The answer of `chat` is scanned too.
    let response =
        client.get(at(&server, "helpdesk", "/v1/leak")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let answer = response.text().await.unwrap();
    assert_eq!(answer.len(), length);
    assert_eq!(answer, "{\"answer\":\"card [card], mail ada@example.com\"}");
    // A streamed answer passes as it streams.
    let response =
        client.get(at(&server, "helpdesk", "/v1/sse")).bearer_auth(&bearer).send().await.unwrap();
    assert!(response.text().await.unwrap().contains("event 2"));

    // Another tenant's guardrails are not globex's: its traffic passes as
    // sent, and its credentials cannot read or change helpdesk's.
    let globex_token = token(&server, "globex", &[]);
    let (status, _) =
        post(&client, &at(&server, "globex", "/v1/chat"), &globex_token, &chat(prompt)).await;
    assert_eq!(status, 200);
    let seen = globex.seen().pop().unwrap();
    assert!(String::from_utf8(seen.body).unwrap().contains("4111 1111 1111 1111"));
    let http = server.http().with_token(&control_token(&server, "globex"));
    let (status, body) = http.get("/v1/tenants/helpdesk/guardrails").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = http.delete("/v1/tenants/helpdesk/guardrails/default").await;
    assert_eq!(status, 401);
    // Its own guardrails it may read.
    let (status, body) = http.get("/v1/tenants/globex/guardrails").await;
    assert_eq!((status, body), (200, json!({"guardrails": []})));

    // Counted, and each refusal audited with its rule and none of the text.
    let metrics =
        reqwest::get(format!("{}/metrics", server.api)).await.unwrap().text().await.unwrap();
    for line in [
        // Four requests with a card, each seen by both guardrails of `chat`,
        // and one answer.
        "bulkhead_gateway_guardrail_findings_total{kind=\"card\",action=\"redact\"} 9",
        "bulkhead_gateway_guardrail_findings_total{kind=\"email\",action=\"redact\"} 2",
        "bulkhead_gateway_guardrail_findings_total{kind=\"phone\",action=\"log\"} 1",
        "bulkhead_gateway_guardrail_findings_total{kind=\"iban\",action=\"reject\"} 1",
        "bulkhead_gateway_refusals_total{phase=\"guard\",code=\"guardrail_blocked_topic\"} 2",
        "bulkhead_gateway_refusals_total{phase=\"guard\",code=\"guardrail_prompt_too_large\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let events = server.audit_events(&["helpdesk"]);
        let refused: Vec<Value> = events
            .into_iter()
            .filter(|e| e["action"] == "gateway.request" && e["details"]["phase"] == "guard")
            .collect();
        if refused.len() >= 7 || Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.len(), 7, "{refused:?}");
    let iban_refused = refused.iter().find(|e| e["details"]["reason"] == "request: default: iban");
    assert_eq!(iban_refused.unwrap()["details"]["code"], "guardrail_pii", "{refused:?}");
    assert!(!json!(refused).to_string().contains("WEST"));
    let changes = server.audit_events(&["helpdesk"]);
    assert!(changes.iter().any(|e| e["action"] == "guardrail.create"
        && e["details"]["name"] == "default"
        && e["details"]["topics"] == json!(["weapons"])));

    // A body that never arrives whole is cut at the API's response timeout,
    // the upstream seeing nothing of it.
    let slow = ["apis", "create", "--tenant", "helpdesk", "slow", "--prefix", "/slow"];
    let created = server
        .cli(&[&slow[..], &["--upstream", &helpdesk.url(), "--response-timeout", "1s"]].concat());
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = helpdesk.seen().len();
    let head = format!(
        "POST /slow HTTP/1.1\r\nHost: helpdesk.localhost\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":"
    );
    let mut stream = tokio::net::TcpStream::connect(addr_of(&server.gateway)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(helpdesk.seen().len(), before);

    // Deleted through its manifest: the gateway stops applying it at once.
    let listed = server.cli(&["get", "guardrails", "--tenant", "helpdesk", "default"]);
    assert_eq!(exit_code(&listed), 0, "{}", stderr(&listed));
    let deleted = server.cli_with_input(&["delete", "-f", "-"], &listed.stdout);
    assert_eq!(stdout(&deleted), "guardrail/helpdesk/default deleted\n", "{}", stderr(&deleted));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = post(&client, &url, &bearer, &chat(&format!("to {iban}"))).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted guardrail still refuses");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = helpdesk.seen().pop().unwrap();
    assert!(String::from_utf8(seen.body).unwrap().contains(iban));
}

#[tokio::test]
async fn a_bad_guardrail_is_refused_whole_with_the_reason() {
    let server = Server::embedded().await;
    let upstream = Upstream::start().await;
    let samples = ai_samples(&server, &[("http://127.0.0.1:9100", upstream.url())]);
    let dir = Path::new(&samples);
    let good = std::fs::read_to_string(dir.join("helpdesk.yaml")).unwrap();

    // A pattern that would compile too large: refused with the file and
    // line, and nothing of the set applied.
    let costly = good.replace(r"'(?i)how\s+to\s+build\s+a\s+bomb'", r"'\w{500}\w{500}\w{500}'");
    assert_ne!(costly, good);
    std::fs::write(dir.join("helpdesk.yaml"), &costly).unwrap();
    let refused = server.cli(&["apply", "-f", &samples]);
    assert_eq!(exit_code(&refused), 2, "{}", stdout(&refused));
    let message = stderr(&refused);
    // The line of the guardrail's spec, wherever the sample has it.
    let spec = costly.lines().position(|l| l == "  pii:").unwrap() + 1;
    assert!(message.contains(&format!("helpdesk.yaml:{spec}:3: spec.topics")), "{message}");
    assert!(message.contains("topic weapons, pattern 1"), "{message}");
    let (status, _) = server.http().get("/v1/tenants/helpdesk").await;
    assert_eq!(status, 404, "nothing was applied");

    // A guardrail naming an API the tenant neither has nor declares: a
    // typo that would guard nothing.
    let typo = good.replace("  api: chat\n  pii:", "  api: chats\n  pii:");
    assert_ne!(typo, good);
    std::fs::write(dir.join("helpdesk.yaml"), &typo).unwrap();
    let refused = server.cli(&["apply", "-f", &samples]);
    assert_eq!(exit_code(&refused), 2, "{}", stdout(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains(
            "guardrail/helpdesk/answers: spec.api: tenant \"helpdesk\" has no API \"chats\""
        ),
        "{message}"
    );
    let (status, _) = server.http().get("/v1/tenants/helpdesk").await;
    assert_eq!(status, 404, "nothing was applied");

    // Through the API: a name that differs from the path's, one that
    // checks nothing, an unknown kind of data, too many patterns.
    std::fs::write(dir.join("helpdesk.yaml"), &good).unwrap();
    let applied = server.cli(&["apply", "-f", &samples]);
    assert_eq!(exit_code(&applied), 0, "{}", stderr(&applied));
    let http = server.http();
    let put = |name: &str, body: Value| {
        let http = &http;
        let path = format!("/v1/tenants/helpdesk/guardrails/{name}");
        async move { http.send(reqwest::Method::PUT, &path, Some(body)).await }
    };
    let (status, body) = put("x", json!({"name": "y", "pii": {"card": "redact"}})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put("x", json!({"name": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("checks nothing"), "{body}");
    let (status, body) = put("x", json!({"name": "x", "pii": {"passport": "redact"}})).await;
    assert_eq!(status, 400, "{body}");
    let topics: Vec<Value> =
        (0..5).map(|i| json!({"name": format!("t{i}"), "patterns": vec!["a+b"; 13]})).collect();
    let (status, body) = put("x", json!({"name": "x", "topics": topics})).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_guardrail")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("65 patterns"), "{body}");
    let (_, listed) = http.get("/v1/tenants/helpdesk/guardrails").await;
    let names: Vec<&str> = listed["guardrails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["answers", "default"], "nothing half-applied");
}

/// A realm token of `tenant` that may call the control API as its admin.
fn control_token(server: &Server, tenant: &str) -> String {
    token(server, tenant, &["--role", "admin", "--control-api"])
}

/// A Python server of the tests (mcp_server.py, llm_server.py), on a port
/// of its own, appending what it received to a log; stopped when dropped.
struct PyServer {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl PyServer {
    /// `python3 SCRIPT PORT ARGS... LOG TAIL...`
    async fn start(script: &str, dir: &Path, name: &str, args: &[&str], tail: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join(format!("{name}.calls"));
        std::fs::write(&log, "").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e").join(script);
        let mut command = std::process::Command::new("python3");
        command.arg(script).arg(port.to_string()).args(args).arg(&log).args(tail);
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "the server {name} did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, port, log }
    }

    /// An MCP server written with the official SDK, offering `tools`.
    async fn mcp(dir: &Path, name: &str, tools: &str, token: Option<&str>) -> Self {
        Self::start("mcp_server.py", dir, name, &[name, tools], token.as_slice()).await
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// What it received, oldest first.
    fn calls(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs mcp_client.py (the official SDK) against `tenant`'s MCP endpoint
/// and returns what each step printed.
async fn mcp_client(server: &Server, tenant: &str, token: &str, steps: &[&str]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/mcp_client.py");
    let addr = addr_of(&server.gateway);
    let url = format!("http://{addr}/mcp");
    let host = format!("{tenant}.localhost:{}", addr.port());
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args([&url, &host, token])
        .args(steps)
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}\n{}", String::from_utf8_lossy(&output.stderr));
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn agents_see_and_call_only_their_tenants_tools_through_mcp() {
    let server = Server::embedded().await;
    let dir = server.data_dir().parent().unwrap().to_owned();
    let crm_token = "crm-token-7d1e";
    let (crm, kb, ledger) = tokio::join!(
        PyServer::mcp(&dir, "crm", "search,lookup_customer", Some(crm_token)),
        PyServer::mcp(&dir, "kb", "search,translate", None),
        PyServer::mcp(&dir, "ledger", "balance", None),
    );
    let weather = Upstream::start().await;
    let samples = ai_samples(
        &server,
        &[
            ("http://127.0.0.1:9201/mcp", crm.url()),
            ("http://127.0.0.1:9202/mcp", kb.url()),
            ("http://127.0.0.1:9100", weather.url()),
        ],
    );
    let applied = server.cli(&["apply", "-f", &samples]);
    assert_eq!(exit_code(&applied), 0, "{}", stderr(&applied));
    let put = server.cli_with_input(
        &["secrets", "put", "--tenant", "helpdesk", "tools/crm-token"],
        crm_token.as_bytes(),
    );
    assert_eq!(exit_code(&put), 0, "{}", stderr(&put));
    // globex: its own endpoint and its own server, and the shared kb not
    // granted.
    let created = server.cli(&["tenants", "create", "globex", "--plan", "professional", "--wait"]);
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    let mcp_api = ["apis", "create", "--tenant", "globex", "agents", "--prefix", "/mcp"];
    let created = server.cli(&[&mcp_api[..], &["--type", "mcp"]].concat());
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    let ledger_url = ledger.url();
    let added = server.cli(&["tools", "add", "--tenant", "globex", "ledger", "--mcp", &ledger_url]);
    assert_eq!(exit_code(&added), 0, "{}", stderr(&added));
    let listed = server.cli(&["tools", "list", "--tenant", "globex"]);
    assert!(stdout(&listed).contains(&format!("mcp {ledger_url}")), "{}", stdout(&listed));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let endpoint = |tenant: &str| at(&server, tenant, "/mcp");
    let admin = token(&server, "helpdesk", &["--role", "admin"]);
    let analyst = token(&server, "helpdesk", &[]);
    let steps = [
        "list",
        "call:crm__search:hello",
        "call:kb__search:card 4111 1111 1111 1111",
        "call:weather:Lisbon",
        "call:translate:x",
        "call:kb__lookup_customer:x",
        "call:balance:x",
    ];
    let out = mcp_client(&server, "helpdesk", &admin, &steps).await;
    assert_eq!(out[0]["initialized"], "2025-11-25", "{out:?}");
    assert_eq!(out[0]["server"], "bulkhead");
    // Both servers have a `search`: each is offered under its entry's name.
    // kb's translate is not granted; globex's balance is not helpdesk's.
    assert_eq!(out[1]["tools"], json!(["crm__search", "kb__search", "lookup_customer", "weather"]));
    assert_eq!(
        out[2],
        json!({"tool": "crm__search", "text": ["crm:search:hello"], "error": false})
    );
    // The tenant's guardrail reads tools' arguments too.
    assert_eq!(out[3]["text"], json!(["kb:search:card [card]"]), "{out:?}");
    let weather_text = out[4]["text"][0].as_str().unwrap();
    assert!(weather_text.contains("\"target\":\"/weather\""), "{weather_text}");
    for refused in &out[5..] {
        assert_eq!(refused["refused"], -32602, "{refused}");
        assert!(refused["message"].as_str().unwrap().starts_with("Unknown tool"), "{refused}");
    }
    let crm_calls = crm.calls();
    // Told whose call it is; the tenant's own entry, not a plan's.
    let crm_call = json!({"tool": "search", "text": "hello", "authorized": true,
                          "tenant": "helpdesk", "subject": "alice", "plan": null});
    assert_eq!(crm_calls, [crm_call]);
    let kb_calls = kb.calls();
    assert_eq!(kb_calls.len(), 1, "no refused call reached the shared server: {kb_calls:?}");
    assert!(ledger.calls().is_empty());
    let seen = weather.seen().pop().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&seen.body).unwrap(), json!({"text": "Lisbon"}));

    // An analyst does not see the CRM (it needs admin), and cannot call it.
    let out = mcp_client(&server, "helpdesk", &analyst, &["list", "call:crm__search:x"]).await;
    assert_eq!(out[1]["tools"], json!(["kb__search", "weather"]));
    assert_eq!(out[2]["refused"], -32602);
    assert_eq!(crm.calls().len(), 1);

    // globex sees its own tools only; helpdesk's token is not globex's.
    let globex = token(&server, "globex", &[]);
    let out = mcp_client(&server, "globex", &globex, &["list", "call:balance:1"]).await;
    assert_eq!(out[1]["tools"], json!(["balance"]));
    assert_eq!(out[2]["text"], json!(["ledger:balance:1"]));
    let client = client(&server);
    let response =
        client.post(endpoint("globex")).bearer_auth(&admin).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 401);

    // Bad input, as raw JSON-RPC: each gets a clear error, no upstream a call.
    let rpc = |body: String| {
        let client = &client;
        let url = endpoint("helpdesk");
        let admin = &admin;
        async move {
            let response = client
                .post(url)
                .bearer_auth(admin)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = rpc("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\"".to_owned()).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(-32700)), "{body}");
    let (status, body) =
        rpc(json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}).to_string()).await;
    assert_eq!((status, &body["error"]["code"]), (200, &json!(-32601)), "{body}");
    let (_, body) = rpc(json!({"jsonrpc": "1.0", "id": 3, "method": "ping"}).to_string()).await;
    assert_eq!(body["error"]["code"], -32600, "{body}");
    let response = client
        .post(endpoint("helpdesk"))
        .bearer_auth(&admin)
        .header("mcp-protocol-version", "1999-01-01")
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("2025-11-25"), "{body}");
    let call = |id: u32, tool: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {"text": "batch"}}})
    };
    let batch = json!([call(4, "kb__search"), call(5, "translate"), {"jsonrpc": "2.0", "method": "notifications/initialized"}]);
    let (status, body) = rpc(batch.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["result"]["content"][0]["text"], "kb:search:batch", "{body}");
    assert_eq!(body[1]["error"]["code"], -32602, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2, "the notification has no answer: {body}");
    let kb_calls = kb.calls();
    assert_eq!(kb_calls.len(), 2, "only the allowed call of the batch went on: {kb_calls:?}");
    let big = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                     "params": {"name": "kb__search", "arguments": {"text": "x".repeat(70_000)}}});
    let (status, _) = rpc(big.to_string()).await;
    assert_eq!(status, 413);
    let response = client.get(endpoint("helpdesk")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let batch: Vec<Value> = (0..17).map(|i| call(10 + i, "kb__search")).collect();
    let (status, body) = rpc(json!(batch).to_string()).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(-32600)), "{body}");
    // An MCP endpoint uses the tenant's credentials: it cannot be public.
    let public = server.cli(&[&mcp_api[..], &["--type", "mcp", "--public"]].concat());
    assert_eq!(exit_code(&public), 2, "{}", stdout(&public));
    assert!(stderr(&public).contains("cannot be public"), "{}", stderr(&public));
    assert_eq!(kb.calls().len(), 2);

    // Every call is on helpdesk's audit stream: the tool, the caller, the
    // outcome, the arguments' size and hash, never the arguments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls = loop {
        let calls: Vec<Value> = server
            .audit_events(&["helpdesk"])
            .into_iter()
            .filter(|e| e["action"] == "tool.call")
            .collect();
        if calls.len() >= 9 || Instant::now() > deadline {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(calls.len(), 9, "{calls:?}");
    let first = &calls[0];
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["actor_id"], "alice");
    assert_eq!(first["details"]["tool"], "crm__search");
    assert_eq!(first["details"]["server"], "crm");
    assert_eq!(first["details"]["argument_bytes"], 16, "{first}");
    assert_eq!(first["details"]["argument_sha256"].as_str().unwrap().len(), 64);
    assert!(calls.iter().filter(|e| e["outcome"] == "denied").count() >= 5, "{calls:?}");
    let text = json!(calls).to_string();
    assert!(!text.contains("hello") && !text.contains("Lisbon"), "arguments are not recorded");
    // Each use of the CRM's credential was disclosed on the stream first,
    // by the gateway: to list its tools (once, then cached) and to call one.
    let delivered: Vec<Value> = server
        .audit_events(&["helpdesk"])
        .into_iter()
        .filter(|e| e["action"] == "secret.deliver")
        .collect();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert_eq!(delivered[0]["actor_id"], "gateway");
    assert_eq!(delivered[0]["details"]["path"], "tools/crm-token");
    assert!(!server.log().contains(crm_token), "the credential is never logged");
}

#[tokio::test]
async fn model_calls_use_allowed_models_only_and_are_metered_streamed_or_not() {
    let config = "[gateway]\nusage_flush_every = \"1s\"\n\
                  [prices.\"gpt-4o-mini\"]\ninput = 150000\noutput = 600000\n\
                  [prices.\"text-embedding-3-small\"]\ninput = 20000\noutput = 0\n";
    let server = Server::start(crate::kit::Store::Embedded, config, &[]).await;
    let dir = server.data_dir().parent().unwrap().to_owned();
    let model = PyServer::start("llm_server.py", &dir, "llm", &[], &[]).await;
    let created = server.cli(&["tenants", "create", "acme", "--plan", "professional", "--wait"]);
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    let upstream = format!("http://127.0.0.1:{}", model.port);
    let api = ["apis", "create", "--tenant", "acme", "llm", "--prefix", "/v1", "--type", "llm"];
    let models = ["--model", "gpt-4o-mini", "--model", "text-embedding-3-small"];
    let created = server.cli(&[&api[..], &models, &["--upstream", &upstream]].concat());
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    // A model without a price is refused, never free.
    let unpriced =
        ["apis", "create", "--tenant", "acme", "big", "--prefix", "/big", "--type", "llm"];
    let refused =
        server.cli(&[&unpriced[..], &["--model", "gpt-5", "--upstream", &upstream]].concat());
    assert_eq!(exit_code(&refused), 2, "{}", stdout(&refused));
    assert!(stderr(&refused).contains("model \"gpt-5\" has no price"), "{}", stderr(&refused));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = addr_of(&server.gateway);
    let client = reqwest::Client::builder().resolve("acme.localhost", addr).build().unwrap();
    let bearer = token(&server, "acme", &[]);
    let url = |path: &str| format!("http://acme.localhost:{}{path}", addr.port());
    let chat = |model: &str, stream: bool, content: &str| json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]});
    let post = |path: &'static str, body: Value| {
        let request = client.post(url(path)).bearer_auth(&bearer).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };

    // Not streamed: the answer's usage.
    let (status, text) = post("/v1/chat/completions", chat("gpt-4o-mini", false, "hi")).await;
    assert_eq!(status, 200, "{text}");
    // Streamed: passed as it streams, the last chunk's usage asked for
    // (whatever the client said) and read.
    let mut streamed = chat("gpt-4o-mini", true, "hi");
    streamed["stream_options"] = json!({"include_usage": false});
    let (status, text) = post("/v1/chat/completions", streamed).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"content\": \"Hel\"") && text.ends_with("data: [DONE]\n\n"), "{text}");
    let asked = &model.calls()[1]["body"];
    assert_eq!(asked["stream_options"], json!({"include_usage": true}), "{asked}");
    // Cut mid-way: what passed is counted.
    let response = client
        .post(url("/v1/chat/completions"))
        .bearer_auth(&bearer)
        .json(&chat("gpt-4o-mini", true, "cut"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.text().await;
    let (status, text) =
        post("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "x"})).await;
    assert_eq!(status, 200, "{text}");

    // A model not on the list, or an endpoint the API does not meter,
    // reaches no upstream.
    let before = model.calls().len();
    let (status, text) = post("/v1/chat/completions", chat("gpt-5", false, "hi")).await;
    assert_eq!(status, 403, "{text}");
    let refused: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(refused["error"]["code"], "model_not_allowed");
    assert_eq!(refused["error"]["rule"], "model gpt-5");
    for path in ["/v1/responses", "/v1/engines/gpt-5/completions", "/v1/chat/completions/"] {
        let (status, _) = post(path, chat("gpt-5", false, "hi")).await;
        assert_eq!(status, 404, "{path}");
    }
    let deleted = client.delete(url("/v1/models/ft-1")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(deleted.status(), 404, "only model calls and listings pass");
    // Listing models passes, unmetered (this provider has no GET: 501).
    let listed = client.get(url("/v1/models")).bearer_auth(&bearer).send().await.unwrap();
    assert_eq!(listed.status(), 501);
    let (status, _) = post("/v1/chat/completions", json!(["not", "an", "object"])).await;
    assert_eq!(status, 400);
    assert_eq!(model.calls().len(), before, "no refused call reached the provider");

    // Metered per model: the provider's figures where it gave them, the
    // gateway's count where the stream was cut (2 chunks; the prompt's
    // bytes / 4 in).
    let deadline = Instant::now() + Duration::from_secs(10);
    let models = loop {
        let usage = server.cli_json(&["usage", "--tenant", "acme"]);
        // Rows are per minute: a model's calls may straddle two.
        let mut models = json!({});
        for row in usage.as_array().unwrap() {
            for (name, totals) in row["models"].as_object().into_iter().flatten() {
                for (field, value) in totals.as_object().into_iter().flatten() {
                    let sum =
                        models[name][field].as_u64().unwrap_or(0) + value.as_u64().unwrap_or(0);
                    models[name][field] = json!(sum);
                }
            }
        }
        let calls = models["gpt-4o-mini"]["calls"].as_u64().unwrap_or(0);
        let embedded = models["text-embedding-3-small"]["calls"].as_u64().unwrap_or(0);
        if (calls >= 3 && embedded >= 1) || Instant::now() > deadline {
            break models;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mini = &models["gpt-4o-mini"];
    assert_eq!(mini["calls"], 3, "{models}");
    assert_eq!(mini["counted"], 1, "{models}");
    assert_eq!(mini["tokens_out"], 5 + 3 + 2, "{models}");
    let cut_in = mini["tokens_in"].as_u64().unwrap() - 7 - 11;
    assert!((10..40).contains(&cut_in), "the cut call's prompt estimate: {models}");
    assert_eq!(
        models["text-embedding-3-small"],
        json!({"calls": 1, "tokens_in": 4, "tokens_out": 0, "cost_micros": 1})
    );
    // Costs in micro-units at the configured prices, each call rounded up.
    let cut_cost = (cut_in * 150_000 + 2 * 600_000).div_ceil(1_000_000);
    assert_eq!(mini["cost_micros"], 5 + 4 + cut_cost, "{models}");
}

/// An llm API `llm` of `tenant` on the test model server, allowing the
/// model `capped` (priced by the caller's configuration).
fn capped_api(server: &Server, tenant: &str, model: &PyServer) {
    let upstream = format!("http://127.0.0.1:{}", model.port);
    let api = ["apis", "create", "--tenant", tenant, "llm", "--prefix", "/v1", "--type", "llm"];
    let created = server.cli(&[&api[..], &["--model", "capped", "--upstream", &upstream]].concat());
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
}

/// `count` chat calls of `max_tokens` each, at once, alternating between
/// the gateways at `gateways`: each call's status and budget warning.
pub async fn capped_calls(
    gateways: &[std::net::SocketAddr],
    tenant: &str,
    bearer: &str,
    count: usize,
    max_tokens: u64,
) -> Vec<(u16, Option<String>)> {
    let clients: Vec<(reqwest::Client, String)> = gateways
        .iter()
        .map(|addr| {
            let host = format!("{tenant}.localhost");
            let client = reqwest::Client::builder().resolve(&host, *addr).build().unwrap();
            (client, format!("http://{host}:{}/v1/chat/completions", addr.port()))
        })
        .collect();
    let body = json!({"model": "capped", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    let calls = (0..count).map(|n| {
        let (client, url) = &clients[n % clients.len()];
        let request = client.post(url).bearer_auth(bearer).json(&body).send();
        async move {
            let response = request.await.unwrap();
            let warning = response
                .headers()
                .get("bulkhead-budget-warning")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            if status != 200 {
                let refused: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(refused["error"]["code"], "budget_exhausted", "{text}");
            }
            (status, warning)
        }
    });
    futures_util::future::join_all(calls).await
}

/// Waits until the gateway serves `tenant`'s llm API at `prefix` (its
/// model listing, unmetered, answers other than 404): the API, and every
/// change of the tenant made before it, has reached the gateway.
pub async fn served(gateway: std::net::SocketAddr, tenant: &str, bearer: &str, prefix: &str) {
    let host = format!("{tenant}.localhost");
    let client = reqwest::Client::builder().resolve(&host, gateway).build().unwrap();
    let url = format!("http://{host}:{}{prefix}/v1/models", gateway.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get(&url).bearer_auth(bearer).send().await.unwrap().status();
        if status != 404 {
            return;
        }
        assert!(Instant::now() < deadline, "{url} is not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This month, as the ledger names periods.
pub fn this_month() -> String {
    bulkhead_meter::Period::of(time::OffsetDateTime::now_utc()).to_string()
}

/// Polls `bulkhead usage export` until the tenant's model line shows
/// `calls` calls.
pub async fn exported(server_cli: impl Fn(&[&str]) -> Value, tenant: &str, calls: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let export =
            server_cli(&["usage", "export", "--period", &this_month(), "--tenant", tenant]);
        if export["totals"]["model_calls"] == calls || Instant::now() > deadline {
            return export;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_tenants_model_spend_stops_at_its_hard_cap_exactly_warns_past_its_soft_one_and_is_billed()
{
    let hook = Upstream::start().await;
    // One output token costs 1.000000: a call of max_tokens 3 costs 3.
    let config = format!(
        "[gateway]\nusage_flush_every = \"1s\"\n\
         [prices.capped]\ninput = 0\noutput = 1000000000000\n\
         [budget]\nwebhook = \"{}/hook\"\nwebhook_secret = \"hook-secret\"\n",
        hook.url()
    );
    let mut server = Server::start(crate::kit::Store::Embedded, &config, &[]).await;
    let dir = server.data_dir().parent().unwrap().to_owned();
    let model = PyServer::start("llm_server.py", &dir, "llm", &[], &[]).await;
    for (tenant, caps) in [("acme", &["--cost-caps", "50/100"][..]), ("globex", &[])] {
        let create = ["tenants", "create", tenant, "--plan", "professional", "--wait"];
        let created = server.cli(&[&create[..], caps].concat());
        assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
        capped_api(&server, tenant, &model);
    }
    let bad = server.cli(&["tenants", "update", "acme", "--cost-caps", "100/50"]);
    assert_eq!(exit_code(&bad), 2, "{}", stdout(&bad));
    assert!(
        stderr(&bad).contains("soft_usd (100) must not be above hard_usd (50)"),
        "{}",
        stderr(&bad)
    );
    let gateway = [addr_of(&server.gateway)];
    let acme = token(&server, "acme", &[]);
    served(gateway[0], "acme", &acme, "").await;

    // 50 calls at once at the edge of the cap: 33 × 3 fit in 100, and no
    // more reach the model.
    let calls = capped_calls(&gateway, "acme", &acme, 50, 3).await;
    let allowed = calls.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(allowed, 33, "{calls:?}");
    assert_eq!(model.calls().len(), 33);
    // Past the soft cap (50), answers say so.
    let warned: Vec<&String> = calls.iter().filter_map(|(_, w)| w.as_ref()).collect();
    assert_eq!(warned.len(), 33 - 16, "the calls reserving from 51 on: {calls:?}");
    assert!(
        warned
            .iter()
            .all(|w| w.starts_with("soft-cap; period=") && w.contains("hard-micros=100000000")),
        "{warned:?}"
    );
    // Once there is 1 left, a call of 1 token fits and one of 2 does not.
    assert_eq!(capped_calls(&gateway, "acme", &acme, 1, 2).await[0].0, 402);
    assert_eq!(capped_calls(&gateway, "acme", &acme, 1, 1).await[0].0, 200);
    // Another tenant's budget is its own (its plan's caps, untouched).
    let globex = token(&server, "globex", &[]);
    served(gateway[0], "globex", &globex, "").await;
    assert_eq!(capped_calls(&gateway, "globex", &globex, 1, 3).await[0].0, 200);

    // The soft cap is recorded once in the tenant's stream, and the
    // webhook told once, signed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.seen().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = server.audit_events(&["acme"]);
    let soft: Vec<&Value> = events.iter().filter(|e| e["action"] == "budget.soft_cap").collect();
    assert_eq!(soft.len(), 1, "{soft:?}");
    let seen = hook.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let notice: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        (&notice["event"], &notice["tenant"], &notice["period"], &notice["hard_micros"]),
        (&json!("budget.soft_cap"), &json!("acme"), &json!(this_month()), &json!(100_000_000))
    );
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(b"hook-secret").unwrap();
    hmac::Mac::update(&mut mac, &seen[0].body);
    let expected: String =
        hmac::Mac::finalize(mac).into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(seen[0].header("bulkhead-signature"), [format!("sha256={expected}")]);

    // Billed: the export's lines and totals reconcile with what was called.
    let export = exported(|args| server.cli_json(args), "acme", 34).await;
    let lines = export["lines"].as_array().unwrap();
    let model_line = lines.iter().find(|l| l["kind"] == "model").unwrap();
    assert_eq!(
        (
            &model_line["item"],
            &model_line["api"],
            &model_line["requests"],
            &model_line["tokens_out"],
            &model_line["cost_micros"]
        ),
        (&json!("capped"), &json!("llm"), &json!(34), &json!(100), &json!(100_000_000)),
        "{export}"
    );
    assert_eq!(export["totals"]["cost_micros"], 100_000_000);
    let requests = lines.iter().filter(|l| l["kind"] == "requests");
    let on_llm = requests.clone().find(|l| l["api"] == "llm").unwrap();
    // 52 calls, refused ones too, and the listing that found the API served.
    assert_eq!(on_llm["requests"], 53, "{export}");
    let all_requests: u64 = requests.map(|l| l["requests"].as_u64().unwrap()).sum();
    // The usage says who spent it.
    let usage = server.cli_json(&["usage", "--tenant", "acme", "--since", "1h"]);
    let mut subjects = json!({});
    for row in usage.as_array().unwrap() {
        for (subject, totals) in row["subjects"].as_object().into_iter().flatten() {
            let sum = &mut subjects[subject];
            for key in ["requests", "cost_micros"] {
                sum[key] = json!(sum[key].as_u64().unwrap_or(0) + totals[key].as_u64().unwrap());
            }
        }
    }
    let alice = json!({"alice": {"requests": all_requests, "cost_micros": 100_000_000}});
    assert_eq!(subjects, alice);
    // Every tenant's, once globex's one call has reached the ledger too.
    exported(|args| server.cli_json(args), "globex", 1).await;
    let csv = server.cli(&["-o", "csv", "usage", "export", "--period", &this_month()]);
    assert_eq!(exit_code(&csv), 0, "{}", stderr(&csv));
    let csv = stdout(&csv);
    assert!(
        csv.starts_with(
            "day,tenant,tenant_id,api,kind,item,requests,tokens_in,tokens_out,cost_micros,cost\r\n"
        ),
        "{csv}"
    );
    assert!(
        csv.contains(",acme,") && csv.contains(",globex,") && csv.contains(",100.000000\r\n"),
        "{csv}"
    );
    let bad_period = server.cli(&["usage", "export", "--period", "2026-13"]);
    assert_ne!(exit_code(&bad_period), 0);
    assert!(stderr(&bad_period).contains("give it as YYYY-MM"), "{}", stderr(&bad_period));

    // The spend is durable: after a restart the counter starts from the
    // ledger, and the soft cap's notice is not given again.
    server.stop();
    server.restart().await;
    let gateway = [addr_of(&server.gateway)];
    let acme = token(&server, "acme", &[]);
    served(gateway[0], "acme", &acme, "").await;
    assert_eq!(capped_calls(&gateway, "acme", &acme, 1, 1).await[0].0, 402);
    let raised = server.cli(&["tenants", "update", "acme", "--cost-caps", "50/101"]);
    assert_eq!(exit_code(&raised), 0, "{}", stderr(&raised));
    // Once the raise reaches the gateway, one call of 1 fits, and no more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while capped_calls(&gateway, "acme", &acme, 1, 1).await[0].0 != 200 {
        assert!(Instant::now() < deadline, "the raised cap did not reach the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(capped_calls(&gateway, "acme", &acme, 1, 1).await[0].0, 402);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = server.audit_events(&["acme"]);
    assert_eq!(events.iter().filter(|e| e["action"] == "budget.soft_cap").count(), 1);
    assert_eq!(hook.seen().len(), 1);

    // A call the model received but did not answer in time is charged all
    // it reserved: 101 + 3, then room for 6 more of 110.
    let upstream = format!("http://127.0.0.1:{}", model.port);
    let slow = ["apis", "create", "--tenant", "acme", "slow", "--prefix", "/slow", "--type", "llm"];
    let flags = ["--model", "capped", "--upstream", &upstream, "--response-timeout", "1s"];
    let raised = server.cli(&["tenants", "update", "acme", "--cost-caps", "50/110"]);
    assert_eq!(exit_code(&raised), 0, "{}", stderr(&raised));
    let created = server.cli(&[&slow[..], &flags].concat());
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    served(gateway[0], "acme", &acme, "/slow").await;
    let client = reqwest::Client::builder().resolve("acme.localhost", gateway[0]).build().unwrap();
    let url = format!("http://acme.localhost:{}/slow/v1/chat/completions", gateway[0].port());
    let body = json!({"model": "capped", "max_tokens": 3, "messages": [{"role": "user", "content": "slow"}]});
    let timed_out = client.post(&url).bearer_auth(&acme).json(&body).send().await.unwrap();
    assert_eq!(timed_out.status(), 504);
    assert_eq!(capped_calls(&gateway, "acme", &acme, 1, 7).await[0].0, 402);
    assert_eq!(capped_calls(&gateway, "acme", &acme, 1, 6).await[0].0, 200);
    let export = exported(|args| server.cli_json(args), "acme", 37).await;
    let charged = export["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["api"] == "slow" && l["kind"] == "model")
        .unwrap_or_else(|| panic!("{export}"));
    assert_eq!((&charged["requests"], &charged["cost_micros"]), (&json!(1), &json!(3_000_000)));

    // A tenant's own credential exports its own tenant, not another's nor
    // every tenant's.
    let own = control_token(&server, "acme");
    let month = this_month();
    let mine =
        server.cli_with_token(&own, &["usage", "export", "--period", &month, "--tenant", "acme"]);
    assert_eq!(exit_code(&mine), 0, "{}", stderr(&mine));
    for other in [&["--tenant", "globex"][..], &[]] {
        let args = [&["usage", "export", "--period", &month][..], other].concat();
        let refused = server.cli_with_token(&own, &args);
        assert_ne!(exit_code(&refused), 0, "{args:?}: {}", stdout(&refused));
        assert!(!stdout(&refused).contains("globex"), "{}", stdout(&refused));
    }
}

#[tokio::test]
async fn two_gateway_processes_share_one_budget_through_redis_reseeded_from_the_ledger() {
    let prices = "[prices.capped]\ninput = 0\noutput = 1000000000000\n";
    let store = crate::kit::Store::Postgres(bulkhead_testkit::TestDatabase::create().await);
    let server = Server::start(store, prices, &[]).await;
    let dir = server.data_dir().parent().unwrap().to_owned();
    let model = PyServer::start("llm_server.py", &dir, "llm", &[], &[]).await;
    let created = server.cli(&["tenants", "create", "acme", "--plan", "professional", "--wait"]);
    assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    capped_api(&server, "acme", &model);
    let capped = server.cli(&["tenants", "update", "acme", "--cost-caps", "50/100"]);
    assert_eq!(exit_code(&capped), 0, "{}", stderr(&capped));
    let prefix = bulkhead_testkit::unique_name("bh-test-", 12) + ":";
    let config = format!(
        "[gateway]\nredis = \"redis://{}\"\nredis_prefix = \"{prefix}\"\nredis_timeout_ms = 500\n\
         usage_flush_every = \"1s\"\n{prices}",
        crate::gateway::redis_addr()
    );
    let store = &server.postgres_db().url;
    let (a, b) = (
        crate::kit::GatewayProcess::start(store, &config).await,
        crate::kit::GatewayProcess::start(store, &config).await,
    );
    let gateways = [addr_of(&a.url), addr_of(&b.url)];
    let acme = token(&server, "acme", &[]);

    // 50 calls at once, half through each process: one budget of 100.
    let calls = capped_calls(&gateways, "acme", &acme, 50, 3).await;
    let allowed = calls.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(allowed, 33, "{calls:?}\n{}", a.log());
    assert_eq!(model.calls().len(), 33);

    // Redis loses its counters: the next call is seeded from the ledger
    // (99 spent), not from 0.
    let export = exported(|args| server.cli_json(args), "acme", 33).await;
    assert_eq!(export["totals"]["cost_micros"], 99_000_000, "{export}");
    crate::gateway::delete_redis_keys(&prefix);
    assert_eq!(capped_calls(&gateways[1..], "acme", &acme, 1, 2).await[0].0, 402);
    assert_eq!(capped_calls(&gateways[..1], "acme", &acme, 1, 1).await[0].0, 200);
    assert_eq!(
        capped_calls(&gateways, "acme", &acme, 2, 1)
            .await
            .iter()
            .filter(|(s, _)| *s == 200)
            .count(),
        0
    );
    // The soft cap's notice, queued by the gateways, is recorded once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let soft = loop {
        let events = server.audit_events(&["acme"]);
        let soft = events.iter().filter(|e| e["action"] == "budget.soft_cap").count();
        if soft > 0 || Instant::now() > deadline {
            break soft;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(soft, 1);
    crate::gateway::delete_redis_keys(&prefix);
}

#[tokio::test]
async fn a_plan_grants_its_tools_to_its_tenants_until_they_leave_it() {
    let files = tempfile::tempdir().unwrap();
    let search = PyServer::mcp(files.path(), "search", "web_search", None).await;
    let config = format!(
        "[[plans.professional.tools]]\nname = \"search\"\nupstream = {{ mcp = \"{}\" }}\n",
        search.url()
    );
    let server = Server::start(crate::kit::Store::Embedded, &config, &[]).await;
    for (tenant, plan) in [("acme", "professional"), ("globex", "starter")] {
        let created = server.cli(&["tenants", "create", tenant, "--plan", plan, "--wait"]);
        assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
        let api = ["apis", "create", "--tenant", tenant, "agents", "--prefix", "/mcp"];
        let created = server.cli(&[&api[..], &["--type", "mcp"]].concat());
        assert_eq!(exit_code(&created), 0, "{}", stderr(&created));
    }
    let plans = server.cli_json(&["plans", "list"]);
    let professional = plans.as_array().unwrap().iter().find(|p| p["name"] == "professional");
    assert_eq!(professional.unwrap()["tools"][0]["name"], "search", "{plans}");
    let tools_of = |tenant: &'static str| {
        let bearer = token(&server, tenant, &[]);
        let server = &server;
        async move { mcp_client(server, tenant, &bearer, &["list", "call:web_search:x"]).await }
    };
    // Each tenant's endpoint, once the gateway serves it.
    let client = client(&server);
    for tenant in ["acme", "globex"] {
        let bearer = token(&server, tenant, &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client
            .post(at(&server, tenant, "/mcp"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .status()
            == 404
        {
            assert!(Instant::now() < deadline, "{tenant}'s endpoint is not served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let acme = tools_of("acme").await;
    assert_eq!(acme[1]["tools"], json!(["web_search"]));
    assert_eq!(acme[2]["text"], json!(["search:web_search:x"]), "{acme:?}");
    let globex = tools_of("globex").await;
    assert_eq!(globex[1]["tools"], json!([]));
    assert_eq!(globex[2]["refused"], -32602, "not its plan's: {globex:?}");
    // The shared server is told whose call it is, and through which plan.
    let calls = search.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((&calls[0]["tenant"], &calls[0]["plan"]), (&json!("acme"), &json!("professional")));

    // A plan change is a configuration change: the tools follow the plan.
    for (tenant, plan) in [("acme", "starter"), ("globex", "professional")] {
        let moved = server.cli(&["tenants", "update", tenant, "--plan", plan]);
        assert_eq!(exit_code(&moved), 0, "{}", stderr(&moved));
    }
    for (tenant, expected) in [("acme", json!([])), ("globex", json!(["web_search"]))] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tools_of(tenant).await[1]["tools"] != expected {
            assert!(Instant::now() < deadline, "{tenant}'s tools did not follow its plan");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
