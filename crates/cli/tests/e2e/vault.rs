//! The vault through the real CLI and API: secrets, keys, credentials on a
//! real PostgreSQL server, anomaly lockout, and logs that never show a
//! secret.

use std::time::{Duration, Instant};

use bulkhead_vault::{KeyEncryptionKey, KeyRole, LocalKey, master_key};
use serde_json::Value;

use crate::kit::{Server, Store, command, connect, exit_code, role_exists, stderr, stdout};

fn tenant(server: &Server, name: &str, plan: &str) -> Value {
    server.cli_json(&["tenants", "create", name, "--plan", plan, "--isolation", "silo", "--wait"])
}

fn put(server: &Server, tenant: &str, path: &str, value: &[u8]) -> std::process::Output {
    server.cli_with_input(&["secrets", "put", "--tenant", tenant, path], value)
}

fn get(server: &Server, tenant: &str, path: &str) -> std::process::Output {
    server.cli(&["secrets", "get", "--tenant", tenant, path])
}

/// Every file under the data directory, at any depth, concatenated: what
/// a stolen disk would hold (the tenants' own databases included).
fn disk(server: &Server) -> Vec<u8> {
    let (mut all, mut dirs, mut files) = (Vec::new(), vec![server.data_dir()], 0);
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.is_file() {
                all.extend(std::fs::read(&path).unwrap());
                files += 1;
            }
        }
    }
    assert!(files > 3, "the data directory holds the store, keys and tenants' files");
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn secrets_round_trip_through_the_cli_and_stay_encrypted_at_rest() {
    let server = Server::embedded().await;
    tenant(&server, "acme", "starter");
    tenant(&server, "globex", "starter");

    // Bytes as they are, NUL and newline included.
    let value = b"s3cr3t-\x00-value\n";
    let stored = put(&server, "acme", "db/password", value);
    assert!(stored.status.success(), "{}", stderr(&stored));
    assert!(stderr(&stored).contains("version 1"), "{}", stderr(&stored));
    let read = get(&server, "acme", "db/password");
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(read.stdout, value);

    // From a file, and versions kept per plan (starter: 3).
    let file = server.dir.path().join("value.txt");
    for i in 2..=5 {
        std::fs::write(&file, format!("value {i}")).unwrap();
        let out = server.cli(&[
            "secrets",
            "put",
            "--tenant",
            "acme",
            "db/password",
            "--file",
            file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(get(&server, "acme", "db/password").stdout, b"value 5");
    let old = server.cli(&["secrets", "get", "--tenant", "acme", "db/password", "--version", "3"]);
    assert_eq!(old.stdout, b"value 3");
    let dropped =
        server.cli(&["secrets", "get", "--tenant", "acme", "db/password", "--version", "2"]);
    assert_eq!(exit_code(&dropped), 3, "{}", stderr(&dropped));
    let listed = server.cli_json(&["secrets", "list", "--tenant", "acme"]);
    assert_eq!(listed[0]["path"], "db/password");
    assert_eq!(listed[0]["latest_version"], 5);
    assert_eq!(listed[0]["versions"], 3);
    assert!(!listed.to_string().contains("value"), "list shows metadata only: {listed}");
    let table = server.cli(&["secrets", "list", "--tenant", "acme"]);
    assert!(stdout(&table).starts_with("PATH"), "{}", stdout(&table));

    // Tenants do not see each other's paths.
    assert_eq!(exit_code(&get(&server, "globex", "db/password")), 3);

    // A stolen copy of the data directory holds no plaintext.
    assert!(!contains(&disk(&server), b"s3cr3t-"), "plaintext found on disk");
    assert!(!contains(&disk(&server), b"value 5"), "plaintext found on disk");

    let deleted = server.cli(&["secrets", "delete", "--tenant", "acme", "db/password"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(exit_code(&get(&server, "acme", "db/password")), 3);
    assert_eq!(server.cli_json(&["secrets", "list", "--tenant", "acme"]), serde_json::json!([]));

    // Every read and write is on record, never with a value.
    let events = server.audit_events(&["acme"]);
    let actions: Vec<_> = events
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("secret.write", "ok")), "{actions:?}");
    assert!(actions.contains(&("secret.read", "ok")), "{actions:?}");
    assert!(actions.contains(&("secret.read", "not_found")), "{actions:?}");
    assert!(actions.contains(&("secret.delete", "ok")), "{actions:?}");
    let read_event = events.iter().find(|e| e["action"] == "secret.read").unwrap();
    assert_eq!(
        (&read_event["actor_kind"], &read_event["actor_id"]),
        (&"operator".into(), &"initial".into())
    );
    assert!(read_event["resource"].as_str().unwrap().starts_with("secrets/"), "{read_event}");
    assert!(events.iter().all(|e| !e.to_string().contains("s3cr3t")));
}

#[tokio::test]
async fn bad_secret_input_is_refused_with_the_reason() {
    let server = Server::embedded().await;
    tenant(&server, "acme", "starter");
    let long = ["a"; 200].join("/");
    for (path, expected) in [
        ("../x", "contains \"..\""),
        ("a//b", "empty segment"),
        ("a/./b", "contains \".\""),
        ("/a", "empty segment"),
        ("a b", "the character ' '"),
        (long.as_str(), "bytes long"),
    ] {
        let out = put(&server, "acme", path, b"v");
        assert_eq!(exit_code(&out), 2, "{path}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{path}: {}", stderr(&out));
    }
    // The server refuses them too, whatever the client: NUL, and traversal
    // sent as is (most HTTP clients would normalise it away first).
    for raw in ["a%00b", "a/../b", "a/%2E%2E/b", "a%2F%2Fb"] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--path-as-is", "-X", "PUT", "--data-binary", "v", "-H"])
            .arg(format!("authorization: Bearer {}", server.token))
            .arg(format!("{}/v1/tenants/acme/secrets/{raw}", server.api))
            .output()
            .unwrap();
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["error"]["code"], "invalid_secret_path", "{raw}: {body}");
    }

    let empty = put(&server, "acme", "a", b"");
    assert_eq!(exit_code(&empty), 2);
    assert!(stderr(&empty).contains("the secret value is empty"), "{}", stderr(&empty));
    let big = vec![b'x'; bulkhead_vault::MAX_VALUE_BYTES + 1];
    let oversized = put(&server, "acme", "a", &big);
    assert_eq!(exit_code(&oversized), 2);
    assert!(stderr(&oversized).contains("65536 bytes"), "{}", stderr(&oversized));
    let most = vec![b'x'; bulkhead_vault::MAX_VALUE_BYTES];
    assert!(put(&server, "acme", "a", &most).status.success());

    let unknown = put(&server, "nobody", "a", b"v");
    assert_eq!(exit_code(&unknown), 3);
    assert!(stderr(&unknown).contains("tenant \"nobody\" does not exist"), "{}", stderr(&unknown));
    // Nothing half-written: only the one good value exists.
    let listed = server.cli_json(&["secrets", "list", "--tenant", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["versions"], 1);
}

#[tokio::test]
async fn rotation_of_data_keys_and_master_key_keeps_every_secret() {
    let mut server = Server::embedded().await;
    for name in ["acme", "globex"] {
        tenant(&server, name, "professional");
        assert!(put(&server, name, "api/key", name.as_bytes()).status.success());
    }
    let rotated = server.cli_json(&["vault", "rotate-key", "--tenant", "acme"]);
    assert_eq!(rotated["data_keys"].as_array().unwrap().len(), 2);
    assert!(put(&server, "acme", "api/new", b"under v2").status.success());
    let rewrap = server.cli_json(&["secrets", "rewrap", "--tenant", "acme"]);
    assert_eq!(rewrap["reencrypted"], 1);

    let key_file = server.data_dir().join("master.key");
    let before = std::fs::read(&key_file).unwrap();
    let master = server.cli_json(&["vault", "rotate-master"]);
    assert_eq!(master["rewrapped"], 3, "{master}");
    assert_ne!(std::fs::read(&key_file).unwrap(), before);
    for (name, path, value) in [
        ("acme", "api/key", "acme"),
        ("acme", "api/new", "under v2"),
        ("globex", "api/key", "globex"),
    ] {
        assert_eq!(get(&server, name, path).stdout, value.as_bytes());
    }

    // After a restart the new key is the key; the old one is refused, and
    // the refusal changes nothing.
    server.stop();
    server.restart().await;
    assert_eq!(get(&server, "globex", "api/key").stdout, b"globex");
    server.stop();
    let old = server.dir.path().join("old.key");
    std::fs::write(&old, &before).unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let refused = command()
        .args(["serve", "--api-listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir())
        .arg("--master-key-file")
        .arg(&old)
        .output()
        .unwrap();
    assert_eq!(exit_code(&refused), 1);
    assert!(
        stderr(&refused).contains("is not the one this store's data keys are wrapped with"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&refused).contains("Nothing was changed"), "{}", stderr(&refused));
    server.restart().await;
    assert_eq!(get(&server, "acme", "api/key").stdout, b"acme");
}

#[tokio::test]
async fn scheduled_rotation_moves_secrets_to_a_new_data_key() {
    let server =
        Server::start(Store::Embedded, "[vault]\nrotate_data_keys_every = \"1s\"\n", &[]).await;
    tenant(&server, "acme", "starter");
    assert!(put(&server, "acme", "a", b"kept").status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = server.cli_json(&["vault", "keys", "--tenant", "acme"]);
        if keys["data_keys"].as_array().unwrap().len() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled rotation: {keys}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&server, "acme", "a").stdout, b"kept");
    let secret = server.open_store().await;
    let acme =
        secret.tenant(&bulkhead_model::TenantName::parse("acme").unwrap()).await.unwrap().unwrap();
    let stored = secret.secret(acme.id, "a", None).await.unwrap().unwrap();
    assert!(stored.key_version >= 2, "re-encrypted under a newer key: {}", stored.key_version);
}

#[tokio::test]
async fn bring_your_own_key_seals_the_tenant_from_the_operator() {
    let mut server = Server::embedded().await;
    tenant(&server, "acme", "starter");
    assert!(put(&server, "acme", "s", b"for acme's eyes").status.success());
    let key_file = server.dir.path().join("acme.key");
    std::fs::write(&key_file, LocalKey::generate(KeyRole::Tenant).unwrap().to_text().as_bytes())
        .unwrap();
    let key_arg = key_file.to_str().unwrap();
    let adopted =
        server.cli_json(&["vault", "tenant-key", "--tenant", "acme", "--key-file", key_arg]);
    assert_eq!(adopted["adopted"], true);
    assert_eq!(get(&server, "acme", "s").stdout, b"for acme's eyes");
    let keys = server.cli_json(&["vault", "keys", "--tenant", "acme"]);
    assert_eq!(keys["tenant_key"], true);

    // A restart forgets the tenant's key: the operator, with the store and
    // the master key, cannot read the tenant's secrets.
    server.stop();
    server.restart().await;
    let sealed = get(&server, "acme", "s");
    assert_eq!(exit_code(&sealed), 4, "{}", stderr(&sealed));
    assert!(stderr(&sealed).contains("wrapped by its own key"), "{}", stderr(&sealed));
    let master =
        master_key::read_key_file(&server.data_dir().join("master.key"), KeyRole::Master).unwrap();
    let store = server.open_store().await;
    let acme =
        store.tenant(&bulkhead_model::TenantName::parse("acme").unwrap()).await.unwrap().unwrap();
    for key in store.data_keys(acme.id).await.unwrap() {
        let aad = bulkhead_vault::envelope::data_key_aad(acme.id.0, key.version);
        assert!(master.unwrap(&key.wrapped, &aad).await.is_err());
    }

    let load = |name: &str, contents: &str| {
        let file = server.dir.path().join(name);
        std::fs::write(&file, contents).unwrap();
        server.cli(&[
            "vault",
            "tenant-key",
            "--tenant",
            "acme",
            "--key-file",
            file.to_str().unwrap(),
        ])
    };
    let wrong = LocalKey::generate(KeyRole::Tenant).unwrap().to_text();
    let refused = load("wrong.key", &wrong);
    assert_eq!(exit_code(&refused), 2, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("is not the one"), "{}", stderr(&refused));
    let refused = load("garbage.key", "not a key");
    assert_eq!(exit_code(&refused), 2);
    assert!(stderr(&refused).contains("openssl rand -base64 32"), "{}", stderr(&refused));

    let loaded =
        server.cli_json(&["vault", "tenant-key", "--tenant", "acme", "--key-file", key_arg]);
    assert_eq!(loaded["adopted"], false);
    assert_eq!(get(&server, "acme", "s").stdout, b"for acme's eyes");
    assert!(server.cli(&["vault", "tenant-key", "--tenant", "acme", "--forget"]).status.success());
    assert_eq!(exit_code(&get(&server, "acme", "s")), 4);
}

#[tokio::test]
async fn deleting_a_tenant_shreds_its_keys_and_a_purge_its_final_snapshots_too() {
    let server = Server::embedded().await;
    tenant(&server, "acme", "starter");
    assert!(put(&server, "acme", "s", b"gone for good").status.success());
    let store = server.open_store().await;
    let acme =
        store.tenant(&bulkhead_model::TenantName::parse("acme").unwrap()).await.unwrap().unwrap();
    let copy = store.secret(acme.id, "s", None).await.unwrap().unwrap();

    let deleted = server.cli(&["tenants", "delete", "acme", "--yes", "--wait"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(store.data_keys(acme.id).await.unwrap().is_empty(), "a delete destroys the keys");
    // What is left is the final snapshot's key, wrapped by the master key.
    assert_eq!(store.data_keys_by_kek().await.unwrap().len(), 1);
    let purged = server.cli(&["tenants", "delete", "acme", "--purge", "--yes", "--wait"]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(store.data_keys(acme.id).await.unwrap().is_empty());
    assert!(store.data_keys_by_kek().await.unwrap().is_empty());
    // The copy taken before is ciphertext under a key that no longer
    // exists anywhere; the master key does not open it.
    let master =
        master_key::read_key_file(&server.data_dir().join("master.key"), KeyRole::Master).unwrap();
    let aad = bulkhead_vault::envelope::secret_aad(acme.id.0, copy.key_version, &copy.path);
    assert!(master.unwrap(&copy.ciphertext, &aad).await.is_err());
    assert!(!contains(&disk(&server), b"gone for good"));
}

#[tokio::test]
async fn one_principal_reaching_for_many_tenants_is_locked_out() {
    let config =
        "[vault]\nanomaly_threshold = 2\nanomaly_window = \"5m\"\nanomaly_lockout = true\n";
    let server = Server::start(Store::Embedded, config, &[]).await;
    for name in ["one", "two", "three"] {
        tenant(&server, name, "starter");
    }
    assert!(put(&server, "one", "a", b"1").status.success());
    assert!(put(&server, "two", "a", b"2").status.success());
    let third = put(&server, "three", "a", b"3");
    assert_eq!(exit_code(&third), 6, "{}", stderr(&third));
    assert!(
        stderr(&third).contains("is locked out after touching too many tenants"),
        "{}",
        stderr(&third)
    );
    // Locked out of reads too, even of a tenant it touched before.
    assert_eq!(exit_code(&get(&server, "one", "a")), 6);

    let lockouts = server.cli_json(&["vault", "lockouts"]);
    assert_eq!(lockouts[0]["principal"], "operator:initial");
    assert!(lockouts[0]["reason"].as_str().unwrap().contains("3 tenants"), "{lockouts}");
    let events = server.audit_events(&["one", "two", "three"]);
    let alert = events.iter().find(|e| e["action"] == "vault.anomaly").expect("an alert event");
    assert_eq!(alert["outcome"], "alert");
    assert_eq!(alert["details"]["tenants"], 3);
    assert!(events.iter().any(|e| e["outcome"] == "denied"));
    let metrics =
        reqwest::get(format!("{}/metrics", server.api)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"bulkhead_vault_operations_total{action="vault.anomaly",outcome="alert"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"bulkhead_vault_operations_total{action="secret.write",outcome="ok"} 2"#),
        "{metrics}"
    );

    // A locked-out token cannot clear its own lockout (a thief would);
    // whoever can open the control store can.
    let own = server.cli(&["vault", "unlock", "operator:initial"]);
    assert_eq!(exit_code(&own), 6, "{}", stderr(&own));
    assert!(stderr(&own).contains("cannot clear its own lockout"), "{}", stderr(&own));
    let offline = server.cli(&["vault", "unlock", "operator:initial", "--offline"]);
    assert!(offline.status.success(), "{}", stderr(&offline));
    assert_eq!(get(&server, "one", "a").stdout, b"1");
    assert_eq!(get(&server, "two", "a").stdout, b"2", "counting started afresh");
    let again = server.cli(&["vault", "unlock", "operator:initial", "--offline"]);
    assert_eq!(exit_code(&again), 3);
}

#[tokio::test]
async fn minting_counts_towards_the_lockout_and_a_locked_out_principal_mints_nothing() {
    let config =
        "[vault]\nanomaly_threshold = 2\nanomaly_window = \"5m\"\nanomaly_lockout = true\n";
    let server = Server::start(Store::Embedded, config, &[]).await;
    for name in ["one", "two", "three"] {
        tenant(&server, name, "starter");
    }
    let mint = |tenant: &str| {
        server.cli(&[
            "auth",
            "token",
            "--tenant",
            tenant,
            "--subject",
            "x",
            "--role",
            "owner",
            "--control-api",
        ])
    };
    assert!(put(&server, "one", "a", b"1").status.success());
    assert!(mint("two").status.success());
    // Minting a token is a touch like any other: the third tenant trips it.
    let third = mint("three");
    assert_eq!(exit_code(&third), 6, "{}", stderr(&third));
    assert!(stderr(&third).contains("locked out"), "{}", stderr(&third));

    // Locked out, it mints nothing for a tenant it touched before: no
    // token, no API key, no export, no credential, no secret.
    assert_eq!(exit_code(&mint("one")), 6);
    let key =
        server.cli(&["apikeys", "create", "--tenant", "one", "--name", "k", "--role", "owner"]);
    assert_eq!(exit_code(&key), 6, "{}", stderr(&key));
    let export = server.cli(&["audit", "export", "--tenant", "one"]);
    assert_eq!(exit_code(&export), 6, "{}", stderr(&export));
    assert!(stdout(&export).is_empty(), "nothing exported");
    assert_eq!(exit_code(&get(&server, "one", "a")), 6);
    let events = server.audit_events(&["one", "two", "three"]);
    for action in ["token.issue", "apikey.create", "audit.export", "secret.read"] {
        assert!(
            events.iter().any(|e| e["action"] == action && e["outcome"] == "denied"),
            "{action} denied is on record"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "vault.anomaly" && e["details"]["action"] == "token.issue")
    );
}

#[tokio::test]
async fn database_credentials_are_real_narrow_and_short_lived() {
    let config = "[vault]\ncredential_sweep_every = \"1s\"\n";
    let db = bulkhead_testkit::TestDatabase::create().await;
    let server = Server::start(Store::Postgres(db), config, &[]).await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "enterprise", "--wait"]);
    server.cli_json(&["tenants", "create", "globex", "--plan", "enterprise", "--wait"]);

    let write = server.cli_json(&["creds", "issue", "--tenant", "acme", "--ttl", "1h"]);
    let url = write["url"].as_str().unwrap().to_owned();
    let role = write["lease"]["role"].as_str().unwrap().to_owned();
    let lease = write["lease"]["id"].as_str().unwrap().to_owned();
    assert!(role_exists(&role).await);
    let mut conn = connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE notes (body text)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('hello')").execute(&mut conn).await.unwrap();
    let (owner,): (String,) =
        sqlx::query_as("SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(
        owner.ends_with("_owner"),
        "tables belong to the tenant's role, not the lease: {owner}"
    );

    // Only its own tenant's database.
    let globex_db = {
        let view = server.cli_json(&["tenants", "get", "globex"]);
        let steps = view["steps"].as_array().unwrap().clone();
        let step = steps.iter().find(|s| s["name"] == "create_database").unwrap().clone();
        step["output"]["database"].as_str().unwrap().to_owned()
    };
    let elsewhere = url.rsplit_once('/').unwrap().0.to_owned() + "/" + &globex_db;
    let refused = connect(&elsewhere).await.unwrap_err().to_string();
    assert!(refused.contains("permission denied"), "{refused}");

    // Read-only credentials read and cannot write.
    let read = server
        .cli_json(&["creds", "issue", "--tenant", "acme", "--access", "read", "--ttl", "10m"]);
    let mut reader = connect(read["url"].as_str().unwrap()).await.unwrap();
    let (body,): (String,) =
        sqlx::query_as("SELECT body FROM notes").fetch_one(&mut reader).await.unwrap();
    assert_eq!(body, "hello");
    let denied =
        sqlx::query("INSERT INTO notes VALUES ('x')").execute(&mut reader).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");

    // Above the plan's maximum (enterprise: 1d), or nonsense: refused
    // before any role is made.
    let roles_before = server.postgres_db().owned_objects().await.1;
    let too_long = server.cli(&["creds", "issue", "--tenant", "acme", "--ttl", "25h"]);
    assert_eq!(exit_code(&too_long), 2, "{}", stderr(&too_long));
    assert!(stderr(&too_long).contains("between 1s and 1d"), "{}", stderr(&too_long));
    let nonsense = server.cli(&["creds", "issue", "--tenant", "acme", "--ttl", "soon"]);
    assert_eq!(exit_code(&nonsense), 2);
    assert_eq!(server.postgres_db().owned_objects().await.1, roles_before);

    // Revoking ends the session and drops the role.
    let listed = server.cli_json(&["creds", "list", "--tenant", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let revoked = server.cli_json(&["creds", "revoke", &lease]);
    assert!(revoked[0]["revoked_at"].is_string(), "{revoked}");
    assert!(!role_exists(&role).await);
    assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err(), "the session was ended");
    assert!(connect(&url).await.is_err());
    let twice = server.cli(&["creds", "revoke", &lease]);
    assert_eq!(exit_code(&twice), 4, "{}", stderr(&twice));
    assert!(stderr(&twice).contains("already revoked"), "{}", stderr(&twice));
    let unknown = server.cli(&["creds", "revoke", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(exit_code(&unknown), 3);
    let malformed = server.cli(&["creds", "revoke", "not-a-lease"]);
    assert_eq!(exit_code(&malformed), 3);

    // A tenant revokes its own leases on its own path, with its own key;
    // on another tenant's path its lease does not exist.
    let read_lease = read["lease"]["id"].as_str().unwrap().to_owned();
    let key =
        server.cli_json(&[
            "apikeys", "create", "--tenant", "acme", "--name", "ops", "--role", "admin",
        ])["key"]
            .as_str()
            .unwrap()
            .to_owned();
    let globex_key = server
        .cli_json(&["apikeys", "create", "--tenant", "globex", "--name", "ops", "--role", "admin"])
        ["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let elsewhere = server.http().with_token(&globex_key);
    let (status, _) =
        elsewhere.delete(&format!("/v1/tenants/globex/credentials/{read_lease}")).await;
    assert_eq!(status, 404, "another tenant's lease is not there");
    let own = server.http().with_token(&key);
    let (status, body) = own.delete(&format!("/v1/tenants/acme/credentials/{read_lease}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");

    // Expiry: the sweeper ends the session and drops the role by itself.
    let short = server.cli_json(&["creds", "issue", "--tenant", "acme", "--ttl", "2s"]);
    let short_role = short["lease"]["role"].as_str().unwrap().to_owned();
    let mut short_conn = connect(short["url"].as_str().unwrap()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while role_exists(&short_role).await {
        assert!(
            Instant::now() < deadline,
            "the expired lease's role is still there\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sqlx::query("SELECT 1").execute(&mut short_conn).await.is_err());
    let all = server.cli_json(&["creds", "list", "--tenant", "acme", "--all"]);
    let expired = all.as_array().unwrap().iter().find(|l| l["role"] == short_role.as_str());
    assert!(expired.is_some_and(|l| l["revoked_at"].is_string()), "{all}");
    let events = server.audit_events(&["acme"]);
    for action in ["credential.issue", "credential.revoke", "credential.expire"] {
        assert!(events.iter().any(|e| e["action"] == action), "{action}");
    }

    // Offboarding revokes what is still live (the read lease) before the
    // database goes: nothing of the tenant is left on the server.
    drop(reader);
    let read_role = read["lease"]["role"].as_str().unwrap().to_owned();
    let purged = server.cli(&["tenants", "delete", "acme", "--purge", "--yes", "--wait"]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(!role_exists(&read_role).await);
    let (databases, roles) = server.postgres_db().owned_objects().await;
    assert!(databases.contains(&globex_db), "globex's database is still listed: {databases:?}");
    assert!(databases.iter().all(|d| !d.contains("acme")), "{databases:?}");
    assert!(!roles.is_empty(), "globex's roles are still listed");
    assert!(roles.iter().all(|r| !r.contains(&acme_short(&role))), "{roles:?}");
}

/// The tenant's id prefix inside a lease role name (`<prefix>l_<id8>_…`).
fn acme_short(role: &str) -> String {
    role.split('_').rev().nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn embedded_tenants_have_no_database_logins() {
    let server = Server::embedded().await;
    tenant(&server, "acme", "enterprise");
    let refused = server.cli(&["creds", "issue", "--tenant", "acme"]);
    assert_eq!(exit_code(&refused), 4);
    assert!(stderr(&refused).contains("embedded SQLite file"), "{}", stderr(&refused));
}

#[tokio::test]
async fn trace_logging_never_shows_a_secret_value_or_password() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    let server = Server::start_logging(Store::Postgres(db), "", &[], "trace").await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "enterprise", "--wait"]);
    let value = b"canary-7f3a9c-do-not-log";
    assert!(put(&server, "acme", "db/password", value).status.success());
    assert_eq!(get(&server, "acme", "db/password").stdout, value);
    let issued = server.cli_json(&["creds", "issue", "--tenant", "acme", "--ttl", "5m"]);
    let url = issued["url"].as_str().unwrap();
    let password = url
        .split_once("://")
        .unwrap()
        .1
        .split_once('@')
        .unwrap()
        .0
        .split_once(':')
        .unwrap()
        .1
        .to_owned();
    assert!(password.len() >= 32);
    let key = server.dir.path().join("acme.key");
    let tenant_key = LocalKey::generate(KeyRole::Tenant).unwrap().to_text();
    std::fs::write(&key, tenant_key.as_bytes()).unwrap();
    server.cli_json(&[
        "vault",
        "tenant-key",
        "--tenant",
        "acme",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    server.cli_json(&["creds", "revoke", issued["lease"]["id"].as_str().unwrap()]);

    let log = server.log();
    // The most verbose logging there is: every SQL statement the store runs.
    assert!(log.contains("db.statement"), "statement logging is on");
    assert!(log.len() > 10_000, "the log has content: {} bytes", log.len());
    assert!(!log.contains("canary-7f3a9c"), "a secret value reached the log");
    assert!(!log.contains(&password), "a credential's password reached the log");
    assert!(!log.contains(tenant_key.trim()), "a tenant's key reached the log");
    let master = std::fs::read_to_string(server.data_dir().join("master.key")).unwrap();
    assert!(!log.contains(master.trim()), "the master key reached the log");
}

#[tokio::test]
async fn a_tenant_cannot_fill_the_store_or_flood_the_control_api() {
    let server = Server::embedded().await;
    tenant(&server, "acme", "starter");
    tenant(&server, "globex", "starter");
    let http = server.http();
    let put = |path: String, value: &'static str| {
        let request = http
            .client
            .put(format!("{}/v1/tenants/acme/secrets/{path}", server.api))
            .bearer_auth(&server.token)
            .body(value);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    // Starter keeps 100 secret paths, 3 versions each.
    for n in 0..100 {
        assert_eq!(put(format!("p/{n}"), "v").await.0, 201, "path {n}");
    }
    let (status, body) = put("p/100".into(), "v").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("has 100 secrets, as many as plan starter allows"), "{message}");
    for _ in 0..5 {
        assert_eq!(put("p/0".into(), "again").await.0, 201, "a new version of a path it has");
    }
    let listed = server.cli_json(&["secrets", "list", "--tenant", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 100);
    assert!(listed.as_array().unwrap().iter().all(|s| s["versions"].as_i64().unwrap() <= 3));
    assert!(put_secret_ok(&server, "globex"), "another tenant's quota is its own");

    // Ten API keys, then none until one is revoked.
    let mut ids = Vec::new();
    for n in 0..10 {
        let key = server.cli_json(&[
            "apikeys",
            "create",
            "--tenant",
            "acme",
            "--name",
            &format!("k{n}"),
            "--role",
            "viewer",
        ]);
        ids.push(key["api_key"]["id"].as_str().unwrap().to_owned());
    }
    let refused =
        server.cli(&["apikeys", "create", "--tenant", "acme", "--name", "k10", "--role", "viewer"]);
    assert_eq!(exit_code(&refused), 4, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("has 10 API keys"), "{}", stderr(&refused));
    assert!(server.cli(&["apikeys", "revoke", "--tenant", "acme", &ids[0]]).status.success());
    assert!(
        server
            .cli(&["apikeys", "create", "--tenant", "acme", "--name", "k10", "--role", "viewer"])
            .status
            .success()
    );

    // The tenant's own credentials: 300 requests a minute, bursts of 50.
    let token = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "a",
        "--role",
        "viewer",
        "--control-api",
    ]);
    let as_tenant = server.http().with_token(token["token"].as_str().unwrap());
    let mut limited = None;
    for _ in 0..80 {
        let response = as_tenant
            .client
            .get(format!("{}/v1/tenants/acme/secrets", server.api))
            .bearer_auth(as_tenant.token.as_ref().unwrap())
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the burst ran out");
    let wait: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&wait), "{wait}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Operators, and other tenants, are not held up by it.
    assert_eq!(server.http().get("/v1/tenants/acme/secrets").await.0, 200);
    let other = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "globex",
        "--subject",
        "g",
        "--role",
        "viewer",
        "--control-api",
    ]);
    let as_other = server.http().with_token(other["token"].as_str().unwrap());
    assert_eq!(as_other.get("/v1/tenants/globex/secrets").await.0, 200);
}

fn put_secret_ok(server: &Server, tenant: &str) -> bool {
    put(server, tenant, "p/new", b"v").status.success()
}
