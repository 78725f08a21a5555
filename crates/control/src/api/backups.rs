//! A tenant's backups over HTTP: take one, list, show, verify, delete, and
//! the key they are encrypted to.

use axum::{
    Extension, Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkhead_backup::Listing;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::{AppState, error::ApiError, record_tenant, types::ErrorBody};
use crate::{backups::Recipient, events::Actor};

/// One part of a backup as its manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupPartView {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A backup as listed: what it holds, never a byte of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupView {
    /// `YYYYMMDDTHHMMSSZ-xxxxxxxx`.
    pub id: String,
    /// `manual`, `scheduled` or `final`.
    pub kind: String,
    pub tenant: String,
    pub plan: String,
    /// RFC 3339.
    pub created_at: String,
    /// The archive's size in bytes.
    pub size: u64,
    /// The archive format version.
    pub format: u32,
    /// The age recipient the archive is encrypted to.
    pub recipient: String,
    pub parts: Vec<BackupPartView>,
}

impl From<bulkhead_backup::PartEntry> for BackupPartView {
    fn from(p: bulkhead_backup::PartEntry) -> Self {
        Self { name: p.name, size: p.size, sha256: p.sha256 }
    }
}

impl From<Listing> for BackupView {
    fn from(listing: Listing) -> Self {
        let manifest = listing.manifest;
        Self {
            id: listing.id,
            kind: listing.kind,
            tenant: manifest.about.tenant,
            plan: manifest.about.plan,
            created_at: manifest.about.created_at,
            size: listing.size,
            format: manifest.format,
            recipient: listing.recipient,
            parts: manifest.parts.into_iter().map(BackupPartView::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupList {
    /// Oldest first.
    pub backups: Vec<BackupView>,
    /// Why the backup store could not be listed (the backups are then left
    /// out), if it could not.
    pub store_error: Option<String>,
    pub schedule: ScheduleView,
}

/// The tenant's backup schedule and how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    /// The policy in force (the tenant's own, else its plan's).
    pub policy: Option<bulkhead_model::BackupPolicy>,
    /// RFC 3339.
    pub last_success: Option<String>,
    pub last_backup: Option<String>,
    /// Failures since the last success.
    pub failures: i64,
    pub last_error: Option<String>,
    /// A failing tenant's next attempt, RFC 3339.
    pub retry_at: Option<String>,
}

/// Verify with this identity instead of the one the vault holds (a tenant
/// that encrypts its backups to its own key).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// `AGE-SECRET-KEY-1...`.
    pub identity: Option<String>,
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    pub id: String,
    /// Every part decrypted and its size and SHA-256 checked.
    pub verified: bool,
    pub parts: Vec<BackupPartView>,
}

/// Where the tenant's backups are encrypted to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupKeyView {
    /// `age1...`.
    pub recipient: String,
    /// The tenant's own recipient: Bulkhead cannot read its backups.
    pub own: bool,
}

impl From<Recipient> for BackupKeyView {
    fn from(r: Recipient) -> Self {
        Self { recipient: r.recipient, own: r.own }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupKeyRequest {
    /// The tenant's own age recipient (`age1...`); `null` goes back to the
    /// key the vault holds.
    pub recipient: Option<String>,
}

/// The identity that opens the tenant's backups.
#[derive(Serialize, ToSchema)]
pub struct BackupIdentityView {
    /// `AGE-SECRET-KEY-1...`: give it to `age --decrypt --identity`.
    pub identity: String,
}

impl std::fmt::Debug for BackupIdentityView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupIdentityView").finish_non_exhaustive()
    }
}

/// Runs a backup, restore or check on a task of its own: a client that
/// goes away (a closed connection, Ctrl-C) must not cut it short halfway,
/// which would leave a tenant half restored (or a decrypted audit export
/// staged) until the next start.
async fn run_through<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, crate::backups::BackupServiceError>>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(result) => Ok(result?),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// Take a backup of the tenant now; answers when it is stored.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/backups", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 201, body = BackupView)),
    security(("operator_token" = []))
)]
pub async fn create_backup(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    record_tenant(&tenant);
    let backups = std::sync::Arc::clone(&state.backups);
    let listing =
        run_through(async move { backups.create(&actor, &tenant, crate::backups::MANUAL).await })
            .await?;
    Ok((StatusCode::CREATED, Json(listing.into())))
}

