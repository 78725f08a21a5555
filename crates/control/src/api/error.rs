//! The one place where errors become HTTP responses.
//!
//! Every error is `{"error": {"code", "message"}}` with a stable code from
//! [`ErrorCode`]. A 500 never carries internal detail: the detail goes to
//! the log, under the request id returned in `x-request-id`.

use axum::{
    Json,
    extract::rejection::{JsonRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkhead_audit::export::ExportError;
use bulkhead_store::StoreError;

use bulkhead_vault::VaultError;

use super::types::{ErrorBody, ErrorDetail};
use crate::{
    admission::Refused, apis::ApisError, apps::AppsError, audit::AuditServiceError,
    credentials::CredentialError, identity::IdentityError, resources::ResourcesError,
    rollouts::RolloutError, tenants::TenantError, usage::UsageError, vault::VaultServiceError,
};

/// The table of error codes: each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidJson,
    InvalidTenantName,
    InvalidAdminEmail,
    InvalidLimits,
    ImmutableField,
    UnknownPlan,
    UnknownRegion,
    IsolationUnavailable,
    Unauthorized,
    NotFound,
    TenantNotFound,
    MethodNotAllowed,
    TenantExists,
    InvalidState,
    Conflict,
    PayloadTooLarge,
    Internal,
    Unavailable,
    InvalidSecretPath,
    InvalidSecretValue,
    InvalidKey,
    WrongTenantKey,
    SecretNotFound,
    LeaseNotFound,
    LockoutNotFound,
    LeaseRevoked,
    TenantKeyRequired,
    NoDataKey,
    CredentialsUnavailable,
    LockedOut,
    Forbidden,
    CorruptData,
    ApiKeyNotFound,
    MigrationNotFound,
    ApiNotFound,
    AppNotFound,
    RolloutNotFound,
    InvalidApp,
    InvalidGuardrail,
    GuardrailNotFound,
    InvalidTool,
    ToolNotFound,
    RuntimeUnavailable,
    ApiExists,
    InvalidApi,
    AuditUnavailable,
    AuditStreamBroken,
    RateLimited,
    QuotaExceeded,
    BackupNotFound,
    BackupInvalid,
    BackupUnavailable,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidJson | InvalidTenantName | InvalidAdminEmail
            | InvalidLimits | UnknownPlan | UnknownRegion | IsolationUnavailable
            | InvalidSecretPath | InvalidSecretValue | InvalidKey | WrongTenantKey | InvalidApi
            | InvalidApp | InvalidGuardrail | InvalidTool => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            LockedOut | Forbidden => StatusCode::FORBIDDEN,
            NotFound | TenantNotFound | SecretNotFound | LeaseNotFound | LockoutNotFound
            | ApiKeyNotFound | ApiNotFound | AppNotFound | RolloutNotFound | MigrationNotFound
            | GuardrailNotFound | ToolNotFound | BackupNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            TenantExists
            | ImmutableField
            | ApiExists
            | InvalidState
            | Conflict
            | LeaseRevoked
            | TenantKeyRequired
            | NoDataKey
            | CredentialsUnavailable => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited | QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            BackupInvalid => StatusCode::UNPROCESSABLE_ENTITY,
            Internal | CorruptData | AuditStreamBroken => StatusCode::INTERNAL_SERVER_ERROR,
            Unavailable | AuditUnavailable | RuntimeUnavailable | BackupUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidJson => "invalid_json",
            InvalidTenantName => "invalid_tenant_name",
            InvalidAdminEmail => "invalid_admin_email",
            InvalidLimits => "invalid_limits",
            ImmutableField => "immutable_field",
            UnknownPlan => "unknown_plan",
            UnknownRegion => "unknown_region",
            IsolationUnavailable => "isolation_unavailable",
            Unauthorized => "unauthorized",
            NotFound => "not_found",
            TenantNotFound => "tenant_not_found",
            MethodNotAllowed => "method_not_allowed",
            TenantExists => "tenant_exists",
            InvalidState => "invalid_state",
            Conflict => "conflict",
            PayloadTooLarge => "payload_too_large",
            Internal => "internal",
            Unavailable => "unavailable",
            InvalidSecretPath => "invalid_secret_path",
            InvalidSecretValue => "invalid_secret_value",
            InvalidKey => "invalid_key",
            WrongTenantKey => "wrong_tenant_key",
            SecretNotFound => "secret_not_found",
            LeaseNotFound => "lease_not_found",
            LockoutNotFound => "lockout_not_found",
            LeaseRevoked => "lease_revoked",
            TenantKeyRequired => "tenant_key_required",
            NoDataKey => "no_data_key",
            CredentialsUnavailable => "credentials_unavailable",
            LockedOut => "locked_out",
            Forbidden => "forbidden",
            CorruptData => "corrupt_data",
            ApiKeyNotFound => "api_key_not_found",
            MigrationNotFound => "migration_not_found",
            ApiNotFound => "api_not_found",
            AppNotFound => "app_not_found",
            RolloutNotFound => "rollout_not_found",
            InvalidApp => "invalid_app",
            InvalidGuardrail => "invalid_guardrail",
            GuardrailNotFound => "guardrail_not_found",
            InvalidTool => "invalid_tool",
            ToolNotFound => "tool_not_found",
            RuntimeUnavailable => "runtime_unavailable",
            ApiExists => "api_exists",
            InvalidApi => "invalid_api",
            AuditUnavailable => "audit_unavailable",
            AuditStreamBroken => "audit_stream_broken",
            RateLimited => "rate_limited",
            QuotaExceeded => "quota_exceeded",
            BackupNotFound => "backup_not_found",
            BackupInvalid => "backup_invalid",
            BackupUnavailable => "backup_unavailable",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Logs `error` in the request's span and answers with nothing but a
    /// pointer to that log line.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            ErrorCode::Internal,
            "internal error; the server log has the details under this response's x-request-id",
        )
    }

    /// What a 401 says to whoever did not prove to hold a genuine
    /// credential.
    pub const UNAUTHORIZED: &'static str = "authentication required";

    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, Self::UNAUTHORIZED)
    }

    /// A 401 that tells the holder of a genuine credential what is wrong
    /// with it, or nothing.
    pub fn unauthorized_because(told: Option<String>) -> Self {
        match told {
            Some(why) => {
                Self::new(ErrorCode::Unauthorized, format!("authentication refused: {why}"))
            }
            None => Self::unauthorized(),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message },
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<TenantError> for ApiError {
    fn from(error: TenantError) -> Self {
        use ErrorCode::*;
        let code = match &error {
            TenantError::InvalidName(_) => InvalidTenantName,
            TenantError::UnknownPlan(_) => UnknownPlan,
            TenantError::UnknownRegion(_) => UnknownRegion,
            TenantError::Isolation(_) => IsolationUnavailable,
            TenantError::InvalidEmail(_) => InvalidAdminEmail,
            TenantError::InvalidLimits(_) => InvalidLimits,
            TenantError::Immutable { .. } => ImmutableField,
            TenantError::NotFound(_) => TenantNotFound,
            TenantError::Exists(_) => TenantExists,
            TenantError::InvalidState(_) => InvalidState,
            TenantError::Store(StoreError::VersionConflict) => {
                return Self::new(Conflict, "the tenant changed while this request ran; retry it");
            }
            TenantError::Store(store) => return store_error(store),
        };
        Self::new(code, error.to_string())
    }
}

impl From<VaultError> for ApiError {
    fn from(error: VaultError) -> Self {
        use ErrorCode::*;
        let code = match &error {
            VaultError::InvalidPath(_) => InvalidSecretPath,
            VaultError::InvalidValue(_) => InvalidSecretValue,
            VaultError::ValueTooLarge { .. } => PayloadTooLarge,
            VaultError::InvalidKey(_) => InvalidKey,
            VaultError::WrongTenantKey { .. } => WrongTenantKey,
            VaultError::SecretNotFound(_) => SecretNotFound,
            VaultError::Sealed { .. } => TenantKeyRequired,
            VaultError::NoDataKey => NoDataKey,
            VaultError::RotationUnavailable(_) => Conflict,
            // Damaged data is reported as such, without the bytes.
            VaultError::Corrupt(_) | VaultError::Decrypt | VaultError::Unwrap => {
                tracing::error!(%error, "vault data is damaged");
                CorruptData
            }
            VaultError::Database(_) => {
                tracing::error!(%error, "tenant database server failed");
                return Self::new(
                    Unavailable,
                    "the tenant's database server failed; the server log has the details",
                );
            }
            VaultError::Store(store) => return store_error(store),
            _ => return Self::internal(&error),
        };
        Self::new(code, error.to_string())
    }
}

impl From<CredentialError> for ApiError {
    fn from(error: CredentialError) -> Self {
        match error {
            CredentialError::Unavailable(message) => {
                Self::new(ErrorCode::CredentialsUnavailable, message)
            }
            CredentialError::Database(_) => {
                tracing::error!(%error, "cannot manage the tenant's database credentials");
                Self::new(
                    ErrorCode::Unavailable,
                    "the tenant's database server failed; the server log has the details",
                )
            }
            CredentialError::Store(store) => store_error(&store),
        }
    }
}

impl From<VaultServiceError> for ApiError {
    fn from(error: VaultServiceError) -> Self {
        use ErrorCode::*;
        let code = match error {
            VaultServiceError::Refused(e) => return e.into(),
            VaultServiceError::Vault(e) => return e.into(),
            VaultServiceError::Credential(e) => return e.into(),
            VaultServiceError::Store(ref store) => return store_error(store),
            VaultServiceError::TenantNotFound(_) => TenantNotFound,
            VaultServiceError::InvalidState(_) => InvalidState,
            VaultServiceError::InvalidRequest(_) => InvalidRequest,
            VaultServiceError::OperatorOnly
            | VaultServiceError::SelfUnlock(_)
            | VaultServiceError::Forbidden(_) => Forbidden,
            VaultServiceError::LeaseNotFound(_) => LeaseNotFound,
            VaultServiceError::LeaseRevoked(_) => LeaseRevoked,
            VaultServiceError::LockoutNotFound(_) => LockoutNotFound,
            VaultServiceError::Unrecorded(ref u) => unrecorded(u),
            VaultServiceError::Quota(_) => QuotaExceeded,
        };
        Self::new(code, error.to_string())
    }
}

impl From<crate::backups::BackupServiceError> for ApiError {
    fn from(error: crate::backups::BackupServiceError) -> Self {
        use crate::backups::BackupServiceError as E;
        use ErrorCode::*;
        let code = match error {
            E::Vault(e) => return e.into(),
            E::Credential(e) => return e.into(),
            E::Audit(e) => return e.into(),
            E::Tenant(e) => return e.into(),
            E::Store(ref store) => return store_error(store),
            E::Internal(_) => return Self::internal(&error),
            E::Unrecorded(ref u) => unrecorded(u),
            E::TenantNotFound(_) | E::NotDeparted(_) => TenantNotFound,
            E::BackupNotFound(..) => BackupNotFound,
            E::Forbidden(_) | E::OperatorOnly => Forbidden,
            E::InvalidState(_) | E::Running(_) | E::OwnKey(_) => InvalidState,
            E::InvalidRequest(_) => InvalidRequest,
            E::Backup(bulkhead_backup::BackupError::InvalidKey(_)) => InvalidKey,
            E::Backup(bulkhead_backup::BackupError::Storage(_))
            | E::Backup(bulkhead_backup::BackupError::Io(_))
            | E::Database(_)
            | E::Staging(_) => BackupUnavailable,
            E::Backup(_) => BackupInvalid,
        };
        Self::new(code, error.to_string())
    }
}

impl From<UsageError> for ApiError {
    fn from(error: UsageError) -> Self {
        match error {
            UsageError::Store(ref store) => store_error(store),
            UsageError::TenantNotFound(_) => {
                Self::new(ErrorCode::TenantNotFound, error.to_string())
            }
            UsageError::Forbidden(_) => Self::new(ErrorCode::Forbidden, error.to_string()),
            UsageError::BadPeriod(_) => Self::new(ErrorCode::InvalidRequest, error.to_string()),
        }
    }
}

impl From<ApisError> for ApiError {
    fn from(error: ApisError) -> Self {
        use ErrorCode::*;
        let code = match error {
            ApisError::Store(ref store) => return store_error(store),
            ApisError::Corrupt { .. } => {
                tracing::error!(%error, "a stored API is unreadable");
                CorruptData
            }
            ApisError::TenantNotFound(_) => TenantNotFound,
            ApisError::Forbidden(_) => Forbidden,
            ApisError::Invalid { .. } => InvalidApi,
            ApisError::Exists { .. } | ApisError::PrefixTaken { .. } => ApiExists,
            ApisError::NotFound { .. } => ApiNotFound,
            ApisError::TooMany { .. } => QuotaExceeded,
            ApisError::Leaving(_) => InvalidState,
        };
        Self::new(code, error.to_string())
    }
}

impl From<ResourcesError> for ApiError {
    fn from(error: ResourcesError) -> Self {
        use ErrorCode::*;
        use bulkhead_model::ToolSpec;

        use crate::resources::Resource;
        let code = match error {
            ResourcesError::Store(ref store) => return store_error(store),
            ResourcesError::Corrupt { .. } => {
                tracing::error!(%error, "a stored resource is unreadable");
                CorruptData
            }
            ResourcesError::TenantNotFound(_) => TenantNotFound,
            ResourcesError::Forbidden(_) => Forbidden,
            ResourcesError::Invalid { kind: ToolSpec::KIND, .. } => InvalidTool,
            ResourcesError::Invalid { .. } => InvalidGuardrail,
            ResourcesError::NotFound { kind: ToolSpec::KIND, .. } => ToolNotFound,
            ResourcesError::NotFound { .. } => GuardrailNotFound,
            ResourcesError::TooMany { .. } => QuotaExceeded,
            ResourcesError::Leaving(_) => InvalidState,
        };
        Self::new(code, error.to_string())
    }
}

impl From<RolloutError> for ApiError {
    fn from(error: RolloutError) -> Self {
        use ErrorCode::*;
        let code = match error {
            RolloutError::Store(ref store) => return store_error(store),
            RolloutError::Corrupt(..) => {
                tracing::error!(%error, "a stored rollout is unreadable");
                CorruptData
            }
            RolloutError::Forbidden => Forbidden,
            RolloutError::Invalid(_) => InvalidRequest,
            RolloutError::NotFound(_) => RolloutNotFound,
            RolloutError::UnderWay(_) => Conflict,
            RolloutError::WrongState { .. } => InvalidState,
            RolloutError::NoRuntime => RuntimeUnavailable,
        };
        Self::new(code, error.to_string())
    }
}

impl From<AppsError> for ApiError {
    fn from(error: AppsError) -> Self {
        use ErrorCode::*;
        let code = match error {
            AppsError::Store(bulkhead_store::StoreError::VersionConflict) => {
                return Self::new(
                    Conflict,
                    "the app kept changing while this request ran (a deploy, a switch or a \
                     rollout); try again",
                );
            }
            AppsError::Store(ref store) => return store_error(store),
            AppsError::Corrupt { .. } => {
                tracing::error!(%error, "a stored app is unreadable");
                CorruptData
            }
            AppsError::TenantNotFound(_) => TenantNotFound,
            AppsError::Forbidden(_) => Forbidden,
            AppsError::Invalid { .. } => InvalidApp,
            AppsError::NotFound { .. } => AppNotFound,
            AppsError::TooMany { .. } => QuotaExceeded,
            AppsError::NotActive { .. } => InvalidState,
            AppsError::NoRuntime => RuntimeUnavailable,
            AppsError::InvalidFlags(_) => InvalidRequest,
        };
        Self::new(code, error.to_string())
    }
}

impl From<IdentityError> for ApiError {
    fn from(error: IdentityError) -> Self {
        use ErrorCode::*;
        let code = match error {
            IdentityError::Refused(e) => return e.into(),
            IdentityError::Vault(e) => return e.into(),
            IdentityError::Store(ref store) => return store_error(store),
            IdentityError::Internal(_) => return Self::internal(&error),
            IdentityError::TenantNotFound(_) => TenantNotFound,
            IdentityError::Forbidden(_) => Forbidden,
            IdentityError::InvalidRequest(_) => InvalidRequest,
            IdentityError::Conflict(_) => Conflict,
            IdentityError::ApiKeyNotFound(_) => ApiKeyNotFound,
            IdentityError::NoRealm(_) | IdentityError::NoSigningKey(_) => InvalidState,
            IdentityError::Unrecorded(ref u) => unrecorded(u),
            IdentityError::Quota(_) => QuotaExceeded,
        };
        Self::new(code, error.to_string())
    }
}

impl From<AuditServiceError> for ApiError {
    fn from(error: AuditServiceError) -> Self {
        use ErrorCode::*;
        let code = match error {
            AuditServiceError::Export(e) => return e.into(),
            AuditServiceError::Refused(e) => return e.into(),
            AuditServiceError::Vault(e) => return e.into(),
            AuditServiceError::Store(ref store) => return store_error(store),
            AuditServiceError::Internal(_) => return Self::internal(&error),
            AuditServiceError::TenantNotFound(_) => TenantNotFound,
            AuditServiceError::Forbidden(_) => Forbidden,
            // Tenant credentials never reach platform paths; this is an
            // operator-only answer for anyone else that could.
            AuditServiceError::PlatformOnly => Unauthorized,
            AuditServiceError::NoKey(_) => InvalidState,
            AuditServiceError::InvalidRequest(_) => InvalidRequest,
            AuditServiceError::Unrecorded(ref u) => unrecorded(u),
        };
        Self::new(code, error.to_string())
    }
}

/// An export refused (the stream is not what Bulkhead wrote) or cut short
/// by the store.
impl From<ExportError> for ApiError {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::Refused(why) => Self::new(ErrorCode::AuditStreamBroken, why),
            ExportError::Store(why) => {
                tracing::error!(%why, "cannot read the audit stream for an export");
                Self::new(ErrorCode::Unavailable, "the control store is unavailable; retry shortly")
            }
        }
    }
}

