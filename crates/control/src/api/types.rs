//! What goes over the wire: request bodies and response documents of the
//! control API. The CLI deserialises the same types.

use std::collections::HashMap;

use bulkhead_model::{
    BaseDomain, Isolation, Plan, RegionSummary, StepRecord, StepStatus, Tenant, TenantLimits,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// A DNS label: 3 to 40 characters of a-z, 0-9 and '-'.
    #[schema(example = "acme")]
    pub name: String,
    #[schema(example = "professional")]
    pub plan: String,
    /// Overrides the plan's default isolation.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// Defaults to the first configured region.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub admin_email: Option<String>,
    /// The tenant's own gateway limits, in place of its plan's; each field
    /// left out is the plan's.
    #[serde(default, skip_serializing_if = "TenantLimits::is_empty")]
    pub limits: TenantLimits,
}

/// A change to an existing tenant: its plan, its limits, or both; a field
/// left out stays as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct UpdateTenantRequest {
    /// The new plan. The tenant keeps its isolation, whatever the plan's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "enterprise")]
    pub plan: Option<String>,
    /// Replaces the tenant's limits as a whole: a field left out of it is
    /// the plan's, and `{}` removes every override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TenantLimits>,
    /// Cannot change for an existing tenant: if given, it must be the
    /// tenant's own (a manifest may repeat it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Cannot change for an existing tenant: if given, it must be the
    /// tenant's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

bulkhead_model::from_a_mapping_only!(UpdateTenantRequest);

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListTenantsParams {
    /// At most this many tenants (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1_000)]
    pub limit: Option<u32>,
    /// Only tenants whose name sorts after this one: pass the previous
    /// page's `next_after`.
    pub after: Option<String>,
    /// Only tenants in this state. Without it every state but `deleted` is
    /// listed.
    pub state: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenantParams {
    /// Keep nothing: no final snapshot, every backup deleted. On a deleted
    /// tenant, destroys its final snapshot.
    #[serde(default)]
    pub purge: bool,
    /// With `purge`: the deleted tenant of this id (of the name in the
    /// path), even while a live tenant has the name.
    #[serde(default)]
    pub departed: Option<uuid::Uuid>,
}

/// Where a provisioning step stands for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Applied,
    Undone,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// A tenant as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    #[serde(flatten)]
    pub tenant: Tenant,
    /// The tenant's hostname under the base domain.
    pub domain: String,
    /// Every provisioning step in order (single-tenant reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
    /// A deleted tenant's departure: what is kept of it, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub departure: Option<DepartureView>,
}

/// What is kept of a deleted tenant once everything else of it is
/// destroyed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DepartureView {
    #[serde(with = "time::serde::rfc3339")]
    pub departed_at: OffsetDateTime,
    /// When the final snapshot and its key are destroyed.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The final snapshot's id; none for a tenant that never became active.
    pub final_snapshot: Option<String>,
    /// The snapshot is encrypted to the tenant's own key: bringing it back
    /// needs that key's identity.
    pub own_key: bool,
}

impl TenantView {
    pub fn new(tenant: Tenant, base_domain: &BaseDomain) -> Self {
        Self { domain: base_domain.tenant_host(&tenant.name), tenant, steps: None, departure: None }
    }

    /// A departed tenant as it was when it left; `None` if its record does
    /// not read as a tenant.
    pub fn departed(departed: &bulkhead_store::Departed, base_domain: &BaseDomain) -> Option<Self> {
        let tenant: Tenant = serde_json::from_str(&departed.record).ok()?;
        let mut view = Self::new(tenant, base_domain);
        view.departure = Some(DepartureView {
            departed_at: departed.departed_at,
            expires_at: departed.expires_at,
            final_snapshot: departed.backup_id.clone(),
            own_key: departed.backup_id.is_some() && departed.kek_id.is_none(),
        });
        Some(view)
    }

    /// With the progress of each of `step_names`, in order.
    pub fn with_steps(mut self, step_names: &[&str], records: &[StepRecord]) -> Self {
        let steps = step_names
            .iter()
            .map(|name| match records.iter().find(|r| r.step == *name) {
                Some(record) => StepView {
                    name: (*name).to_owned(),
                    state: match record.status {
                        StepStatus::Applied => StepState::Applied,
                        StepStatus::Undone => StepState::Undone,
                    },
                    output: record.output.clone(),
                    updated_at: Some(record.updated_at),
                },
                None => StepView {
                    name: (*name).to_owned(),
                    state: StepState::Pending,
                    output: None,
                    updated_at: None,
                },
            })
            .collect();
        self.steps = Some(steps);
        self
    }