/// The tenant's backups, oldest first.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/backups", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = BackupList)),
    security(("operator_token" = []))
)]
pub async fn list_backups(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<BackupList>, ApiError> {
    record_tenant(&tenant);
    let crate::backups::BackupsOf { backups, store_error, policy, run } =
        state.backups.list(&actor, &tenant).await?;
    let time = |t: time::OffsetDateTime| bulkhead_audit::record::format_time(t);
    let schedule = ScheduleView {
        policy,
        last_success: run.as_ref().and_then(|r| r.last_success).map(time),
        last_backup: run.as_ref().and_then(|r| r.last_backup.clone()),
        failures: run.as_ref().map_or(0, |r| r.failures),
        last_error: run.as_ref().and_then(|r| r.last_error.clone()),
        retry_at: run.as_ref().and_then(|r| r.retry_at).map(time),
    };
    let backups = backups.into_iter().map(BackupView::from).collect();
    Ok(Json(BackupList { backups, store_error, schedule }))
}

/// One backup.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/backups/{id}", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("id" = String, Path, description = "Backup id")),
    responses((status = 200, body = BackupView)),
    security(("operator_token" = []))
)]
pub async fn get_backup(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Json<BackupView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.backups.get(&actor, &tenant, &id).await?.into()))
}

/// Delete one backup.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/backups/{id}", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("id" = String, Path, description = "Backup id")),
    responses((status = 204)),
    security(("operator_token" = []))
)]
pub async fn delete_backup(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.backups.delete(&actor, &tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Decrypt the backup and check every part against its manifest,
/// restoring nothing.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/backups/{id}/verify", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("id" = String, Path, description = "Backup id")),
    request_body = VerifyRequest,
    responses(
        (status = 200, body = VerifyView),
        (status = 422, body = ErrorBody,
         description = "The archive fails verification: damaged, cut short, foreign, of a newer \
                        format, or encrypted to another key; the message names the part"),
    ),
    security(("operator_token" = []))
)]
pub async fn verify_backup(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, id)): Path<(String, String)>,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Json<VerifyView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let identity = body.identity.map(Zeroizing::new);
    let backups = std::sync::Arc::clone(&state.backups);
    let backup = id.clone();
    // Through to its end, as a final snapshot's check is.
    let manifest =
        run_through(async move { backups.verify(&actor, &tenant, &backup, identity).await })
            .await?;
    let parts = manifest.parts.into_iter().map(BackupPartView::from).collect();
    Ok(Json(VerifyView { id, verified: true, parts }))
}

/// Where the tenant's backups are encrypted to.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/backup-key", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = BackupKeyView)),
    security(("operator_token" = []))
)]
pub async fn backup_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<BackupKeyView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.backups.recipient(&actor, &tenant).await?.into()))
}

/// Encrypt the tenant's later backups to its own age recipient
/// (bring-your-own-key), or back to the key the vault holds.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/backup-key", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = BackupKeyRequest,
    responses((status = 200, body = BackupKeyView)),
    security(("operator_token" = []))
)]
pub async fn set_backup_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<BackupKeyRequest>, JsonRejection>,
) -> Result<Json<BackupKeyView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let recipient = body.recipient.as_deref().map(str::trim);
    Ok(Json(state.backups.set_recipient(&actor, &tenant, recipient).await?.into()))
}

