//! Starts the real `bulkhead` binary on a free port in a temporary data
//! directory, and drives it with the real CLI and a real HTTP client.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use bulkhead_testkit::TestDatabase;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// Variables a developer's shell might set that would point the binary
/// under test somewhere else.
const INHERITED: &[&str] = &[
    "BULKHEAD_API",
    "BULKHEAD_TOKEN",
    "BULKHEAD_DATA_DIR",
    "BULKHEAD_CONFIG",
    "BULKHEAD_STORE",
    "BULKHEAD_API_LISTEN",
    "BULKHEAD_GATEWAY_LISTEN",
    "BULKHEAD_BASE_DOMAIN",
    "BULKHEAD_REDIS",
    "BULKHEAD_LOG_FORMAT",
    "BULKHEAD_LOG",
    "BULKHEAD_MASTER_KEY",
    "BULKHEAD_MASTER_KEY_FILE",
    "BULKHEAD_PUBLIC_URL",
];

/// What test servers log unless a test asks for more.
const LOG_FILTER: &str = "info,bulkhead_control=debug,bulkhead_gateway=debug,sqlx=warn";

pub fn command() -> Command {
    let mut command = Command::new(BIN);
    for name in INHERITED {
        command.env_remove(name);
    }
    command
}

/// Which store a test server uses.
pub enum Store {
    Embedded,
    /// A PostgreSQL control store whose tenant databases (region `local`)
    /// live on the same server under the test database's object prefix.
    Postgres(TestDatabase),
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub store: Store,
    /// Extra `bulkhead.toml` content.
    config: String,
    extra_args: Vec<String>,
    /// Environment variables the server is started with.
    env: Vec<(String, String)>,
    log_filter: String,
    child: Option<Child>,
    pub api: String,
    /// The gateway's URL (`http://127.0.0.1:<port>`).
    pub gateway: String,
    pub token: String,
    log: PathBuf,
}

impl Server {
    pub async fn embedded() -> Self {
        Self::start(Store::Embedded, "", &[]).await
    }

    pub async fn postgres() -> Self {
        Self::start(Store::Postgres(TestDatabase::create().await), "", &[]).await
    }

    pub async fn start(store: Store, config: &str, extra_args: &[&str]) -> Self {
        Self::start_logging(store, config, extra_args, LOG_FILTER).await
    }

    /// Like [`Server::start`], with these environment variables set.
    pub async fn start_with_env(store: Store, config: &str, env: &[(&str, &str)]) -> Self {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::launch(store, config, &[], LOG_FILTER, env).await
    }

    /// Like [`Server::start`], with `BULKHEAD_LOG` set to `filter`.
    pub async fn start_logging(
        store: Store,
        config: &str,
        extra_args: &[&str],
        filter: &str,
    ) -> Self {
        Self::launch(store, config, extra_args, filter, Vec::new()).await
    }