    /// What a tenant's own credential may see of its tenant: its state and
    /// steps, not what the server recorded for operators (step outputs name
    /// the server's directories and database objects; errors may quote the
    /// server's internals).
    pub fn for_tenant(mut self) -> Self {
        for step in self.steps.iter_mut().flatten() {
            step.output = None;
        }
        self.tenant.last_error = None;
        if let Some(failure) = self.tenant.failure.as_mut() {
            failure.reason = "provisioning failed; an operator can see why".into();
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegionList {
    pub regions: Vec<RegionSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: String,
}

/// Every error the API returns has this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `tenant_not_found`.
    pub code: String,
    /// For people: what went wrong and how to fix it.
    pub message: String,
}

// ---- vault -----------------------------------------------------------------

/// A secret version as written: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretWritten {
    pub path: String,
    pub version: i64,
    /// Size of the value, in bytes.
    pub size: i64,
    /// The tenant's data key version it is encrypted under.
    pub key_version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<bulkhead_store::SecretVersion> for SecretWritten {
    fn from(s: bulkhead_store::SecretVersion) -> Self {
        Self {
            path: s.path,
            version: s.version,
            size: s.size,
            key_version: s.key_version,
            created_at: s.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretSummaryView {
    pub path: String,
    pub latest_version: i64,
    /// Versions kept.
    pub versions: i64,
    /// Size of the latest version, in bytes.
    pub size: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<bulkhead_store::SecretSummary> for SecretSummaryView {
    fn from(s: bulkhead_store::SecretSummary) -> Self {
        Self {
            path: s.path,
            latest_version: s.latest_version,
            versions: s.versions,
            size: s.size,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretSummaryView>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SecretParams {
    /// A version to read instead of the latest.
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DataKeyView {
    pub version: i64,
    /// `master:…` or, for a tenant that brought its own key, `tenant:…`.
    pub wrapped_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyStatusView {
    pub tenant: String,
    pub data_keys: Vec<DataKeyView>,
    /// Whether the tenant's data keys are wrapped by its own key.
    pub tenant_key: bool,
    /// Whether this server can open them now (false while a tenant's own
    /// key has not been supplied since the last start).
    pub unsealed: bool,
}

impl KeyStatusView {
    pub fn new(tenant: &Tenant, status: bulkhead_vault::KeyStatus) -> Self {
        Self {
            tenant: tenant.name.to_string(),
            data_keys: status
                .versions
                .into_iter()
                .map(|(version, wrapped_by, created_at)| DataKeyView {
                    version,
                    wrapped_by,
                    created_at,
                })
                .collect(),
            tenant_key: status.tenant_key,
            unsealed: status.unsealed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotateKeyView {
    /// The new data key version.
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RewrapView {
    /// Secret versions re-encrypted under the latest data key.
    pub reencrypted: usize,
}

/// A key as text: 32 random bytes in base64 (`openssl rand -base64 32`).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantKeyRequest {
    #[serde(serialize_with = "expose", deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    pub key: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for TenantKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeyRequest").finish_non_exhaustive()
    }
}

fn expose<S: serde::Serializer>(
    value: &zeroize::Zeroizing<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value)
}

fn zeroizing<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<zeroize::Zeroizing<String>, D::Error> {
    String::deserialize(deserializer).map(zeroize::Zeroizing::new)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantKeyView {
    /// True when this call moved the tenant to its own key.
    pub adopted: bool,
    /// Secret versions re-encrypted under the tenant's new data key.
    pub reencrypted: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MasterRotationView {
    pub from: String,
    pub to: String,
    /// Data keys re-wrapped by the new master key.
    pub rewrapped: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueCredentialRequest {
    /// `write` (default: what the tenant's owner role can do) or `read`.
    #[serde(default)]
    pub access: Option<crate::credentials::Access>,
    /// How long the login lives, e.g. `15m`, `1h` (default 1h, at most the
    /// plan's maximum).
    #[serde(default)]
    #[schema(example = "1h")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    pub id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    pub role: String,
    pub database: String,
    pub access: String,
    pub issued_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Set while the lease's role cannot log in because its tenant is
    /// suspended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    /// Failed attempts at dropping the role of a lease being revoked; the
    /// role cannot log in meanwhile, and the sweeper retries with backoff.
    pub revoke_attempts: i32,
    /// Why the last attempt failed; shown to operators only, since it may
    /// name another tenant's database.
    pub revoke_error: Option<String>,
}

impl LeaseView {
    /// The view a caller may see: a tenant's own credentials do not see
    /// the reason a revocation failed.
    pub fn for_operator(lease: bulkhead_store::Lease, operator: bool) -> Self {
        let mut view = Self::from(lease);
        if !operator {
            view.revoke_error = None;
        }
        view
    }
}

impl From<bulkhead_store::Lease> for LeaseView {
    fn from(l: bulkhead_store::Lease) -> Self {
        Self {
            id: l.id,
            tenant_id: l.tenant_id.0,
            role: l.role,
            database: l.database,
            access: l.access,
            issued_by: l.issued_by,
            issued_at: l.issued_at,
            expires_at: l.expires_at,
            revoked_at: l.revoked_at,
            disabled_at: l.disabled_at,
            revoke_attempts: l.attempts,
            revoke_error: l.last_error,
        }
    }
}

/// An issued credential: the only time its password is shown.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    pub lease: LeaseView,
    /// `postgres://<role>:<password>@<host>:<port>/<database>`.
    pub url: String,
}

impl std::fmt::Debug for CredentialView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialView").field("lease", &self.lease).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LeaseListParams {
    /// Include revoked and expired leases.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseList {
    pub leases: Vec<LeaseView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockoutView {
    pub principal: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub locked_at: OffsetDateTime,
}

impl From<bulkhead_store::Lockout> for LockoutView {
    fn from(l: bulkhead_store::Lockout) -> Self {
        Self { principal: l.principal, reason: l.reason, locked_at: l.locked_at }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LockoutList {
    pub lockouts: Vec<LockoutView>,
}

// ---- identity --------------------------------------------------------------

/// A JSON Web Key Set (RFC 7517 §5).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueTokenRequest {
    /// The token's `sub`.
    pub subject: String,
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["admin"]))]
    pub roles: Vec<bulkhead_identity::Role>,
    /// e.g. `15m`, `1h` (default 1h, at most 24h).
    #[serde(default)]
    pub ttl: Option<String>,
    /// The token's `aud`.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Adds the control API's audience (`<public-url>/v1`): only tokens
    /// that name it can call the control API.
    #[serde(default)]
    pub control_api: bool,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub token: String,
    pub token_type: String,
    pub kid: String,
    /// Unix time.
    pub expires_at: i64,
    pub claims: serde_json::Value,
}

impl std::fmt::Debug for TokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenView").field("kid", &self.kid).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RotateRealmKeyParams {
    /// `EdDSA` or `ES256`: switch the realm to it (for clients without
    /// EdDSA). Without it the realm keeps its algorithm.
    pub algorithm: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevokedTokensView {
    /// Tokens issued at or before this time are refused.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// API keys made with a token (or with such a key) until then, now
    /// revoked too.
    pub api_keys_revoked: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotateRealmKeyView {
    /// The key that signs from now on.
    pub kid: String,
    /// Keys retired by this rotation (published until their tokens expire).
    pub retired: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RealmKeyView {
    pub kid: String,
    pub algorithm: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retired_at: Option<OffsetDateTime>,
    /// When it leaves the JWKS.
    #[serde(with = "time::serde::rfc3339::option")]
    pub remove_after: Option<OffsetDateTime>,
}

impl From<bulkhead_store::RealmKeyRecord> for RealmKeyView {
    fn from(k: bulkhead_store::RealmKeyRecord) -> Self {
        Self {
            kid: k.kid,
            algorithm: k.algorithm,
            created_at: k.created_at,
            retired_at: k.retired_at,
            remove_after: k.remove_after,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RealmKeyList {
    pub keys: Vec<RealmKeyView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// Unique within the tenant: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'.
    pub name: String,
    #[schema(value_type = Vec<String>, example = json!(["viewer"]))]
    pub roles: Vec<bulkhead_identity::Role>,
    /// How long the key lives, e.g. `30d` (default: until revoked). A key
    /// made with a token lives at most as long as that token, and is
    /// revoked with the realm's tokens.
    #[serde(default)]
    #[schema(example = "30d")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: uuid::Uuid,
    pub name: String,
    /// The key's first characters, e.g. `bh_acme_3kX9`.
    pub prefix: String,
    pub roles: Vec<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// When the key stops working; `null`: when it is revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Made with a token (or a key made with one): `auth revoke-tokens`
    /// revokes it too.
    pub from_token: bool,
}

impl From<bulkhead_store::ApiKeyRecord> for ApiKeyView {
    fn from(k: bulkhead_store::ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            roles: k.roles.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect(),
            created_by: k.created_by,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
            expires_at: k.expires_at,
            from_token: k.from_token,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The key itself, shown this once.
    pub key: String,
    pub api_key: ApiKeyView,
}

impl std::fmt::Debug for ApiKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreated").field("api_key", &self.api_key).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustRequest {
    /// The provider's issuer, exactly as its tokens' `iss`.
    pub issuer: String,
    /// Where its JWKS is published.
    pub jwks_url: String,
    /// Tokens' `aud` must be or contain it: the client id or API
    /// identifier the provider issues this tenant's tokens for.
    pub audience: String,
    /// The provider's role values and the Bulkhead role each grants,
    /// e.g. `{"data-team": "analyst"}`; other values grant nothing.
    #[schema(value_type = HashMap<String, String>, example = json!({"data-team": "analyst"}))]
    pub role_map: HashMap<String, bulkhead_identity::Role>,
    /// The claim holding the subject (default `sub`).
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// The claim holding roles, dot-separated when nested, e.g.
    /// `realm_access.roles` (default `roles`).
    #[serde(default)]
    pub roles_claim: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrustView {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub subject_claim: String,
    pub roles_claim: String,
    #[schema(value_type = HashMap<String, String>)]
    pub role_map: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<bulkhead_store::TrustRecord> for TrustView {
    fn from(t: bulkhead_store::TrustRecord) -> Self {
        Self {
            issuer: t.issuer,
            jwks_url: t.jwks_url,
            audience: t.audience,
            subject_claim: t.subject_claim,
            roles_claim: t.roles_claim,
            role_map: serde_json::from_str(&t.role_map).unwrap_or_default(),
            updated_at: t.updated_at,
        }
    }
}

/// What `bulkhead status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerStatus {
    pub version: String,
    /// Where clients reach the control API (the public URL when one is
    /// configured).
    pub api_url: String,
    /// Where the gateway listens; `null` while this version serves none.
    pub gateway_url: Option<String>,
    /// The control store, without its password.
    pub store: String,
    pub data_dir: String,
    /// Tenants are served at `<tenant>.<base_domain>`.
    pub base_domain: String,
    /// Tenants by lifecycle state.
    pub tenants: std::collections::BTreeMap<String, u64>,
}

/// A tenant's APIs, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiList {
    pub apis: Vec<bulkhead_model::ApiSpec>,
}

/// A tenant's guardrails, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GuardrailList {
    pub guardrails: Vec<bulkhead_model::GuardrailSpec>,
}

/// A guardrail as applied, and what applying it did: `created`,
/// `changed` or `unchanged`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GuardrailApplied {
    pub guardrail: bulkhead_model::GuardrailSpec,
    pub result: String,
}

/// A tenant's tool registry, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolList {
    pub tools: Vec<bulkhead_model::ToolSpec>,
}

/// A tool as registered, and what registering it did: `created`,
/// `changed` or `unchanged`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolApplied {
    pub tool: bulkhead_model::ToolSpec,
    pub result: String,
}

/// An API that answers without a credential, and its tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublicApi {
    pub tenant: String,
    pub api: bulkhead_model::ApiSpec,
}

/// Every public API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublicApiList {
    pub apis: Vec<PublicApi>,
}

/// What `bulkhead verify isolation` found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolationReportView {
    /// One line per check run, with what it covered.
    pub checked: Vec<String>,
    /// Worst first; none means every check passed.
    pub findings: Vec<IsolationFinding>,
}

/// One thing a check found wrong.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IsolationFinding {
    /// `critical` (another tenant's data is reachable, or can be made so),
    /// `high` (a boundary weaker than designed) or `warning`.
    #[schema(example = "critical")]
    pub severity: String,
    #[schema(example = "pool.rls")]
    pub check: String,
    /// The table, role, database or tenant it is about.
    pub subject: String,
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl From<crate::verify::IsolationReport> for IsolationReportView {
    fn from(report: crate::verify::IsolationReport) -> Self {
        Self {
            checked: report.checked,
            findings: report
                .findings
                .into_iter()
                .map(|f| IsolationFinding {
                    severity: f.severity.as_str().to_owned(),
                    check: f.check.to_owned(),
                    subject: f.subject,
                    problem: f.problem,
                    fix: f.fix,
                })
                .collect(),
        }
    }
}

/// An API as created or applied, and what the request did to it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiApplied {
    pub api: bulkhead_model::ApiSpec,
    /// `created`, `changed` or `unchanged`.
    pub result: String,
}

/// `POST /v1/migrations`: migration files to roll across tenant databases.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMigrationRequest {
    /// The files, in any order: each applied in the order of its number.
    pub files: Vec<MigrationFile>,
    /// Only these tenants (a pool tenant brings its region's pool
    /// database, shared by every pool tenant there); every active or
    /// suspended tenant when absent.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// How many databases go first, as canaries: a number, or a share
    /// such as `10%`; the rest start only if every canary succeeded.
    #[serde(default = "default_canary")]
    #[schema(example = "10%")]
    pub canary: String,
    /// Databases migrated at once (1 to 64).
    #[serde(default = "default_concurrency")]
    #[schema(minimum = 1, maximum = 64)]
    pub concurrency: u32,
    /// Start no new database after this many have failed.
    #[serde(default = "default_halt_after")]
    #[schema(minimum = 1)]
    pub halt_after: u32,
    /// Only report what each database would take; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_canary() -> String {
    "1".into()
}

fn default_concurrency() -> u32 {
    4
}

fn default_halt_after() -> u32 {
    1
}

/// One migration file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationFile {
    /// `NNNN_name.sql`.
    #[schema(example = "0002_add_due_date.sql")]
    pub name: String,
    pub sql: String,
}

/// A migration job: its options, and where each database stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationJobView {
    pub id: uuid::Uuid,
    /// `running`, `succeeded`, `failed` (some databases failed, every one
    /// was tried) or `halted` (a canary failed, or `halt_after` databases
    /// did, and those not started are `skipped`).
    #[schema(example = "running")]
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
    pub dry_run: bool,
    pub concurrency: u32,
    pub halt_after: u32,
    /// The files by version, with their SHA-256.
    pub files: Vec<MigrationFileView>,
    /// The version every database is brought to.
    pub latest_version: u32,
    /// How many databases are in each state.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Every database, in the order taken (canaries first); empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<MigrationTargetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationFileView {
    pub name: String,
    pub checksum: String,
}

/// One database of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationTargetView {
    /// The tenant's name, or `pool` for a region's pool database.
    pub database: String,
    pub region: String,
    pub canary: bool,
    /// `pending`, `running`, `migrated`, `current` (had every file),
    /// `planned` (dry run), `failed` or `skipped`.
    #[schema(example = "migrated")]
    pub state: String,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    /// The files applied (or, in a dry run, that would be), the error of
    /// a failed database, or why one was skipped.
    pub detail: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
}

impl MigrationJobView {
    pub fn new(report: crate::migrations::JobReport, with_targets: bool) -> Self {
        let crate::migrations::JobReport { job, spec, targets } = report;
        let mut counts = std::collections::BTreeMap::new();
        for target in &targets {
            *counts.entry(target.state.clone()).or_insert(0) += 1;
        }
        Self {
            id: job.id,
            state: job.state,
            created_at: job.created_at,
            created_by: job.created_by,
            finished_at: job.finished_at,
            dry_run: spec.dry_run,
            concurrency: spec.concurrency,
            halt_after: spec.halt_after,
            latest_version: spec.migrations.latest(),
            files: spec
                .migrations
                .all()
                .iter()
                .map(|m| MigrationFileView { name: m.file.clone(), checksum: m.checksum.clone() })
                .collect(),
            counts,
            targets: if with_targets {
                targets
                    .into_iter()
                    .map(|t| MigrationTargetView {
                        database: t.label,
                        region: t.region,
                        canary: t.canary,
                        state: t.state,
                        from_version: t.from_version,
                        to_version: t.to_version,
                        detail: t.detail,
                        finished_at: t.finished_at,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// The latest migration jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationJobList {
    pub jobs: Vec<MigrationJobView>,
}