/// The identity that opens the tenant's backups (operators; recorded in
/// the tenant's stream before it is handed out).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/backup-key/export", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = BackupIdentityView)),
    security(("operator_token" = []))
)]
pub async fn export_backup_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let identity = state.backups.export_identity(&actor, &tenant).await?;
    let mut response =
        Json(BackupIdentityView { identity: identity.as_str().to_owned() }).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Restore a backup into the tenant it was taken of (suspended for the
/// duration) or, with `to`, into a new tenant.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// A new tenant to restore into; the backup's own tenant unless given.
    #[serde(default)]
    pub to: Option<String>,
    /// Restore over data newer than the backup.
    #[serde(default)]
    pub force: bool,
    /// `AGE-SECRET-KEY-1...`, for a tenant whose backups are encrypted to
    /// its own key.
    #[serde(default)]
    pub identity: Option<String>,
}

impl std::fmt::Debug for RestoreRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreRequest")
            .field("to", &self.to)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreView {
    /// The tenant restored into.
    pub tenant: String,
    /// The backup, by its time and tenant.
    pub backup: String,
    /// A new tenant was made for it.
    pub created: bool,
    /// What could not be put back (apps where no runtime runs them), each
    /// said.
    pub warnings: Vec<String>,
}

impl From<crate::backups::Restored> for RestoreView {
    fn from(r: crate::backups::Restored) -> Self {
        Self { tenant: r.tenant, backup: r.backup, created: r.created, warnings: r.warnings }
    }
}

/// Restore one of the tenant's backups (operators).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/backups/{id}/restore", tag = "backups",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("id" = String, Path, description = "Backup id")),
    request_body = RestoreRequest,
    responses(
        (status = 200, body = RestoreView),
        (status = 422, body = ErrorBody,
         description = "The archive fails verification; nothing was restored"),
    ),
    security(("operator_token" = []))
)]
pub async fn restore_backup(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, id)): Path<(String, String)>,
    body: Result<Json<RestoreRequest>, JsonRejection>,
) -> Result<Json<RestoreView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let target = match body.to {
        Some(to) => crate::backups::Target::New(to),
        None => crate::backups::Target::Same,
    };
    let identity = body.identity.map(Zeroizing::new);
    let backups = std::sync::Arc::clone(&state.backups);
    let restored = run_through(async move {
        backups.restore(&actor, &tenant, &id, target, body.force, identity).await
    })
    .await?;
    Ok(Json(restored.into()))
}

/// What brings a deleted tenant back.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// From its final snapshot: the one thing a deleted tenant leaves.
    pub from_final: bool,
    /// The name it comes back under; its own unless given.
    #[serde(default)]
    pub to: Option<String>,
    /// Which deleted tenant of the name (`tenants list --state deleted`
    /// shows their ids); the latest unless given.
    #[serde(default)]
    pub tenant_id: Option<uuid::Uuid>,
    /// `AGE-SECRET-KEY-1...`, for a tenant whose snapshot is encrypted to
    /// its own key.
    #[serde(default)]
    pub identity: Option<String>,
}

impl std::fmt::Debug for ReturnRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnRequest")
            .field("from_final", &self.from_final)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// Bring a deleted tenant back from its final snapshot, as a new tenant
/// (operators). Answers when it is back.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/restore", tag = "backups",
    params(("tenant" = String, Path, description = "The deleted tenant's name")),
    request_body = ReturnRequest,
    responses(
        (status = 200, body = RestoreView),
        (status = 404, body = ErrorBody, description = "No deleted tenant of this name is kept"),
        (status = 409, body = ErrorBody,
         description = "The name is taken, the tenant is still being offboarded, or its snapshot is encrypted to its own key and no identity was given"),
        (status = 422, body = ErrorBody,
         description = "The snapshot fails verification; nothing was restored"),
    ),
    security(("operator_token" = []))
)]
pub async fn restore_departed(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<ReturnRequest>, JsonRejection>,
) -> Result<Json<RestoreView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    if !body.from_final {
        return Err(ApiError::new(
            super::error::ErrorCode::InvalidRequest,
            "a deleted tenant comes back from its final snapshot: say \"from_final\": true \
             (to restore a live tenant from a backup, use /v1/tenants/{tenant}/backups/{id}/restore)",
        ));
    }
    let identity = body.identity.map(Zeroizing::new);
    let backups = std::sync::Arc::clone(&state.backups);
    let restored = run_through(async move {
        let id = body.tenant_id.map(bulkhead_model::TenantId);
        backups.restore_departed(&actor, &tenant, id, body.to, identity).await
    })
    .await?;
    Ok(Json(restored.into()))
}

