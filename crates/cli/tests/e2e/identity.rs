//! Realms through the real server: OIDC documents, tokens verified by an
//! independent library (PyJWT), key rotation, tenant-scoped tokens and API
//! keys on the control API.

use serde_json::Value;

use crate::kit::{Server, exit_code, stderr, stdout};

const PYJWT_VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/verify_with_pyjwt.py");

fn tenant(server: &Server, name: &str) {
    server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
}

/// A token of `tenant`'s realm that may call the control API.
fn token(server: &Server, tenant: &str, roles: &[&str]) -> String {
    let mut args = vec!["auth", "token", "--tenant", tenant, "--subject", "alice", "--control-api"];
    for role in roles {
        args.extend(["--role", role]);
    }
    let out = server.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// PyJWT's verdict on `token` for the realm `issuer`.
fn pyjwt(issuer: &str, token: &str) -> Result<Value, String> {
    pyjwt_with_keys_of(issuer, token, issuer)
}

/// PyJWT's verdict on `token` for the realm `issuer`, with the keys that
/// `keys_issuer` publishes.
fn pyjwt_with_keys_of(issuer: &str, token: &str, keys_issuer: &str) -> Result<Value, String> {
    let out = std::process::Command::new("python3")
        .args([PYJWT_VERIFIER, issuer, token, keys_issuer])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(stderr(&out))
    }
}

