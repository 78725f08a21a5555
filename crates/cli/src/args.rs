//! The command line, as clap sees it.

use std::{convert::Infallible, fmt, path::PathBuf, str::FromStr};

use bulkhead_model::Isolation;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::env;

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Bulkhead: tenant isolation for SaaS, in one binary",
    long_about = "Bulkhead: tenant isolation for SaaS, in one binary.\n\n`bulkhead serve` runs the \
                  control plane; every other command talks to a running one. Client commands \
                  find the server and token from --api/--token, then BULKHEAD_API/BULKHEAD_TOKEN, \
                  then the local data directory.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The data directory: the server keeps its state there, client commands
    /// read the API address and operator token from it
    /// [default: ~/.local/share/bulkhead]
    #[arg(long, global = true, env = env::DATA_DIR, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// URL of the control API [default: from <data-dir>/api.url]
    #[arg(long, global = true, env = env::API, value_name = "URL")]
    pub api: Option<String>,
    /// The credential to call the API with: an operator token, or on a
    /// tenant's own commands a token of its realm (minted with
    /// --control-api) or one of its API keys [default: the operator token in
    /// <data-dir>/operator.token]
    #[arg(long, global = true, env = env::TOKEN, hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<Sensitive>,
    /// Output format of client commands
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The control plane and the gateway
    All,
    /// The gateway alone
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people
    Table,
    /// The API's JSON, for scripts
    Json,
    /// YAML manifests (`bulkhead get` only)
    Yaml,
    /// Comma-separated values with a header line (`bulkhead usage export`
    /// only)
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane
    Serve(ServeArgs),
    /// Where the running server is: its API and gateway URLs, its store and
    /// data directory, its tenants
    Status {
        /// Print only the API's URL, e.g. for `curl "$(bulkhead status
        /// --api-url)/realms/acme/jwks.json"`
        #[arg(long)]
        api_url: bool,
    },
    /// Create, inspect, suspend and delete tenants
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// The plans tenants can be created on
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Store and read tenants' secrets (encrypted under each tenant's key)
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Short-lived database credentials for tenants
    #[command(subcommand)]
    Creds(CredsCommand),
    /// Keys: tenants' data keys, their own keys, the master key, lockouts
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Tenants' realms: tokens and signing keys
    #[command(subcommand)]
    Auth(AuthCommand),
    /// API keys for tenants' services
    #[command(subcommand)]
    Apikeys(ApikeysCommand),
    /// Tenants' APIs: what the gateway routes, to which upstreams, under
    /// which policy
    #[command(subcommand)]
    Apis(ApisCommand),
    /// Tenants' tool registries: the MCP servers and HTTP tools their
    /// agents may call through their MCP endpoints
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Tenants' apps, run by the runtime as confined workers
    #[command(subcommand)]
    Apps(AppsCommand),
    /// A worker's standard output and error
    Logs(LogsArgs),
    /// A tenant's configuration and feature flags, read by its workers
    #[command(subcommand)]
    Flags(FlagsCommand),
    /// Move one app to a new version across tenants: canary first, then in
    /// batches, each tenant switched once its new workers are healthy
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// On a running server: two tenants, each running the sample app
    /// (keyring) confined and behind the gateway, and the curl lines that
    /// show each its own data and the other's token refused
    Demo {
        /// Remove what the demo made
        #[arg(long)]
        clean: bool,
    },
    /// A tenant's gateway usage per API and minute; `export`: a month's
    /// billing ledger
    Usage(UsageArgs),
    /// Tenants' audit streams: read, export, verify offline
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Tenants' encrypted backups: take, list, verify, delete, and the key
    /// they are encrypted to
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Report what the installation exposes: every API that answers
    /// without a credential (`auth: public`), by tenant; with `isolation`,
    /// check that no tenant can reach another (exits 1 on any finding)
    Verify {
        #[command(subcommand)]
        check: Option<VerifyCommand>,
    },
    /// Roll an application's SQL migrations (NNNN_name.sql) across tenant
    /// databases: each database in one transaction with its version
    /// recorded, canaries first, halting after failures; runs in the
    /// server as a job, which `migrate status` follows
    Migrate(MigrateArgs),
    /// Create or change what manifests declare (tenants first, then their
    /// APIs); prints created, changed or unchanged for each
    Apply(ApplyArgs),
    /// Show what `apply` would change; exits 1 when something would, 0
    /// when nothing would
    Diff(ManifestFiles),
    /// Delete what manifests declare (APIs first, then tenants)
    Delete(DeleteManifestArgs),
    /// Print a tenant or an API as a manifest that `apply` accepts (YAML,
    /// or JSON with -o json)
    #[command(subcommand)]
    Get(GetCommand),
}