/// What checks a deleted tenant's final snapshot.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinalVerifyRequest {
    /// Which deleted tenant of the name; the latest unless given.
    #[serde(default)]
    pub tenant_id: Option<uuid::Uuid>,
    /// `AGE-SECRET-KEY-1...`, for a tenant whose snapshot is encrypted to
    /// its own key.
    #[serde(default)]
    pub identity: Option<String>,
}

impl std::fmt::Debug for FinalVerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalVerifyRequest")
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

/// Decrypt a deleted tenant's final snapshot and check every part against
/// the manifest recorded when it was taken, restoring nothing (operators).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/final-snapshot/verify", tag = "backups",
    params(("tenant" = String, Path, description = "The deleted tenant's name")),
    request_body = FinalVerifyRequest,
    responses(
        (status = 200, body = VerifyView),
        (status = 404, body = ErrorBody, description = "No deleted tenant of this name is kept"),
        (status = 409, body = ErrorBody,
         description = "It left no final snapshot, or its snapshot is encrypted to its own key and no identity was given"),
        (status = 422, body = ErrorBody,
         description = "The snapshot fails verification: damaged, cut short, replaced or encrypted to another key; the message names the part"),
    ),
    security(("operator_token" = []))
)]
pub async fn verify_departed(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<FinalVerifyRequest>, JsonRejection>,
) -> Result<Json<VerifyView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let identity = body.identity.map(Zeroizing::new);
    let id = body.tenant_id.map(bulkhead_model::TenantId);
    let backups = std::sync::Arc::clone(&state.backups);
    // Through to its end: the decrypted audit export it stages goes, and
    // the check is recorded, whether or not the client waits.
    let (backup, manifest) =
        run_through(async move { backups.verify_departed(&actor, &tenant, id, identity).await })
            .await?;
    let parts = manifest.parts.into_iter().map(BackupPartView::from).collect();
    Ok(Json(VerifyView { id: backup, verified: true, parts }))
}

/// The header that carries the identity of an uploaded archive.
pub const IDENTITY_HEADER: &str = "bulkhead-backup-identity";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArchiveParams {
    /// The new tenant's name; the one the backup was taken of unless given.
    pub to: Option<String>,
}

/// Restore an archive made by any Bulkhead installation into a new tenant
/// (operators). The body is the archive; the identity that opens it goes
/// in the `Bulkhead-Backup-Identity` header.
#[utoipa::path(
    post, path = "/v1/backups/restore", tag = "backups",
    params(ArchiveParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = RestoreView),
        (status = 422, body = ErrorBody,
         description = "The archive fails verification; nothing was restored"),
    ),
    security(("operator_token" = []))
)]
pub async fn restore_archive(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<axum::extract::Query<ArchiveParams>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<RestoreView>, ApiError> {
    use futures_util::TryStreamExt;
    let axum::extract::Query(params) = params?;
    let identity = headers
        .get(IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| Zeroizing::new(v.trim().to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                super::error::ErrorCode::InvalidRequest,
                "the archive's identity goes in the Bulkhead-Backup-Identity header",
            )
        })?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = bulkhead_backup::ArchiveReader::new(stream);
    let backups = std::sync::Arc::clone(&state.backups);
    let restored =
        run_through(
            async move { backups.restore_archive(&actor, reader, identity, params.to).await },
        )
        .await?;
    Ok(Json(restored.into()))
}
