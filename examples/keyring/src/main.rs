//! Keyring: a team's inventory of API keys and certificates, each with an
//! owner, a type and an expiry. Bulkhead's sample application: the runtime
//! runs one copy per tenant, and this program knows nothing about tenants.
//! It finds its database in `$BULKHEAD_DATABASE_URL` (through the
//! tenant-scoped access crate), one secret in its secrets directory (the
//! pepper with which it fingerprints the keys it is shown, so that it
//! never stores one), and serves HTTP on `$BULKHEAD_SOCKET`, where the
//! gateway sends it the tenant's requests.
//!
//! | request | answer |
//! |---|---|
//! | `GET /items[?owner=O]` | the items, soonest expiry first |
//! | `POST /items` `{name, kind, owner?, expires, secret?}` | 201 and the item (the secret only as a fingerprint) |
//! | `GET /items/{id}`, `DELETE /items/{id}` | one item; 204 |
//! | `GET /expiring?days=N` | items expiring within N days (30) |
//! | `GET /healthz` | 200 once the database answers |
//!
//! Outside Bulkhead: `BULKHEAD_DATABASE_URL=sqlite:/tmp/k.db
//! BULKHEAD_SECRETS_DIR=/tmp/secrets KEYRING_LISTEN=127.0.0.1:8081 keyring`.

// A program of its own, not Bulkhead: its clock is the system's and its log
// is its standard output, which the runtime keeps.
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::print_stderr)]

use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use bulkhead_access::{Options, Pool, Source, TenantDb};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use time::{
    Date, OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description,
};
use zeroize::Zeroizing;

/// The secret's file in `$BULKHEAD_SECRETS_DIR`.
const PEPPER_FILE: &str = "pepper";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS keyring_items (\
    id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL, \
    expires TEXT NOT NULL, fingerprint TEXT, created_by TEXT NOT NULL, created_at TEXT NOT NULL)";

const COLUMNS: &str = "id, name, kind, owner, expires, fingerprint, created_by, created_at";

/// Runs `$body` with `$p` bound to the pool, whichever database it is: the
/// queries are the same text on both.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

#[derive(Clone)]
struct App {
    db: Pool,
    pepper: Arc<Zeroizing<Vec<u8>>>,
}

type Row = (String, String, String, String, String, Option<String>, String, String);

#[derive(Serialize)]
struct Item {
    id: String,
    name: String,
    kind: String,
    owner: String,
    expires: String,
    /// The first 16 hex digits of HMAC-SHA256(pepper, secret): enough to
    /// tell two keys apart, nothing to recover one.
    fingerprint: Option<String>,
    created_by: String,
    created_at: String,
}

impl From<Row> for Item {
    fn from(r: Row) -> Self {
        Item {
            id: r.0,
            name: r.1,
            kind: r.2,
            owner: r.3,
            expires: r.4,
            fingerprint: r.5,
            created_by: r.6,
            created_at: r.7,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    name: String,
    kind: String,
    owner: Option<String>,
    /// `YYYY-MM-DD`.
    expires: String,
    secret: Option<String>,
}

#[derive(Deserialize)]
struct Filter {
    owner: Option<String>,
    days: Option<i64>,
}

/// An error as the caller sees it: a status and a message.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        eprintln!("database: {error}");
        Failure(StatusCode::SERVICE_UNAVAILABLE, "the database did not answer".to_owned())
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, message.into())
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

async fn health(State(app): State<App>) -> Result<&'static str, Failure> {
    on_pool!(&app.db, |p| sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
    Ok("ok\n")
}

async fn list(
    State(app): State<App>,
    Query(filter): Query<Filter>,
) -> Result<Json<Vec<Item>>, Failure> {
    let sql = format!(
        "SELECT {COLUMNS} FROM keyring_items WHERE ($1 IS NULL OR owner = $1) ORDER BY expires, name"
    );
    let rows: Vec<Row> = on_pool!(&app.db, |p| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(filter.owner.as_deref()).fetch_all(p).await
    })?;
    Ok(Json(rows.into_iter().map(Item::from).collect()))
}

async fn expiring(
    State(app): State<App>,
    Query(filter): Query<Filter>,
) -> Result<Json<Vec<Item>>, Failure> {
    let days = filter.days.unwrap_or(30);
    if !(0..=3650).contains(&days) {
        return Err(bad("days is 0 to 3650"));
    }
    let until = (today() + time::Duration::days(days)).to_string();
    let sql =
        format!("SELECT {COLUMNS} FROM keyring_items WHERE expires <= $1 ORDER BY expires, name");
    let rows: Vec<Row> = on_pool!(&app.db, |p| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&until).fetch_all(p).await
    })?;
    Ok(Json(rows.into_iter().map(Item::from).collect()))
}

