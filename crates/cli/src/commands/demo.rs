//! `bulkhead demo`: on a running server, two tenants each running the
//! sample app (`examples/keyring`) as confined workers behind the gateway,
//! with a token each and the `curl` lines that show each tenant its own
//! data and the other tenant's token refused. Compiles nothing: the app's
//! binary is the one `cargo build` put beside `bulkhead`. `--clean`
//! removes it all.

use std::{
    io::Read,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bulkhead_control::api::types::{CreateTenantRequest, IssueTokenRequest};
use bulkhead_model::{ApiSpec, AppSpec, Isolation, Role, TenantState};
use serde_json::json;
use zeroize::Zeroizing;

use crate::{
    args::GlobalArgs,
    client::{ApiClient, Found},
    exit::{CliError, Kind},
};

const TENANTS: [&str; 2] = ["demo-a", "demo-b"];
const APP: &str = "keyring";
const PEPPER: &str = "keyring/pepper";
/// How long the demo waits for a tenant, or its app to serve.
const PATIENCE: Duration = Duration::from_secs(120);

fn say(text: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("==> {text}");
    }
}

pub async fn run(clean: bool, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    let status = client.status().await?;
    let artifacts = Path::new(&status.data_dir).join("artifacts").join(APP);
    if clean {
        return remove(&client, &artifacts).await;
    }
    let gateway: SocketAddr = status
        .gateway_url
        .as_deref()
        .and_then(|url| url.trim_start_matches("http://").parse().ok())
        .ok_or_else(|| {
            CliError::failed("the server runs no gateway, which the demo goes through")
        })?;
    let artifact = install(&keyring_binary()?, &artifacts.join(env!("CARGO_PKG_VERSION")))?;
    let host = |tenant: &str| format!("{tenant}.{}", status.base_domain);
    let http = TENANTS
        .iter()
        .fold(reqwest::Client::builder(), |b, t| b.resolve(&host(t), gateway))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let mut tokens = Vec::new();
    for tenant in TENANTS {
        say(&format!("tenant {tenant}: created, its app deployed and routed"));
        tenant_ready(&client, tenant).await?;
        let has_pepper =
            client.list_secrets(tenant).await?.secrets.iter().any(|s| s.path == PEPPER);
        if !has_pepper {
            let pepper = random_hex()?;
            client.put_secret(tenant, PEPPER, Zeroizing::new(pepper.as_bytes().to_vec())).await?;
        }
        client.deploy_app(tenant, &app_spec(&artifact)?).await?;
        client.put_api(tenant, &api_spec()?).await?;
        let request = IssueTokenRequest {
            subject: format!("{tenant}-user"),
            roles: vec![Role::Analyst],
            ttl: Some("12h".to_owned()),
            audience: Vec::new(),
            control_api: false,
        };
        let token = Zeroizing::new(client.issue_token(tenant, &request).await?.token);
        let base = format!("http://{}:{}/{APP}", host(tenant), gateway.port());
        say(&format!("tenant {tenant}: waiting for its app to serve through the gateway"));
        served(&http, &base, &token).await?;
        let items: Vec<serde_json::Value> = http
            .get(format!("{base}/items"))
            .bearer_auth(token.as_str())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CliError::failed(format!("{tenant}'s app: {e}")))?
            .json()
            .await
            .unwrap_or_default();
        if items.is_empty() {
            let item = json!({
                "name": format!("{tenant}'s payment provider key"),
                "kind": "api_key",
                "expires": "2027-06-30",
                "secret": random_hex()?.as_str(),
            });
            http.post(format!("{base}/items"))
                .bearer_auth(token.as_str())
                .json(&item)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| CliError::failed(format!("{tenant}'s app refused an item: {e}")))?;
        }
        tokens.push(token);
    }
    let resolve = |tenant: &str| {
        if status.base_domain == "localhost" {
            String::new()
        } else {
            format!(" --resolve {}:{}:{}", host(tenant), gateway.port(), gateway.ip())
        }
    };
    let url = |tenant: &str| format!("http://{}:{}/{APP}/items", host(tenant), gateway.port());
    let (a, b) = (TENANTS[0], TENANTS[1]);
    outln!(
        "Two tenants, each running its own copy of the keyring app as confined workers\n\
         (its own Unix user, namespaces, cgroup, database file and secret), behind the gateway.\n"
    );
    outln!("export A_TOKEN='{}'", tokens[0].as_str());
    outln!("export B_TOKEN='{}'\n", tokens[1].as_str());
    outln!(
        "curl{} -H \"Authorization: Bearer $A_TOKEN\" {}     # {a}'s items only",
        resolve(a),
        url(a)
    );
    outln!(
        "curl{} -H \"Authorization: Bearer $B_TOKEN\" {}     # {b}'s items only",
        resolve(b),
        url(b)
    );
    outln!(
        "curl{} -i -H \"Authorization: Bearer $A_TOKEN\" {}  # 401: {a}'s token is refused at {b}",
        resolve(b),
        url(b)
    );
    outln!(
        "curl{} -H \"Authorization: Bearer $A_TOKEN\" -H 'content-type: application/json' \\\n     -d '{{\"name\":\"TLS certificate\",\"kind\":\"certificate\",\"expires\":\"2027-01-31\"}}' {}",
        resolve(a),
        url(a)
    );
    outln!("\nbulkhead apps list --tenant {a}; bulkhead logs --tenant {a} --app {APP}");
    outln!("bulkhead verify isolation --tenant {a}");
    outln!("bulkhead demo --clean     # removes the tenants and the app's files");
    Ok(())
}