#[tokio::test]
async fn pyjwt_verifies_realm_tokens_through_the_published_jwks() {
    let server = Server::embedded().await;
    tenant(&server, "acme");
    tenant(&server, "globex");
    let issuer = format!("{}/realms/acme", server.api);

    let discovery =
        reqwest::get(format!("{issuer}/.well-known/openid-configuration")).await.unwrap();
    assert_eq!(discovery.headers()["cache-control"], "public, max-age=300");
    let discovery: Value = discovery.json().await.unwrap();
    assert_eq!(discovery["issuer"], issuer);
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/jwks.json"));
    let jwks: Value =
        reqwest::get(format!("{issuer}/jwks.json")).await.unwrap().json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str(), key["alg"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "no private part is ever published");

    // EdDSA, the default.
    let eddsa = token(&server, "acme", &["admin"]);
    let claims = pyjwt(&issuer, &eddsa).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    assert_eq!(claims["plan"], "enterprise");
    assert_eq!(claims["region"], "local");
    let acme = server.cli_json(&["tenants", "get", "acme"]);
    assert_eq!(claims["tenant_id"], acme["id"]);

    // A realm never signs with RSA: refused, nothing rotated.
    let rsa = server.cli(&["auth", "rotate-key", "--tenant", "acme", "--algorithm", "RS256"]);
    assert_eq!(exit_code(&rsa), 2, "{}", stderr(&rsa));
    assert!(stderr(&rsa).contains("a realm signs with EdDSA or ES256"), "{}", stderr(&rsa));
    assert_eq!(server.cli_json(&["auth", "keys", "--tenant", "acme"]).as_array().unwrap().len(), 1);

    // ES256 after a rotation; the EdDSA token stays valid meanwhile.
    let rotated =
        server.cli_json(&["auth", "rotate-key", "--tenant", "acme", "--algorithm", "ES256"]);
    assert_eq!(rotated["retired"], 1);
    let issued = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "alice",
        "--role",
        "viewer",
    ]);
    let es256 = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(issued["kid"], rotated["kid"]);
    let jwks: Value =
        reqwest::get(format!("{issuer}/jwks.json")).await.unwrap().json().await.unwrap();
    let new_key = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == issued["kid"]);
    assert_eq!(new_key.unwrap()["alg"], "ES256");
    assert_eq!(pyjwt(&issuer, &es256).unwrap()["roles"], serde_json::json!(["viewer"]));
    assert!(pyjwt(&issuer, &eddsa).is_ok(), "the old key is still published");
    let keys = server.cli_json(&["auth", "keys", "--tenant", "acme"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(keys[0]["remove_after"].is_string(), "{keys}");

    // Another tenant's token against this realm: refused by PyJWT too,
    // first because this realm does not publish its key, and even with
    // that key because it names another issuer.
    let foreign = token(&server, "globex", &["owner"]);
    let refused = pyjwt(&issuer, &foreign).unwrap_err();
    assert!(refused.starts_with("PyJWKClientError: Unable to find a signing key"), "{refused}");
    let globex = format!("{}/realms/globex", server.api);
    assert!(pyjwt(&globex, &foreign).is_ok());
    let refused = pyjwt_with_keys_of(&issuer, &foreign, &globex).unwrap_err();
    assert!(refused.starts_with("InvalidIssuerError"), "{refused}");

    // No realm for a tenant that does not exist; the same answer for one
    // that is not live.
    let missing = reqwest::get(format!("{}/realms/nobody/jwks.json", server.api)).await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn tenant_credentials_reach_their_own_tenant_and_no_further() {
    let server = Server::embedded().await;
    tenant(&server, "acme");
    tenant(&server, "globex");
    let http = server.http();
    let admin = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "alice",
        "--role",
        "admin",
        "--control-api",
    ]);
    let admin_exp = admin["expires_at"].as_i64().unwrap();
    let admin = admin["token"].as_str().unwrap().to_owned();
    let viewer = token(&server, "acme", &["viewer"]);
    let as_admin = http.with_token(&admin);

    // Its own tenant, as its role allows, without what the server keeps
    // for operators (its directories, database objects, errors).
    let (status, view) = as_admin.get("/v1/tenants/acme").await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "active");
    assert!(view["steps"].as_array().unwrap().iter().all(|s| s["output"].is_null()), "{view}");
    let data_dir = server.data_dir().display().to_string();
    assert!(!view.to_string().contains(&data_dir), "{view}");
    let (_, operator_view) = server.http().get("/v1/tenants/acme").await;
    assert!(operator_view.to_string().contains(&data_dir), "operators see it: {operator_view}");
    let put = as_admin
        .client
        .put(format!("{}/v1/tenants/acme/secrets/app/key", server.api))
        .bearer_auth(&admin)
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let as_viewer = server.http().with_token(&viewer);
    assert_eq!(as_viewer.get("/v1/tenants/acme/secrets").await.0, 200);
    let (status, body) = as_viewer.get("/v1/tenants/acme/secrets/app/key").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = as_admin.post("/v1/tenants/acme/suspend", Value::Null).await;
    assert_eq!(status, 403, "lifecycle is the operator's");

    // Anything else: a 401 that tells a genuine credential's holder what
    // is wrong with it, and nothing about another tenant.
    let (garbage_status, garbage) =
        server.http().with_token("garbage").get("/v1/tenants/acme").await;
    assert_eq!(garbage_status, 401);
    assert_eq!(garbage["error"]["message"], "authentication required");
    // A token minted for the tenant's application, not for the control API.
    let out =
        server.cli(&["auth", "token", "--tenant", "acme", "--subject", "app", "--role", "owner"]);
    let app_token = stdout(&out).trim().to_owned();
    let (status, body) = server.http().with_token(&app_token).get("/v1/tenants/acme").await;
    assert_eq!(status, 401);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not issued for this API"), "{message}");
    assert!(message.contains("--control-api"), "{message}");
    let as_app = server.cli_with_token(&app_token, &["secrets", "list", "--tenant", "acme"]);
    assert_eq!(exit_code(&as_app), 6);
    assert!(stderr(&as_app).contains("--control-api"), "{}", stderr(&as_app));
    assert!(stderr(&as_app).contains("(the credential from --token"), "{}", stderr(&as_app));
    for path in [
        "/v1/tenants/globex",
        "/v1/tenants/globex/secrets",
        "/v1/tenants/nosuchtenant/secrets",
        "/v1/tenants",
        "/v1/plans",
        "/v1/vault/lockouts",
    ] {
        let (status, body) = as_admin.get(path).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(status, 401, "{path}");
        assert!(message.contains("this token is tenant \"acme\"'s"), "{path}: {message}");
        assert!(!message.contains("globex") && !message.contains("nosuch"), "{path}: {message}");
    }
    // On another tenant's path, the same answer whether it exists or not.
    let (_, globex) = as_admin.get("/v1/tenants/globex/secrets").await;
    let (_, nobody) = as_admin.get("/v1/tenants/nosuchtenant/secrets").await;
    assert_eq!(globex, nobody);
    let (_, operator_only) = as_admin.get("/v1/plans").await;
    assert!(
        operator_only["error"]["message"].as_str().unwrap().contains("needs an operator token"),
        "{operator_only}"
    );

    // API keys: shown once, stored hashed, bound to their tenant.
    let created = server.cli_json(&[
        "apikeys", "create", "--tenant", "acme", "--name", "billing", "--role", "viewer",
    ]);
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("bh_acme_"), "{key}");
    assert_eq!(created["api_key"]["prefix"].as_str().unwrap(), &key[..12]);
    let with_key = server.http().with_token(&key);
    assert_eq!(with_key.get("/v1/tenants/acme/secrets").await.0, 200);
    let (status, body) = with_key.get("/v1/tenants/globex/secrets").await;
    assert_eq!(status, 401);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("this API key is tenant \"acme\"'s"), "{message}");
    // A key whose prefix names another tenant proves nothing.
    let renamed = key.replacen("bh_acme_", "bh_globex_", 1);
    assert_eq!(server.http().with_token(&renamed).get("/v1/tenants/globex/secrets").await.0, 401);
    let listed = server.cli_json(&["apikeys", "list", "--tenant", "acme"]);
    assert!(listed[0]["last_used_at"].is_string(), "{listed}");
    assert!(!listed.to_string().contains(&key));
    let on_disk = std::fs::read(server.data_dir().join("bulkhead.db")).unwrap();
    let wal = std::fs::read(server.data_dir().join("bulkhead.db-wal")).unwrap_or_default();
    for bytes in [on_disk, wal] {
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "the key is stored hashed");
    }
    let id = created["api_key"]["id"].as_str().unwrap();
    assert!(server.cli(&["apikeys", "revoke", "--tenant", "acme", id]).status.success());
    assert_eq!(with_key.get("/v1/tenants/acme/secrets").await.0, 401);
    let again = server.cli(&["apikeys", "revoke", "--tenant", "acme", id]);
    assert_eq!(exit_code(&again), 4);

    // A tenant admin cannot mint a token above its own role.
    let (status, _) = as_admin
        .post(
            "/v1/tenants/acme/tokens",
            serde_json::json!({ "subject": "eve", "roles": ["owner"] }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, minted) = as_admin
        .post(
            "/v1/tenants/acme/tokens",
            serde_json::json!({ "subject": "svc", "roles": ["analyst"], "ttl": "24h", "control_api": true }),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    // ... nor one that outlives its own: a token cannot renew itself.
    assert!(minted["expires_at"].as_i64().unwrap() <= admin_exp, "{minted}");

    // While the tenant is suspended its credentials act on nothing.
    let minted = minted["token"].as_str().unwrap().to_owned();
    let as_minted = server.http().with_token(&minted);
    assert_eq!(as_minted.get("/v1/tenants/acme/secrets").await.0, 200);
    server.cli_json(&["tenants", "suspend", "acme"]);
    let (status, body) = as_minted.get("/v1/tenants/acme/secrets").await;
    assert_eq!(status, 401);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"acme\" is suspended"), "its holder is told: {message}");
    // To anyone else, a suspended tenant looks like any other.
    assert_eq!(
        server.http().with_token("garbage").get("/v1/tenants/acme/secrets").await,
        (401, garbage.clone())
    );
    server.cli_json(&["tenants", "resume", "acme"]);
    assert_eq!(as_minted.get("/v1/tenants/acme/secrets").await.0, 200);

    // Revoking the realm's tokens refuses every one issued so far, at once,
    // even those already cached as verified; new ones work.
    let revoke = server.cli(&["auth", "revoke-tokens", "--tenant", "acme"]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    let (status, body) = as_minted.get("/v1/tenants/acme/secrets").await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("was revoked"), "{body}");
    assert_eq!(as_viewer.get("/v1/tenants/acme/secrets").await.0, 401);
    let fresh = token(&server, "acme", &["viewer"]);
    assert_eq!(server.http().with_token(&fresh).get("/v1/tenants/acme/secrets").await.0, 200);

    // Every refusal is on the tenant's record, with its reason.
    let events = server.audit_events(&["acme"]);
    let refused: Vec<_> = events.iter().filter(|e| e["action"] == "auth.refused").collect();
    assert!(
        refused
            .iter()
            .any(|e| e["details"]["reason"].as_str().unwrap_or_default().contains("revoked"))
    );
    for reason in ["wrong audience", "suspended", "issued before the realm revoked"] {
        assert!(
            refused
                .iter()
                .any(|e| e["details"]["reason"].as_str().unwrap_or_default().contains(reason)),
            "{reason}"
        );
    }
    assert!(refused.iter().all(|e| !e["details"].to_string().contains(&key)));
}