    async fn launch(
        store: Store,
        config: &str,
        extra_args: &[&str],
        filter: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            log: dir.path().join("server.log"),
            dir,
            store,
            config: config.to_owned(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env,
            log_filter: filter.to_owned(),
            child: None,
            api: String::new(),
            gateway: String::new(),
            token: String::new(),
        };
        server.restart().await;
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn tenant_dir(&self, name: &str) -> PathBuf {
        self.data_dir().join("tenants").join(name)
    }

    pub fn postgres_db(&self) -> &TestDatabase {
        match &self.store {
            Store::Postgres(db) => db,
            Store::Embedded => panic!("not a PostgreSQL test server"),
        }
    }

    fn config_file(&self) -> PathBuf {
        let mut config = self.config.clone();
        if let Store::Postgres(db) = &self.store
            && !config.contains("[[regions]]")
        {
            config.push_str(&format!(
                "\n[[regions]]\nname = \"local\"\ndatabases = \"{}\"\ndatabase_prefix = \"{}\"\n",
                bulkhead_testkit::postgres_admin_url(),
                db.object_prefix
            ));
        }
        let path = self.dir.path().join("bulkhead.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    /// Starts (or starts again) the server and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let api_url = self.data_dir().join("api.url");
        let _ = std::fs::remove_file(&api_url);
        let mut command = command();
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--api-listen")
            .arg("127.0.0.1:0")
            .arg("--gateway-listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(self.config_file())
            .args(&self.extra_args)
            .env("BULKHEAD_LOG", &self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::options().create(true).append(true).open(&self.log).unwrap());
        if let Store::Postgres(db) = &self.store {
            command.arg("--store").arg(&db.url);
        }
        self.child = Some(command.spawn().unwrap());

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited with {status}:\n{}", self.log());
            }
            if let Ok(url) = std::fs::read_to_string(&api_url) {
                let url = url.trim().to_owned();
                if let Ok(response) = reqwest::get(format!("{url}/readyz")).await
                    && response.status() == 200
                {
                    self.api = url;
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = std::fs::read_to_string(self.data_dir().join("operator.token")).unwrap();
        self.token = token.trim().to_owned();
        let (_, status) = self.http().get("/v1/status").await;
        self.gateway = status["gateway_url"].as_str().unwrap_or_default().to_owned();
    }

    /// `kill -9`: no shutdown, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        child.wait().unwrap()
    }

    /// Waits for the server to exit by itself.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("server running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "server still running:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this server, finding it through the data
    /// directory as a user on the same machine would.
    pub fn cli(&self, args: &[&str]) -> Output {
        command()
            .env("BULKHEAD_DATA_DIR", self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI with `credential` as its token (`--token`).
    pub fn cli_with_token(&self, credential: &str, args: &[&str]) -> Output {
        command()
            .env("BULKHEAD_DATA_DIR", self.data_dir())
            .arg("--token")
            .arg(credential)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI with `-o json` and parses what it printed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Runs the CLI with `input` on its standard input.
    pub fn cli_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = command()
            .env("BULKHEAD_DATA_DIR", self.data_dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Every event of these tenants' audit streams and of the platform's,
    /// read with `bulkhead audit tail`.
    pub fn audit_events(&self, tenants: &[&str]) -> Vec<Value> {
        let mut streams: Vec<Vec<&str>> =
            tenants.iter().map(|t| vec!["audit", "tail", "--tenant", t]).collect();
        streams.push(vec!["audit", "tail", "--platform"]);
        let mut events = Vec::new();
        for mut args in streams {
            args.extend(["--lines", "10000"]);
            let listed = self.cli_json(&args);
            let listed = listed.as_array().unwrap_or_else(|| panic!("not a list: {listed}"));
            events.extend(listed.iter().cloned());
        }
        events
    }

    /// The server's control store, opened beside it (SQLite allows readers
    /// while the server writes).
    pub async fn open_store(&self) -> std::sync::Arc<dyn bulkhead_store::ControlStore> {
        let location = match &self.store {
            Store::Embedded => {
                bulkhead_store::StoreLocation::Sqlite(self.data_dir().join("bulkhead.db"))
            }
            Store::Postgres(db) => bulkhead_store::StoreLocation::Postgres(
                bulkhead_model::DatabaseUrl::parse(&db.url).unwrap(),
            ),
        };
        bulkhead_store::open(&location).await.unwrap()
    }

    pub fn http(&self) -> Http {
        Http {
            client: reqwest::Client::new(),
            api: self.api.clone(),
            token: Some(self.token.clone()),
        }
    }

    /// Waits until the tenant is active, failed with its steps undone, or
    /// gone, and returns what it became (`None` when purged).
    pub async fn settle(&self, name: &str) -> Option<Value> {
        let http = self.http();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = http.get(&format!("/v1/tenants/{name}")).await;
            if status == 404 {
                return None;
            }
            let settled = match body["state"].as_str().unwrap() {
                "active" | "suspended" | "deleted" => true,
                "failed" => body["failure"]["undone"] == true,
                _ => false,
            };
            if settled {
                return Some(body);
            }
            assert!(Instant::now() < deadline, "{name} did not settle: {body}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Http {
    pub client: reqwest::Client,
    pub api: String,
    pub token: Option<String>,
}

impl Http {
    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.api));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create(&self, name: &str, plan: &str) -> (u16, Value) {
        self.post("/v1/tenants", serde_json::json!({ "name": name, "plan": plan })).await
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn exit_code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Creates `name` as a pool tenant and returns its view.
pub fn pool_tenant(server: &Server, name: &str) -> Value {
    server.cli_json(&[
        "tenants",
        "create",
        name,
        "--plan",
        "professional",
        "--isolation",
        "pool",
        "--wait",
    ])
}

/// The output a tenant view's step `name` recorded.
pub fn step_output<'a>(tenant: &'a Value, name: &str) -> &'a Value {
    let steps = tenant["steps"].as_array().expect("a tenant view with steps");
    &steps.iter().find(|s| s["name"] == name).expect("the step is listed")["output"]
}

/// Entries of a directory, sorted (empty if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// A connection to PostgreSQL, as a credential's URL says.
pub async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await
}

/// A superuser connection to database `name` of the test server.
pub async fn admin(name: &str) -> sqlx::PgConnection {
    connect(&bulkhead_testkit::database_url(name)).await.unwrap()
}

pub async fn role_exists(role: &str) -> bool {
    let mut admin = connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    let found: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
    found.is_some()
}

/// `bulkhead serve --role gateway`: a gateway on its own, following a
/// PostgreSQL store.
pub struct GatewayProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts one on `store` (a URL) with `config` as its `bulkhead.toml`,
    /// and waits until it serves.
    pub async fn start(store: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bulkhead.toml"), config).unwrap();
        let log = dir.path().join("gateway.log");
        let child = command()
            .args(["serve", "--role", "gateway", "--store", store])
            .args(["--gateway-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("bulkhead.toml"))
            .env("BULKHEAD_LOG", "info,bulkhead_control=debug,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut gateway = Self { child, url: String::new(), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gateway.child.try_wait().unwrap() {
                panic!("gateway exited with {status}:\n{}", gateway.log());
            }
            let text = gateway.log();
            if let Some(at) = text.find("gateway ready gateway=") {
                let rest = &text[at + "gateway ready gateway=".len()..];
                gateway.url = rest.split_whitespace().next().unwrap().to_owned();
                return gateway;
            }
            assert!(Instant::now() < deadline, "gateway did not start:\n{}", gateway.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` passes `metrics` (the exposition format and
/// Prometheus's naming rules). scripts/test.sh installs promtool.
pub async fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let metrics = metrics.to_owned();
    let checked = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect(
                "promtool is needed (Debian: the prometheus package; scripts/test.sh installs it)",
            );
        child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