async fn create(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<NewItem>, JsonRejection>,
) -> Result<(StatusCode, Json<Item>), Failure> {
    let Json(new) = body.map_err(|e| bad(e.body_text()))?;
    if new.name.trim().is_empty() || new.name.len() > 200 {
        return Err(bad("name is 1 to 200 characters"));
    }
    if !matches!(new.kind.as_str(), "api_key" | "certificate" | "token" | "password") {
        return Err(bad("kind is api_key, certificate, token or password"));
    }
    let expires = Date::parse(&new.expires, format_description!("[year]-[month]-[day]"))
        .map_err(|_| bad("expires is a date, YYYY-MM-DD"))?;
    // The gateway says who called; the app trusts nothing else about it.
    let caller = headers
        .get("x-bulkhead-subject")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let fingerprint = new.secret.map(Zeroizing::new).map(|secret| {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&app.pepper)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    });
    let item = Item {
        id: uuid::Uuid::new_v4().to_string(),
        name: new.name.trim().to_owned(),
        kind: new.kind,
        owner: new.owner.unwrap_or_else(|| caller.clone()),
        expires: expires.to_string(),
        fingerprint,
        created_by: caller,
        created_at: OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
    };
    let sql =
        format!("INSERT INTO keyring_items ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
    on_pool!(&app.db, |p| {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&item.id)
            .bind(&item.name)
            .bind(&item.kind)
            .bind(&item.owner)
            .bind(&item.expires)
            .bind(&item.fingerprint)
            .bind(&item.created_by)
            .bind(&item.created_at)
            .execute(p)
            .await
            .map(|_| ())
    })?;
    Ok((StatusCode::CREATED, Json(item)))
}

async fn one(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Item>, Failure> {
    let sql = format!("SELECT {COLUMNS} FROM keyring_items WHERE id = $1");
    let row: Option<Row> = on_pool!(&app.db, |p| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&id).fetch_optional(p).await
    })?;
    row.map(|r| Json(Item::from(r)))
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no item {id}")))
}

async fn remove(State(app): State<App>, Path(id): Path<String>) -> Result<StatusCode, Failure> {
    let done = on_pool!(&app.db, |p| {
        sqlx::query("DELETE FROM keyring_items WHERE id = $1")
            .bind(&id)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
    })?;
    if done == 0 {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no item {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

fn fail(message: String) -> std::process::ExitCode {
    eprintln!("keyring: {message}");
    std::process::ExitCode::FAILURE
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let source = match Source::from_env() {
        Ok(source) => source,
        Err(e) => return fail(e.to_string()),
    };
    let secrets = PathBuf::from(
        std::env::var("BULKHEAD_SECRETS_DIR").unwrap_or_else(|_| "/run/secrets".to_owned()),
    );
    let pepper = match std::fs::read(secrets.join(PEPPER_FILE)) {
        Ok(bytes) if !bytes.is_empty() => Zeroizing::new(bytes),
        _ => {
            return fail(format!(
                "no secret {}/{PEPPER_FILE}: deploy with --secret <path>={PEPPER_FILE}",
                secrets.display()
            ));
        }
    };
    let db = match TenantDb::open(source, &Options::default()).await {
        Ok(db) => db,
        Err(e) => return fail(e.to_string()),
    };
    let pool = db.pool();
    if let Err(e) = on_pool!(&pool, |p| sqlx::query(SCHEMA).execute(p).await.map(|_| ())) {
        return fail(format!("cannot make the keyring's table: {e}"));
    }
    let app = App { db: pool, pepper: Arc::new(pepper) };
    let router = Router::new()
        .route("/healthz", get(health))
        .route("/items", get(list).post(create))
        .route("/items/{id}", get(one).delete(remove))
        .route("/expiring", get(expiring))
        .with_state(app);
    let served = match (std::env::var("BULKHEAD_SOCKET"), std::env::var("KEYRING_LISTEN")) {
        (Ok(socket), _) => match tokio::net::UnixListener::bind(&socket) {
            Ok(listener) => {
                println!(
                    "keyring {} serving on {socket}",
                    std::env::var("BULKHEAD_VERSION").unwrap_or_default()
                );
                axum::serve(listener, router).await
            }
            Err(e) => return fail(format!("cannot listen on {socket}: {e}")),
        },
        (Err(_), Ok(address)) => match tokio::net::TcpListener::bind(&address).await {
            Ok(listener) => {
                println!("keyring serving on {address}");
                axum::serve(listener, router).await
            }
            Err(e) => return fail(format!("cannot listen on {address}: {e}")),
        },
        _ => {
            return fail(
                "set BULKHEAD_SOCKET (as the runtime does) or KEYRING_LISTEN=host:port".to_owned(),
            );
        }
    };
    db.close().await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}