const EXTERNAL_IDP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/external_idp.py");

/// An identity provider of the tenant's own: keys and tokens from PyJWT,
/// its JWKS served over HTTP by Python, every request to it logged.
pub(crate) struct ExternalIdp {
    dir: tempfile::TempDir,
    server: std::process::Child,
    pub(crate) jwks_url: String,
}

impl ExternalIdp {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("access.log")).unwrap();
        // The server binds a port of its own choosing and says which.
        let mut server = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut banner = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut banner,
        )
        .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port: u16 = banner
            .split_once(" port ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {banner:?}"));
        let idp = Self { dir, server, jwks_url: format!("http://127.0.0.1:{port}/jwks.json") };
        idp.keygen("k1");
        for _ in 0..100 {
            if reqwest::get(&idp.jwks_url).await.is_ok_and(|r| r.status() == 200) {
                return idp;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the stand-in identity provider did not start");
    }

    fn run(&self, args: &[&str]) -> String {
        let out =
            std::process::Command::new("python3").arg(EXTERNAL_IDP).args(args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    }

    fn keygen(&self, kid: &str) {
        self.keygen_of(kid, "ES256");
    }

    /// `ES256`, `RS256` or `RS256-<bits>`.
    fn keygen_of(&self, kid: &str, kind: &str) {
        self.run(&["keygen", self.dir.path().to_str().unwrap(), kid, kind]);
    }

    pub(crate) fn sign(&self, kid: &str, claims: &Value) -> String {
        self.run(&["sign", self.dir.path().to_str().unwrap(), kid, &claims.to_string()])
    }

    fn forge(&self, kid: &str, claims: &Value) -> Vec<String> {
        let out = self.run(&["forge", self.dir.path().to_str().unwrap(), kid, &claims.to_string()]);
        out.lines().map(str::to_owned).collect()
    }

    fn jwks_fetches(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.matches("GET /jwks.json").count()
    }
}

impl Drop for ExternalIdp {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[tokio::test]
async fn a_trusted_external_provider_speaks_for_its_tenant_only() {
    // The stand-in provider is plain http on loopback, which only an
    // operator's allow-list permits.
    let server =
        Server::start(crate::kit::Store::Embedded, "", &["--insecure-jwks-host", "127.0.0.1"])
            .await;
    tenant(&server, "acme");
    tenant(&server, "globex");
    let idp = ExternalIdp::start().await;
    let issuer = "https://idp.acme.example/realms/staff";

    let trust = |issuer: &str, jwks_url: &str| {
        server.cli(&[
            "auth",
            "trust",
            "--tenant",
            "acme",
            "--issuer",
            issuer,
            "--jwks-url",
            jwks_url,
            "--audience",
            "acme-app",
            "--subject-claim",
            "email",
            "--roles-claim",
            "realm_access.roles",
            "--role-map",
            "Admin=admin",
            "--role-map",
            "staff=viewer",
        ])
    };
    // Refused, each with what to do, and nothing stored: a URL that serves
    // no JWKS; plain http or a private address of a host the operator did
    // not allow; another realm of this server posing as a provider.
    let own_realm = format!("{}/realms/globex", server.api);
    for (issuer, url, expected) in [
        (issuer, "http://127.0.0.1:1/jwks.json", "could not be reached"),
        (issuer, &idp.jwks_url.replace("127.0.0.1", "localhost"), "insecure_jwks_hosts"),
        (issuer, "https://10.0.0.7/jwks.json", "private or reserved address"),
        (issuer, "https://169.254.169.254/latest/meta-data", "private or reserved address"),
        (own_realm.as_str(), &idp.jwks_url, "is a Bulkhead realm"),
    ] {
        let refused = trust(issuer, url);
        assert_eq!(exit_code(&refused), 2, "{url}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(expected), "{url}: {}", stderr(&refused));
    }
    let missing_map = server.cli(&[
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
    ]);
    assert_eq!(exit_code(&missing_map), 2, "a role map is required");
    assert_eq!(server.http().get("/v1/tenants/acme/realm/trust").await.0, 404);

    let trusted = trust(issuer, &idp.jwks_url);
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    let (_, trusted) = server.http().get("/v1/tenants/acme/realm/trust").await;
    assert_eq!(trusted["roles_claim"], "realm_access.roles");
    assert_eq!(trusted["role_map"], serde_json::json!({ "Admin": "admin", "staff": "viewer" }));

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": issuer, "aud": "acme-app", "email": "bob@acme.example", "iat": now,
        "exp": now + 300, "realm_access": { "roles": ["Admin", "offline_access"] },
    });
    let token = idp.sign("k1", &claims);
    let as_bob = server.http().with_token(&token);
    assert_eq!(as_bob.get("/v1/tenants/acme/secrets").await.0, 200);
    let (_, garbage) = server.http().with_token("garbage").get("/v1/tenants/acme").await;
    // A token the provider issued for another application.
    let mut other_app = claims.clone();
    other_app["aud"] = serde_json::json!("billing-app");
    let other_app = server.http().with_token(&idp.sign("k1", &other_app));
    let (status, body) = other_app.get("/v1/tenants/acme/secrets").await;
    assert_eq!(status, 401);
    assert!(body.to_string().contains("its aud must name acme-app"), "{body}");
    // The provider's token never acts for another tenant, whatever it says.
    assert_eq!(as_bob.get("/v1/tenants/globex/secrets").await, (401, garbage.clone()));
    let mut other_iss = claims.clone();
    other_iss["iss"] = serde_json::json!("https://idp.other.example");
    let other = server.http().with_token(&idp.sign("k1", &other_iss));
    assert_eq!(other.get("/v1/tenants/acme/secrets").await.0, 401);
    // Every bad case, crafted with PyJWT and cryptography: a 401 that
    // tells the holder of a genuinely signed token what is wrong with it,
    // and the same as for garbage to whoever forged one.
    let mut expired = claims.clone();
    expired["exp"] = serde_json::json!(now - 3_600);
    let mut early = claims.clone();
    early["nbf"] = serde_json::json!(now + 3_600);
    for (token, told) in [(&expired, "has expired"), (&early, "not valid yet")] {
        let (status, body) =
            server.http().with_token(&idp.sign("k1", token)).get("/v1/tenants/acme/secrets").await;
        assert_eq!(status, 401);
        assert!(body["error"]["message"].as_str().unwrap().contains(told), "{body}");
    }
    let bad = idp.forge("k1", &claims);
    assert_eq!(bad.len(), 6);
    for (i, forged) in bad.iter().enumerate() {
        let response = server.http().with_token(forged).get("/v1/tenants/acme/secrets").await;
        assert_eq!(response, (401, garbage.clone()), "forged case {i}");
    }
    // Each for its own reason, which only the tenant's record tells.
    let events = server.audit_events(&["acme"]);
    let reasons: Vec<String> = events
        .iter()
        .filter(|e| e["action"] == "auth.refused")
        .map(|e| e["details"]["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    for expected in [
        "expired",
        "not yet valid",
        "algorithm \"none\"",
        "algorithm \"HS256\"",
        "bad signature",
        "token larger than the cap",
        "a JSON member appears twice",
        "wrong audience",
    ] {
        assert!(reasons.iter().any(|r| r.contains(expected)), "{expected} not in {reasons:?}");
    }

    // The provider rotates: a token with an unknown kid makes Bulkhead fetch
    // the JWKS again, but a burst of them fetches it at most once per
    // interval.
    idp.keygen("k2");
    let rotated = server.http().with_token(&idp.sign("k2", &claims));
    let before = idp.jwks_fetches();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        rotated.get("/v1/tenants/acme/secrets").await;
    }
    // One fetch per started interval of 5 s (a slow machine may need two).
    let intervals = started.elapsed().as_secs() / 5 + 1;
    let fetches = idp.jwks_fetches() - before;
    assert!(fetches as u64 <= intervals, "{fetches} fetches in {intervals} intervals");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while rotated.get("/v1/tenants/acme/secrets").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the rotated key was never fetched");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // Then to RSA, as Auth0, Entra ID, Okta and Keycloak sign by default.
    // A 1024-bit RSA key in the same JWKS is never used: its tokens are
    // refused while the 2048-bit key's are accepted.
    idp.keygen_of("k3", "RS256");
    idp.keygen_of("weak", "RS256-1024");
    let rsa = server.http().with_token(&idp.sign("k3", &claims));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while rsa.get("/v1/tenants/acme/secrets").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the RSA key was never fetched");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let weak = server.http().with_token(&idp.sign("weak", &claims));
    assert_eq!(weak.get("/v1/tenants/acme/secrets").await, (401, garbage.clone()));
    assert_eq!(rsa.get("/v1/tenants/globex/secrets").await, (401, garbage.clone()));

    assert!(server.cli(&["auth", "untrust", "--tenant", "acme"]).status.success());
    assert_eq!(as_bob.get("/v1/tenants/acme/secrets").await.0, 401);
    assert_eq!(rsa.get("/v1/tenants/acme/secrets").await.0, 401);
}

#[tokio::test]
async fn realm_keys_rotate_by_policy_and_old_tokens_keep_working() {
    let config = "[identity]\nrotate_keys_every = \"1s\"\n";
    let server = Server::start(crate::kit::Store::Embedded, config, &[]).await;
    tenant(&server, "acme");
    let before = token(&server, "acme", &["viewer"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let keys = server.cli_json(&["auth", "keys", "--tenant", "acme"]);
        if keys.as_array().unwrap().len() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no scheduled rotation: {keys}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let as_before = server.http().with_token(&before);
    assert_eq!(as_before.get("/v1/tenants/acme/secrets").await.0, 200);
    let issuer = format!("{}/realms/acme", server.api);
    assert!(pyjwt(&issuer, &before).is_ok());
    let after = token(&server, "acme", &["viewer"]);
    assert!(pyjwt(&issuer, &after).is_ok());
}

#[tokio::test]
async fn a_stolen_token_cannot_renew_itself() {
    let server = Server::embedded().await;
    tenant(&server, "acme");
    // A short token, as a thief might hold (long enough that none of the
    // keys below expires before the revocation counts them on a busy
    // machine).
    let minted = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "mallory",
        "--role",
        "admin",
        "--ttl",
        "60s",
        "--control-api",
    ]);
    let token_exp = minted["expires_at"].as_i64().unwrap();
    let thief = server.http().with_token(minted["token"].as_str().unwrap());
    let expires = |key: &Value| {
        let at = key["api_key"]["expires_at"].as_str().unwrap();
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    };

    // A key asked to last forever, or a month, lasts as long as the token.
    let (status, forever) = thief
        .post("/v1/tenants/acme/api-keys", serde_json::json!({ "name": "a", "roles": ["admin"] }))
        .await;
    assert_eq!(status, 201, "{forever}");
    assert!(expires(&forever) <= token_exp, "{forever}");
    assert_eq!(forever["api_key"]["from_token"], true);
    let body = serde_json::json!({ "name": "b", "roles": ["admin"], "ttl": "30d" });
    let (_, month) = thief.post("/v1/tenants/acme/api-keys", body).await;
    assert!(expires(&month) <= token_exp, "{month}");
    // Nor does a key made by such a key, nor a token it mints.
    let by_key = server.http().with_token(forever["key"].as_str().unwrap());
    let (status, grandchild) = by_key
        .post("/v1/tenants/acme/api-keys", serde_json::json!({ "name": "c", "roles": ["admin"] }))
        .await;
    assert_eq!(status, 201, "{grandchild}");
    assert!(expires(&grandchild) <= token_exp);
    assert_eq!(grandchild["api_key"]["from_token"], true);
    let body = serde_json::json!({ "subject": "m", "roles": ["admin"], "ttl": "24h", "control_api": true });
    let (status, renewed) = by_key.post("/v1/tenants/acme/tokens", body).await;
    assert_eq!(status, 201, "{renewed}");
    assert!(renewed["expires_at"].as_i64().unwrap() <= token_exp, "{renewed}");

    // An operator's key is not bound to any token.
    let kept = server
        .cli_json(&["apikeys", "create", "--tenant", "acme", "--name", "ci", "--role", "viewer"]);
    assert!(kept["api_key"]["expires_at"].is_null(), "{kept}");
    assert_eq!(kept["api_key"]["from_token"], false);

    // Revoking the realm's tokens revokes the keys made with them, and says so.
    let (status, _) = by_key.get("/v1/tenants/acme").await;
    assert_eq!(status, 200);
    let revoked = server.cli(&["auth", "revoke-tokens", "--tenant", "acme"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(
        stderr(&revoked).contains("3 API key(s) made with a token revoked too"),
        "{}",
        stderr(&revoked)
    );
    for key in [&forever, &month, &grandchild] {
        let as_key = server.http().with_token(key["key"].as_str().unwrap());
        assert_eq!(as_key.get("/v1/tenants/acme").await.0, 401, "{key}");
    }
    let as_ci = server.http().with_token(kept["key"].as_str().unwrap());
    assert_eq!(as_ci.get("/v1/tenants/acme").await.0, 200, "the operator's key stays");

    // And a key made with a token stops with it even when nobody revokes.
    let short = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "x",
        "--role",
        "admin",
        "--ttl",
        "3s",
        "--control-api",
    ]);
    let as_short = server.http().with_token(short["token"].as_str().unwrap());
    let (status, key) = as_short
        .post("/v1/tenants/acme/api-keys", serde_json::json!({ "name": "d", "roles": ["viewer"] }))
        .await;
    assert_eq!(status, 201, "{key}");
    let as_key = server.http().with_token(key["key"].as_str().unwrap());
    assert_eq!(as_key.get("/v1/tenants/acme").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(as_key.get("/v1/tenants/acme").await.0, 401, "expired with its token");
}