/// An action refused because its audit event could not be written: the
/// stream was found changed outside Bulkhead, or it could not be written
/// now (retry).
fn unrecorded(unrecorded: &crate::events::Unrecorded) -> ErrorCode {
    if unrecorded.broken.is_some() {
        ErrorCode::AuditStreamBroken
    } else {
        ErrorCode::AuditUnavailable
    }
}

impl From<Refused> for ApiError {
    fn from(error: Refused) -> Self {
        match error {
            Refused::LockedOut(_) => Self::new(ErrorCode::LockedOut, error.to_string()),
            Refused::Store(store) => store_error(&store),
        }
    }
}

pub(crate) fn store_error(error: &StoreError) -> ApiError {
    match error {
        StoreError::Unreachable { .. } | StoreError::Query(sqlx::Error::PoolTimedOut) => {
            tracing::error!(%error, "control store unavailable");
            ApiError::new(ErrorCode::Unavailable, "the control store is unavailable; retry shortly")
        }
        other => ApiError::internal(other),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than the API accepts (64 KiB)",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                ErrorCode::InvalidJson,
                "request body must be JSON with content-type: application/json",
            ),
            // axum's message names the field and the position (it uses
            // serde_path_to_error), e.g. "plan: invalid type: integer `5`,
            // expected a string at line 1 column 25".
            _ => Self::new(ErrorCode::InvalidJson, rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidRequest, rejection.body_text())
    }
}