/// Where manifests are read from.
#[derive(Debug, Args)]
pub struct ManifestFiles {
    /// A manifest file, or a directory (its *.yaml and *.yml files, in name
    /// order); `-` reads standard input (repeatable)
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR", required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: ManifestFiles,
    /// Give up waiting for a new tenant to be provisioned after this many
    /// seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct DeleteManifestArgs {
    #[command(flatten)]
    pub files: ManifestFiles,
    /// Do not ask before deleting tenants
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// A tenant: its plan, placement and limits
    Tenant {
        name: String,
        /// Its APIs too, each a document of its own after the tenant's
        #[arg(long)]
        apis: bool,
    },
    /// One API of a tenant
    Api {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// One app of a tenant
    App {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// A tenant's guardrails, or the one named
    #[command(alias = "guardrail")]
    Guardrails {
        #[arg(long)]
        tenant: String,
        name: Option<String>,
    },
    /// A tenant's tool registry, or the entry named
    #[command(alias = "tool")]
    Tools {
        #[arg(long)]
        tenant: String,
        name: Option<String>,
    },
}

/// The stream an audit command reads: a tenant's, or the platform's.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct StreamArg {
    /// The tenant whose stream to read
    #[arg(long)]
    pub tenant: Option<String>,
    /// The platform's stream (operators' actions)
    #[arg(long)]
    pub platform: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
    /// The directory of migration files: every NNNN_name.sql in it
    /// (other files are ignored), applied in the order of their numbers
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Only this tenant's database (repeatable); a pool tenant brings its
    /// region's pool database, which every pool tenant there shares
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// How many databases go first (a number, or a share such as 10%);
    /// the rest start only if every canary succeeded
    #[arg(long, default_value = "1", value_name = "N|N%")]
    pub canary: String,
    /// Databases migrated at once (1 to 64)
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub concurrency: u32,
    /// Start no new database once this many have failed
    #[arg(long, default_value_t = 1, value_name = "F")]
    pub halt_after: u32,
    /// Report what each database would take, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the job with a progress bar until it ends, print its report,
    /// and exit 1 unless it succeeded
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// A migration job's report (the latest job's without an id); exits 1
    /// when it failed or halted
    Status {
        /// The job's id, as `bulkhead migrate` printed it
        id: Option<String>,
        /// Follow a running job until it ends
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Check the live installation's isolation: the pool's row-level
    /// security, owners, policies and views; every tenant database closed
    /// to everyone else; no application role bypassing row-level
    /// security; no lease role left behind; and, as each tenant with a
    /// short-lived login, that other tenants' rows and databases stay out
    /// of reach. Prints each finding with its severity and the fix; exits
    /// 1 on any
    Isolation {
        /// Only this tenant (and its region's pool, if it is pooled)
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show the last events of a stream, and with --follow new ones as they come
    Tail {
        #[command(flatten)]
        stream: StreamArg,
        /// How many of the last events to show first
        #[arg(long, default_value_t = 20)]
        lines: u32,
        /// Keep printing new events until interrupted
        #[arg(long)]
        follow: bool,
    },
    /// Write a stream's export (JSON lines) to standard output
    Export {
        #[command(flatten)]
        stream: StreamArg,
        /// Only events from this time on: RFC 3339, or a duration back from now (24h, 7d)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Verify an export offline: the chain, every checkpoint's signature;
    /// names the first broken link. No server is needed
    Verify {
        /// The export file (`-` for standard input)
        file: PathBuf,
        /// Trust only this public key (base64url, as audit-keys.json lists
        /// it; repeatable). Without it, the keys in the file are used
        // base64url may begin with '-': without this, one key in 64 was
        // taken for a flag and the command failed as a usage error.
        #[arg(long = "key", value_name = "PUBLIC_KEY", allow_hyphen_values = true)]
        keys: Vec<String>,
        /// Trust only the keys listed in this audit-keys.json
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
        /// An earlier export of the same stream, kept since: prove that
        /// this one extends it (the history it covered was not rewritten
        /// or cut). Verified first, with the same keys
        #[arg(long, value_name = "EARLIER_EXPORT", conflicts_with = "checkpoint")]
        previous: Option<PathBuf>,
        /// As --previous, given only the earlier export's export checkpoint:
        /// its seq and 64-hex head
        #[arg(long, value_name = "SEQ:HEAD")]
        checkpoint: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Mint a token of a tenant's realm; prints the token
    Token {
        #[arg(long)]
        tenant: String,
        /// The token's subject (`sub`)
        #[arg(long)]
        subject: String,
        /// A role to grant: owner, admin, analyst or viewer (repeatable)
        #[arg(long = "role", value_name = "ROLE", value_parser = parse_role)]
        roles: Vec<bulkhead_identity::Role>,
        /// How long it is valid, e.g. 15m [default: 1h; at most 24h]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// An audience (`aud`) (repeatable)
        #[arg(long = "audience", value_name = "AUD")]
        audience: Vec<String>,
        /// Let the token call the control API (adds `<public-url>/v1` to `aud`)
        #[arg(long)]
        control_api: bool,
    },
    /// Refuse every token the realm has issued so far, and revoke every API
    /// key made with a token (other API keys are revoked one by one with
    /// `apikeys revoke`)
    RevokeTokens {
        #[arg(long)]
        tenant: String,
    },
    /// Rotate a realm's signing key; old tokens stay valid until they expire
    RotateKey {
        #[arg(long)]
        tenant: String,
        /// Switch the realm to EdDSA or ES256 (for clients without EdDSA)
        #[arg(long, value_name = "ALG")]
        algorithm: Option<String>,
    },
    /// A realm's signing keys
    Keys {
        #[arg(long)]
        tenant: String,
    },
    /// Trust an external identity provider (Keycloak, Okta, ...) for a
    /// tenant; its JWKS must hold EdDSA, ES256 or RS256 keys
    Trust {
        #[arg(long)]
        tenant: String,
        /// The provider's issuer, exactly as its tokens' `iss`
        #[arg(long)]
        issuer: String,
        /// Where the provider publishes its JWKS
        #[arg(long, value_name = "URL")]
        jwks_url: String,
        /// The audience the provider issues this tenant's tokens for (its
        /// client id or API identifier); tokens must carry it in `aud`
        #[arg(long)]
        audience: String,
        /// A provider role value and the Bulkhead role it grants, e.g.
        /// `data-team=analyst` (repeatable; other values grant nothing)
        #[arg(long = "role-map", value_name = "VALUE=ROLE", value_parser = parse_role_mapping, required = true)]
        role_map: Vec<(String, bulkhead_identity::Role)>,
        /// The claim holding the subject
        #[arg(long, default_value = "sub", value_name = "CLAIM")]
        subject_claim: String,
        /// The claim holding roles, dot-separated when nested
        #[arg(long, default_value = "roles", value_name = "CLAIM")]
        roles_claim: String,
    },
    /// Stop trusting the tenant's external identity provider
    Untrust {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeysCommand {
    /// Create an API key; prints it once
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// A role: owner, admin, analyst or viewer (repeatable)
        #[arg(long = "role", value_name = "ROLE", value_parser = parse_role, required = true)]
        roles: Vec<bulkhead_identity::Role>,
        /// How long the key lives, e.g. 30d [default: until revoked; a key
        /// made with a token lives at most as long as that token]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// List a tenant's API keys (never the keys themselves)
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke an API key
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Deploy an app (or a new version of it): its workers start, or
    /// restart with the new spec
    Deploy(Box<DeployAppArgs>),
    /// List a tenant's apps and their workers
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Show one app and its workers
    Get {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Start a stopped app
    Start {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Stop an app's workers (SIGTERM, then SIGKILL after 10 s); it stays deployed
    Stop {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Delete an app; its workers stop
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Keep an app on its version: rollouts skip it
    Pin {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Let rollouts move a pinned app again
    Unpin {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start moving every tenant's app NAME to a version
    Start(RolloutStartArgs),
    /// Show a rollout and each tenant's step, or list the latest rollouts
    Status {
        /// The rollout (as `rollout start` printed it); all when omitted
        id: Option<String>,
    },
    /// Start no new batch (tenants switching finish)
    Pause { id: String },
    /// Go on after a pause, or after a halt (allowing as many failures again)
    Resume { id: String },
    /// End the rollout: tenants not moved yet stay where they are
    Abort { id: String },
}

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct RolloutStartArgs {
    /// The app, by the name each tenant gave it
    #[arg(long)]
    pub app: String,
    /// The version to move to
    #[arg(long)]
    pub version: String,
    /// The new version's artifact directory (each tenant's stays when omitted)
    #[arg(long, value_name = "DIR")]
    pub artifact: Option<String>,
    /// Tenants moved first, on their own
    #[arg(long, default_value_t = 1)]
    pub canary: u32,
    /// Tenants per batch after the canary: a count (10) or a share (25%)
    #[arg(long, default_value = "25%", value_name = "N|N%")]
    pub batch: String,
    /// Waited between batches (30s, 5m)
    #[arg(long, value_name = "DURATION")]
    pub pause: Option<String>,
    /// Failed tenants at which the rollout halts
    #[arg(long, default_value_t = 1, value_name = "F")]
    pub max_unhealthy: u32,
}

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct DeployAppArgs {
    #[arg(long)]
    pub tenant: String,
    /// The app's name within the tenant
    #[arg(long)]
    pub name: String,
    /// The release this deploy runs (1.4.2, say)
    #[arg(long)]
    pub version: String,
    /// A directory on the server with the app's files, shown read-only at /app
    #[arg(long, value_name = "DIR")]
    pub artifact: Option<String>,
    /// Workers to run (1 to 16)
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// An environment variable, KEY=VALUE (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A secret of the tenant's vault delivered as /run/secrets/FILE:
    /// PATH or PATH=FILE (repeatable)
    #[arg(long, value_name = "PATH[=FILE]")]
    pub secret: Vec<String>,
    /// Health check: a path the worker answers 2xx on, over its socket
    #[arg(long, value_name = "PATH")]
    pub health: Option<String>,
    /// A host the workers may reach over HTTPS, host[:port] (repeatable)
    #[arg(long, value_name = "HOST")]
    pub egress: Vec<String>,
    /// Memory per worker, below the plan's
    #[arg(long)]
    pub memory_mib: Option<u32>,
    /// CPU per worker in thousandths of a core, below the plan's
    #[arg(long)]
    pub cpu_millicores: Option<u32>,
    /// Processes per worker, below the plan's
    #[arg(long)]
    pub max_processes: Option<u32>,
    /// The program (as seen inside the sandbox: /app/... or a system path)
    /// and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Set flags: the tenant's workers get the new file and a SIGHUP
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove flags
    Unset {
        #[arg(long)]
        tenant: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// List the tenant's flags
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub app: String,
    /// Which worker
    #[arg(long, default_value_t = 0)]
    pub worker: u32,
    /// From this time on: RFC 3339, or a duration back from now (10m, 2h)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many lines, the newest
    #[arg(long, default_value_t = 200)]
    pub tail: usize,
    /// Keep printing new lines as they come
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum ApisCommand {
    /// Create an API: a path prefix on the tenant's host and the upstreams
    /// behind it
    Create(Box<CreateApiArgs>),
    /// List a tenant's APIs
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Show one API
    Get {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Delete an API; the gateway stops routing to it at once
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Register a tool, or change the one of that name: an MCP server
    /// (--mcp) or an HTTP endpoint (--http)
    Add(Box<AddToolArgs>),
    /// List a tenant's tools
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Remove a tool; the tenant's agents stop seeing it at once
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct AddToolArgs {
    #[arg(long)]
    pub tenant: String,
    /// The entry's name within the tenant (a-z, 0-9, '-')
    pub name: String,
    /// An MCP server over streamable HTTP: http://host:port/mcp
    #[arg(long, value_name = "URL", required_unless_present = "http", conflicts_with = "http")]
    pub mcp: Option<String>,
    /// A plain HTTP endpoint, one tool: calls POST the arguments as JSON
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// Offer only this tool of the MCP server (repeatable); all by default
    #[arg(long = "tool", value_name = "NAME")]
    pub tools: Vec<String>,
    /// Callers need this role or a stronger one (repeatable); any caller
    /// of the tenant by default
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// The tenant's secret that authenticates the gateway to the upstream
    /// (sent as `Authorization: Bearer <value>`)
    #[arg(long, value_name = "PATH")]
    pub secret: Option<String>,
    /// Send the secret in this header, as it is, instead
    #[arg(long, value_name = "NAME", requires = "secret")]
    pub header: Option<String>,
    /// An HTTP tool's description, for the agents that list it
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CreateApiArgs {
    #[arg(long)]
    pub tenant: String,
    /// The API's name within the tenant
    pub name: String,
    /// The path it serves, e.g. /orders (matched on segment boundaries)
    #[arg(long)]
    pub prefix: String,
    /// http://host:port or unix:/path (repeatable: taken in turn); none
    /// for --type mcp
    #[arg(long = "upstream", value_name = "URL")]
    pub upstreams: Vec<String>,
    /// http (a proxy to the upstreams, the default), mcp (the tenant's
    /// MCP endpoint, serving its tools) or llm (a metered proxy to an
    /// OpenAI-compatible model provider)
    #[arg(long = "type", value_name = "TYPE")]
    pub api_type: Option<String>,
    /// For --type llm: a model its callers may use (repeatable)
    #[arg(long = "model", value_name = "MODEL")]
    pub models: Vec<String>,
    /// How to talk to the upstreams: http1 or h2c [default: http1]
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Option<String>,
    /// Remove the prefix before the request goes upstream
    #[arg(long)]
    pub strip_prefix: bool,
    /// An allowed method (repeatable) [default: all]
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Take requests without a credential (listed as public)
    #[arg(long)]
    pub public: bool,
    /// A role the caller needs, or a stronger one (repeatable)
    #[arg(long = "role", value_name = "ROLE", value_parser = parse_role)]
    pub roles: Vec<bulkhead_identity::Role>,
    /// The audience tokens must name [default: the tenant's application audience]
    #[arg(long)]
    pub audience: Option<String>,
    /// Requests a minute for this API, within the tenant's own limit
    #[arg(long, value_name = "N", requires = "burst")]
    pub rate_limit: Option<u32>,
    /// Requests that may come at once above that pace
    #[arg(long, value_name = "N", requires = "rate_limit")]
    pub burst: Option<u32>,
    /// Largest request body, in bytes [default: 10485760]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// What goes to the tenant's audit stream: off, denied or all [default: denied]
    #[arg(long, value_name = "LEVEL")]
    pub audit: Option<String>,
    /// Longest wait for a connection to an upstream, e.g. 2s
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Longest wait for the upstream's response headers, e.g. 30s
    #[arg(long, value_name = "DURATION")]
    pub response_timeout: Option<String>,
    /// Longest silence on a body once the response started, e.g. 60s
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store a new version of a secret. The value is read from standard
    /// input (or --file), never from the command line
    Put {
        #[arg(long)]
        tenant: String,
        /// Secret path, e.g. db/primary/password
        path: String,
        /// Read the value from this file instead of standard input
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print a secret's value, exactly as stored, to standard output
    #[command(disable_version_flag = true)]
    Get {
        #[arg(long)]
        tenant: String,
        path: String,
        /// A version to read instead of the latest
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// List a tenant's secrets: paths, versions and sizes, never values
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Delete every version of a secret
    Delete {
        #[arg(long)]
        tenant: String,
        path: String,
    },
    /// Re-encrypt every secret version under the tenant's latest data key
    Rewrap {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredsCommand {
    /// Issue a database login for a tenant; prints its URL and lease id
    Issue {
        #[arg(long)]
        tenant: String,
        /// How long it lives, e.g. 15m, 1h [default: 1h; at most the plan's
        /// maximum]
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// What it may do
        #[arg(long, value_enum, default_value_t = AccessArg::Write)]
        access: AccessArg,
    },
    /// Revoke a lease now: end its sessions and drop its role
    Revoke {
        lease: String,
        /// The lease's tenant; needed when acting with that tenant's own
        /// token or API key
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List a tenant's leases
    List {
        #[arg(long)]
        tenant: String,
        /// Include revoked and expired leases
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessArg {
    /// Everything the tenant's owner role can do
    Write,
    /// SELECT on the tenant's tables
    Read,
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Show a tenant's data key versions and what wraps them
    Keys {
        #[arg(long)]
        tenant: String,
    },
    /// Give a tenant a new data key version for new writes
    RotateKey {
        #[arg(long)]
        tenant: String,
        /// Also re-encrypt existing secrets under it
        #[arg(long)]
        rewrap: bool,
    },
    /// Supply a tenant's own key (bring-your-own-key): the first time, its
    /// data keys move to it; after a restart, it is loaded again
    TenantKey {
        #[arg(long)]
        tenant: String,
        /// File holding the key: 32 random bytes in base64, as `openssl rand
        /// -base64 32` prints them
        #[arg(long, value_name = "FILE", required_unless_present = "forget")]
        key_file: Option<PathBuf>,
        /// Forget the loaded key instead: the tenant's secrets are
        /// unreadable until it is supplied again
        #[arg(long, conflicts_with = "key_file")]
        forget: bool,
    },
    /// Re-wrap every data key under a new master key
    RotateMaster,
    /// Principals refused by anomaly detection
    Lockouts,
    /// Clear a principal's lockout (through the API, by another operator;
    /// or --offline, straight in the control store)
    Unlock {
        /// As listed by `bulkhead vault lockouts`, e.g. operator:initial
        principal: String,
        /// Open the control store directly instead of asking the API: for
        /// clearing your own lockout, which the API refuses
        #[arg(long)]
        offline: bool,
        /// With --offline: the control store [default: SQLite at
        /// <data-dir>/bulkhead.db]
        #[arg(long, env = env::STORE, hide_env_values = true, value_name = "URL")]
        store: Option<Sensitive>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What this process runs: `all` (the control plane and the gateway),
    /// or `gateway` alone, following a PostgreSQL store a control plane
    /// uses (more gateway replicas, another machine)
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Configuration file [default: ./bulkhead.toml when it exists]
    #[arg(long, env = env::CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control-plane store: postgres://user@host/db, or sqlite://path
    /// [default: SQLite at <data-dir>/bulkhead.db]
    #[arg(long, env = env::STORE, hide_env_values = true, value_name = "URL")]
    pub store: Option<Sensitive>,
    /// Address of the control API [default: 127.0.0.1:7070]
    #[arg(long, env = env::API_LISTEN, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Address the gateway takes tenants' traffic on; loopback unless you
    /// expose it (0.0.0.0:8080) [default: 127.0.0.1:8080]
    #[arg(long, env = env::GATEWAY_LISTEN, value_name = "ADDR")]
    pub gateway_listen: Option<String>,
    /// Domain that tenants' subdomains hang under [default: localhost]
    #[arg(long, env = env::BASE_DOMAIN, value_name = "DOMAIN")]
    pub base_domain: Option<String>,
    /// Redis that every gateway replica shares rate limits through
    /// (redis://[:password@]host:port/db) [default: limits in this process]
    #[arg(long, env = env::REDIS, hide_env_values = true, value_name = "URL")]
    pub redis: Option<Sensitive>,
    /// How clients reach this server; realms' issuers are
    /// <URL>/realms/<tenant> [default: the API's own address]
    #[arg(long, env = env::PUBLIC_URL, value_name = "URL")]
    pub public_url: Option<String>,
    /// A host whose JWKS an external identity provider trust may fetch
    /// over plain http or at a private address, e.g. an in-cluster
    /// Keycloak (repeatable) [default: none; https to public addresses only]
    #[arg(long = "insecure-jwks-host", env = env::INSECURE_JWKS_HOSTS, value_delimiter = ',', value_name = "HOST")]
    pub insecure_jwks_hosts: Vec<String>,
    /// Log format [default: text]
    #[arg(long, env = env::LOG_FORMAT, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Master key file (mode 0600). The key itself can instead be given in
    /// BULKHEAD_MASTER_KEY [default: <data-dir>/master.key, generated on
    /// first start]
    #[arg(long, env = env::MASTER_KEY_FILE, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and start provisioning it
    Create(CreateArgs),
    /// List tenants (every state but deleted, unless --state says otherwise)
    List {
        /// Only tenants in this state
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// At most this many tenants
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Show a tenant and its provisioning steps
    Get { name: String },
    /// Change a tenant's plan or its gateway limits (its isolation and region
    /// cannot change)
    Update(UpdateArgs),
    /// Suspend an active tenant
    Suspend { name: String },
    /// Resume a suspended tenant
    Resume { name: String },
    /// Offboard a tenant: take its final encrypted snapshot, then stop its
    /// apps, drop its databases and roles, destroy its keys and free its
    /// name; with --purge nothing is kept
    Delete(DeleteArgs),
    /// Bring a deleted tenant back from its final snapshot, as a new tenant
    Restore(TenantRestoreArgs),
    /// Check a deleted tenant's final snapshot without restoring it: decrypt
    /// it and check every part against the manifest recorded when it was
    /// taken
    VerifyFinal(DepartedArgs),
}

#[derive(Debug, Args)]
pub struct TenantRestoreArgs {
    #[command(flatten)]
    pub departed: DepartedArgs,
    /// From the final snapshot its deletion kept
    #[arg(long, required = true)]
    pub from_final: bool,
    /// Bring it back under this name instead (its own is taken)
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
}

/// A deleted tenant whose final snapshot is kept.
#[derive(Debug, Args)]
pub struct DepartedArgs {
    /// The deleted tenant (`bulkhead tenants list --state deleted` lists them)
    pub name: String,
    /// Which deleted tenant of the name, by id (`tenants list --state
    /// deleted -o json` shows them) [default: the latest]
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The age identity that opens the snapshot, for a tenant that kept its
    /// own key (an `age-keygen` file)
    #[arg(long, value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Tenant name: a DNS label of 3 to 40 characters of a-z, 0-9 and '-'
    pub name: String,
    /// Plan (see `bulkhead plans list`)
    #[arg(long)]
    pub plan: String,
    /// Override the plan's default isolation: silo (a database of its own)
    /// or pool (the region's shared database; PostgreSQL regions only)
    #[arg(long, value_parser = parse_isolation, value_name = "silo|pool")]
    pub isolation: Option<Isolation>,
    /// Region [default: the first configured region]
    #[arg(long)]
    pub region: Option<String>,
    /// Address of the tenant's first administrator
    #[arg(long, value_name = "EMAIL")]
    pub admin_email: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub name: String,
    /// The new plan (see `bulkhead plans list`); the tenant keeps its
    /// isolation
    #[arg(long)]
    pub plan: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Drop the tenant's limit overrides first: its plan's limits apply
    /// again, but for what the other limit flags say
    #[arg(long)]
    pub reset_limits: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct UsageArgs {
    #[command(subcommand)]
    pub command: Option<UsageCommand>,
    #[arg(long, required = true)]
    pub tenant: Option<String>,
    /// Only this API
    #[arg(long)]
    pub api: Option<String>,
    /// From this time on: RFC 3339, or a duration back from now (24h, 7d)
    /// [default: 1h]
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// One month's billing ledger: a line per tenant, API, model or tool,
    /// and day, with requests, tokens and cost (`-o csv` for a file)
    Export {
        /// The month, YYYY-MM (UTC)
        #[arg(long, value_name = "YYYY-MM")]
        period: String,
        /// Only this tenant; every tenant (operators) unless given
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// A tenant's own gateway limits, each in place of its plan's.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Requests a minute for the whole tenant at the gateway
    #[arg(long, value_name = "N", requires = "burst")]
    pub rate_limit: Option<u32>,
    /// Requests that may come at once above that pace
    #[arg(long, value_name = "N", requires = "rate_limit")]
    pub burst: Option<u32>,
    /// Requests of the tenant in flight at once
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Connections the tenant's upstreams may hold at once
    #[arg(long, value_name = "N")]
    pub max_upstream_connections: Option<u32>,
    /// What the tenant's shared rate limit does while Redis is unreachable:
    /// local or deny
    #[arg(long, value_name = "local|deny", value_parser = <bulkhead_model::LimiterFallback as FromStr>::from_str)]
    pub limiter_fallback: Option<bulkhead_model::LimiterFallback>,
    /// The tenant's monthly model spend caps, soft/hard, in whole units of
    /// the prices' currency: `50/100` warns past 50 and stops at 100
    #[arg(long, value_name = "SOFT/HARD", value_parser = parse_cost_caps)]
    pub cost_caps: Option<bulkhead_model::CostCaps>,
    /// The tenant's own backup schedule, within its plan's: hours between
    /// scheduled backups (0: none), how many are kept, and for how many
    /// days: `24/30/365`
    #[arg(long, value_name = "HOURS/KEEP/DAYS", value_parser = parse_backups)]
    pub backups: Option<bulkhead_model::BackupPolicy>,
}

fn parse_backups(value: &str) -> Result<bulkhead_model::BackupPolicy, String> {
    let usage = || format!("{value:?} is not HOURS/KEEP/DAYS, such as 24/30/365");
    let mut fields = value.split('/').map(|f| f.trim().parse::<u32>().map_err(|_| usage()));
    let (Some(every_hours), Some(keep), Some(retention_days), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(usage());
    };
    Ok(bulkhead_model::BackupPolicy {
        every_hours: every_hours?,
        keep: keep?,
        retention_days: retention_days?,
    })
}

fn parse_cost_caps(value: &str) -> Result<bulkhead_model::CostCaps, String> {
    let usage = || format!("{value:?} is not SOFT/HARD in whole units, such as 50/100");
    let (soft, hard) = value.split_once('/').ok_or_else(usage)?;
    let caps = bulkhead_model::CostCaps {
        soft_usd: soft.trim().parse().map_err(|_| usage())?,
        hard_usd: hard.trim().parse().map_err(|_| usage())?,
    };
    caps.validate()?;
    Ok(caps)
}

impl LimitArgs {
    /// Whether any limit flag was given.
    pub fn any(&self) -> bool {
        self.rate_limit.is_some()
            || self.max_in_flight.is_some()
            || self.max_upstream_connections.is_some()
            || self.limiter_fallback.is_some()
            || self.cost_caps.is_some()
            || self.backups.is_some()
    }

    /// `limits` with what the flags say in place.
    pub fn over(&self, mut limits: bulkhead_model::TenantLimits) -> bulkhead_model::TenantLimits {
        if let (Some(requests_per_minute), Some(burst)) = (self.rate_limit, self.burst) {
            limits.rate_limit = Some(bulkhead_model::Rate { requests_per_minute, burst });
        }
        limits.max_in_flight = self.max_in_flight.or(limits.max_in_flight);
        limits.max_upstream_connections =
            self.max_upstream_connections.or(limits.max_upstream_connections);
        limits.limiter_fallback = self.limiter_fallback.or(limits.limiter_fallback);
        limits.cost_caps = self.cost_caps.clone().or(limits.cost_caps);
        limits.backups = self.backups.clone().or(limits.backups);
        limits
    }
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub name: String,
    /// Keep nothing: its backups and final snapshot go too (also destroys
    /// the final snapshot of a tenant deleted earlier)
    #[arg(long)]
    pub purge: bool,
    /// With --purge: the deleted tenant of this id, even while a new tenant
    /// has the name
    #[arg(long, value_name = "ID", requires = "purge")]
    pub departed: Option<String>,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Show progress and return when the tenant has settled
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS", requires = "wait")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// List the plans and their limits
    List,
}

/// A flag value that must never appear in `Debug` output: a token, or a URL
/// that may carry a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Sensitive {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Sensitive {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains("://") {
            f.write_str(&bulkhead_model::redact_url(&self.0))
        } else {
            f.write_str("***")
        }
    }
}

fn parse_role(value: &str) -> Result<bulkhead_identity::Role, String> {
    bulkhead_identity::Role::parse(value)
        .ok_or_else(|| format!("{value:?} is not a role; use owner, admin, analyst or viewer"))
}

fn parse_role_mapping(value: &str) -> Result<(String, bulkhead_identity::Role), String> {
    let (provider, role) = value
        .rsplit_once('=')
        .filter(|(provider, _)| !provider.is_empty())
        .ok_or_else(|| format!("{value:?} is not VALUE=ROLE, e.g. data-team=analyst"))?;
    Ok((provider.to_owned(), parse_role(role)?))
}

fn parse_isolation(value: &str) -> Result<Isolation, String> {
    value.parse().map_err(|e: bulkhead_model::UnknownIsolation| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_public_key_that_begins_with_a_dash_is_a_value() {
        let cli =
            Cli::try_parse_from(["bulkhead", "audit", "verify", "x.jsonl", "--key", "-abc_d"]);
        let Ok(Cli { command: Command::Audit(AuditCommand::Verify { keys, .. }), .. }) = cli else {
            panic!("parsed as {cli:?}");
        };
        assert_eq!(keys, ["-abc_d"]);
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Take a backup of the tenant now; prints it once it is stored
    Create {
        #[arg(long)]
        tenant: String,
    },
    /// The tenant's backups, oldest first
    List {
        #[arg(long)]
        tenant: String,
    },
    /// One backup: its parts, sizes and hashes
    Get {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Decrypt a backup and check every part against its manifest, restoring
    /// nothing
    Verify {
        #[arg(long)]
        tenant: String,
        id: String,
        /// The age identity to decrypt with, for a tenant whose backups are
        /// encrypted to its own key
        #[arg(long, value_name = "FILE")]
        identity_file: Option<PathBuf>,
    },
    /// Delete one backup
    Delete {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Restore a backup: into the tenant it was taken of (suspended for the
    /// duration; asks first), into a new tenant with --to, or an archive
    /// from anywhere with --from
    Restore(RestoreArgs),
    /// The key the tenant's backups are encrypted to
    #[command(subcommand)]
    Key(BackupKeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum BackupKeyCommand {
    /// Print the age recipient the tenant's backups are encrypted to
    Show {
        #[arg(long)]
        tenant: String,
    },
    /// Encrypt the tenant's later backups to its own age recipient
    /// (bring-your-own-key: Bulkhead can write them, not read them), or with
    /// --vault back to the key the vault holds
    Set {
        #[arg(long)]
        tenant: String,
        /// `age1...` (`age-keygen -y KEYFILE` prints it)
        #[arg(long, required_unless_present = "vault", conflicts_with = "vault")]
        recipient: Option<String>,
        #[arg(long)]
        vault: bool,
    },
    /// Write the identity that opens the tenant's backups to a new file
    /// (mode 0600), for `age --decrypt --identity FILE` or another
    /// installation. Recorded in the tenant's audit stream
    Export {
        #[arg(long)]
        tenant: String,
        /// Where to write it; it must not exist
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["tenant", "from"]))]
pub struct RestoreArgs {
    /// The tenant whose backup ID to restore
    #[arg(long, requires = "id")]
    pub tenant: Option<String>,
    /// The backup (see `bulkhead backups list`)
    #[arg(requires = "tenant")]
    pub id: Option<String>,
    /// An archive file, or an https:// URL of one (a presigned S3 URL, say),
    /// made by any Bulkhead installation; restored into a new tenant
    #[arg(long, value_name = "FILE|URL", requires = "identity_file", conflicts_with_all = ["force", "yes"])]
    pub from: Option<String>,
    /// Restore into a new tenant of this name instead
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
    /// The age identity that opens the archive (an `age-keygen` file)
    #[arg(long, value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// Restore over data newer than the backup
    #[arg(long)]
    pub force: bool,
    /// Do not ask before restoring over the tenant's data
    #[arg(long)]
    pub yes: bool,
}