/// `keyring`, beside this `bulkhead`: the workspace builds both.
fn keyring_binary() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::failed(e.to_string()))?;
    let binary = exe.with_file_name(APP);
    if binary.is_file() {
        return Ok(binary);
    }
    Err(CliError::new(
        Kind::NotFound,
        format!(
            "the sample app is not built beside bulkhead (no {}); `cargo build --release` builds both",
            binary.display()
        ),
    ))
}

/// Copies the app into the server's artifacts (`<data-dir>/artifacts`),
/// where an app's files must be; returns the directory.
fn install(binary: &Path, dir: &Path) -> Result<String, CliError> {
    let fail = |e: std::io::Error| {
        CliError::failed(format!(
            "cannot put the sample app in {}: {e} (run the demo as the user that runs the server)",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    // Readable by the tenants' users, who run it; written only here.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    }
    let temporary = dir.join(format!(".{APP}.{}", std::process::id()));
    std::fs::copy(binary, &temporary).map_err(fail)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    std::fs::rename(&temporary, dir.join(APP)).map_err(fail)?;
    Ok(dir.display().to_string())
}

fn app_spec(artifact: &str) -> Result<AppSpec, CliError> {
    serde_json::from_value(json!({
        "name": APP,
        "version": env!("CARGO_PKG_VERSION"),
        "command": [format!("/app/{APP}")],
        "artifact": artifact,
        "secrets": [{ "path": PEPPER, "file": "pepper" }],
        "health": { "path": "/healthz", "interval_ms": 5000 },
    }))
    .map_err(|e| CliError::failed(format!("the demo's app spec: {e}")))
}

fn api_spec() -> Result<ApiSpec, CliError> {
    serde_json::from_value(json!({
        "name": APP,
        "prefix": format!("/{APP}"),
        "upstreams": [format!("app:{APP}")],
        "strip_prefix": true,
    }))
    .map_err(|e| CliError::failed(format!("the demo's API spec: {e}")))
}

/// The tenant, created (starter plan, silo) if it does not exist, active.
async fn tenant_ready(client: &ApiClient, tenant: &str) -> Result<(), CliError> {
    let view = match client.find_tenant(tenant).await? {
        Found::Yes(view) => view,
        Found::Gone => {
            let request = CreateTenantRequest {
                name: tenant.to_owned(),
                plan: "starter".to_owned(),
                // A database of its own, in which the keyring makes its
                // table (a pool's tables come from `bulkhead migrate`).
                isolation: Some(Isolation::Silo),
                region: None,
                admin_email: None,
                limits: Default::default(),
            };
            let created = client.create_tenant(&request).await?;
            super::tenants::provisioned(client, &created, PATIENCE.as_secs()).await?
        }
    };
    if view.tenant.state == TenantState::Active {
        return Ok(());
    }
    super::tenants::outcome(&view)?;
    Err(CliError::new(
        Kind::Conflict,
        format!(
            "tenant {tenant} is {}; `bulkhead demo --clean` removes it, then run the demo again",
            view.tenant.state
        ),
    ))
}

/// Waits until the app answers its health check through the gateway.
async fn served(http: &reqwest::Client, base: &str, token: &str) -> Result<(), CliError> {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http.get(format!("{base}/healthz")).bearer_auth(token).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(CliError::failed(format!(
        "the app did not serve within {}s (last answer: {last}); `bulkhead apps get` and \
         `bulkhead logs` say why",
        PATIENCE.as_secs()
    )))
}

/// Deletes the demo's tenants (purged, waited for) and the copy of the app.
async fn remove(client: &ApiClient, artifacts: &Path) -> Result<(), CliError> {
    for tenant in TENANTS {
        if let Found::Yes(_) = client.find_tenant(tenant).await? {
            say(&format!("tenant {tenant}: deleting"));
            client.delete_tenant(tenant, true, None).await?;
            let deadline = Instant::now() + PATIENCE;
            while let Found::Yes(view) = client.find_tenant(tenant).await? {
                if Instant::now() > deadline {
                    return Err(CliError::failed(format!(
                        "tenant {tenant} is still {} after {}s; `bulkhead tenants get {tenant}` says why",
                        view.tenant.state,
                        PATIENCE.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    // Only the copy the demo made; other versions an operator put there stay.
    let copy = artifacts.join(env!("CARGO_PKG_VERSION"));
    match std::fs::remove_dir_all(&copy) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CliError::failed(format!("cannot remove {}: {e}", copy.display()))),
    }
    // Gone too when nothing else is in it.
    let _ = std::fs::remove_dir(artifacts);
    say("the demo is gone");
    Ok(())
}

/// 32 random bytes in hex.
fn random_hex() -> Result<Zeroizing<String>, CliError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut *bytes))
        .map_err(|e| CliError::failed(format!("cannot read /dev/urandom: {e}")))?;
    Ok(Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect()))
}
