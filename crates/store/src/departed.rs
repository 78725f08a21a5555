//! Tenants that left: what `tenants delete` keeps of each once everything
//! else of it is destroyed (its record, for `tenants get`, and where its
//! final snapshot is and the key that opens it) until the snapshot expires.
//! No foreign key to `tenants`: the tenant's row is gone, and its name is
//! free for a new tenant.

use std::fmt;

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{StoreError, WrappedDataKey};

#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Departed {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub name: String,
    /// The tenant as it was when it left (the model's `Tenant` as JSON).
    pub record: String,
    /// Its final snapshot in the backup store; none for a tenant that never
    /// became active (it had nothing to keep).
    pub backup_id: Option<String>,
    /// The age recipient the snapshot is encrypted to.
    pub recipient: Option<String>,
    /// The key the snapshot's identity is sealed under, wrapped by the
    /// master key (`kek_id`); none when the tenant holds its own key.
    pub kek_id: Option<String>,
    pub wrapped_key: Option<Vec<u8>>,
    pub sealed_identity: Option<Vec<u8>>,
    /// The snapshot's manifest (JSON) once it is taken: a restore checks
    /// the archive against it.
    pub manifest: Option<String>,
    pub departed_at: OffsetDateTime,
    /// When the snapshot and its key are destroyed.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for Departed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Departed")
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("backup_id", &self.backup_id)
            .field("kek_id", &self.kek_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Departed {
    /// The wrapped key as the vault rotates it (version 0: no data key
    /// has it).
    pub fn wrapped(&self) -> Option<WrappedDataKey> {
        Some(WrappedDataKey {
            tenant_id: self.tenant_id,
            version: 0,
            kek_id: self.kek_id.clone()?,
            wrapped: self.wrapped_key.clone()?,
            created_at: self.departed_at,
        })
    }
}

#[async_trait]
pub trait DepartedStore: Send + Sync {
    /// Records a tenant's departure unless one is recorded already for it;
    /// returns whether this one was.
    async fn insert_departed(&self, departed: &Departed) -> Result<bool, StoreError>;

    async fn departed(&self, tenant: TenantId) -> Result<Option<Departed>, StoreError>;

    /// The latest tenant of this name to leave.
    async fn departed_named(&self, name: &str) -> Result<Option<Departed>, StoreError>;

    /// Every departure, by name, the latest of a name first.
    async fn departed_tenants(&self) -> Result<Vec<Departed>, StoreError>;

    /// Records the final snapshot's manifest once it is taken.
    async fn set_departure_manifest(
        &self,
        tenant: TenantId,
        manifest: &str,
    ) -> Result<bool, StoreError>;

    /// Forgets the departure, and with it the snapshot's key.
    async fn delete_departed(&self, tenant: TenantId) -> Result<bool, StoreError>;

    /// Up to `limit` snapshot keys wrapped by `kek_id`, for a master key
    /// rotation.
    async fn departure_keys_wrapped_by(
        &self,
        kek_id: &str,
        limit: u32,
    ) -> Result<Vec<WrappedDataKey>, StoreError>;

    /// Replaces the wrapping of a snapshot key still wrapped by
    /// `old_kek_id`; returns whether it was.
    async fn rewrap_departure_key(
        &self,
        key: &WrappedDataKey,
        old_kek_id: &str,
    ) -> Result<bool, StoreError>;
}

/// The query selecting every column of the departures matching `filter`.
macro_rules! select {
    ($filter:literal $(,)?) => {
        concat!(
            "SELECT tenant_id, name, record, backup_id, recipient, kek_id, wrapped_key, \
             sealed_identity, manifest, departed_at, expires_at FROM departed_tenants ",
            $filter
        )
    };
}
pub(crate) use select;

macro_rules! impl_departed_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::DepartedStore for $store {
            async fn insert_departed(
                &self,
                d: &$crate::Departed,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO departed_tenants (tenant_id, name, record, backup_id, recipient, \
                     kek_id, wrapped_key, sealed_identity, manifest, departed_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(d.tenant_id.0)
                .bind(d.name.as_str())
                .bind(d.record.as_str())
                .bind(d.backup_id.as_deref())
                .bind(d.recipient.as_deref())
                .bind(d.kek_id.as_deref())
                .bind(d.wrapped_key.as_deref())
                .bind(d.sealed_identity.as_deref())
                .bind(d.manifest.as_deref())
                .bind(d.departed_at)
                .bind(d.expires_at)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn departed(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Option<$crate::Departed>, $crate::StoreError> {
                Ok(sqlx::query_as($crate::departed::select!("WHERE tenant_id = $1"))
                    .bind(tenant.0)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn departed_named(
                &self,
                name: &str,
            ) -> Result<Option<$crate::Departed>, $crate::StoreError> {
                Ok(sqlx::query_as($crate::departed::select!(
                    "WHERE name = $1 ORDER BY departed_at DESC LIMIT 1",
                ))
                .bind(name)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn departed_tenants(&self) -> Result<Vec<$crate::Departed>, $crate::StoreError> {
                Ok(sqlx::query_as($crate::departed::select!("ORDER BY name, departed_at DESC",))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn set_departure_manifest(
                &self,
                tenant: bulkhead_model::TenantId,
                manifest: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result =
                    sqlx::query("UPDATE departed_tenants SET manifest = $2 WHERE tenant_id = $1")
                        .bind(tenant.0)
                        .bind(manifest)
                        .execute(&self.write)
                        .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn delete_departed(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM departed_tenants WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn departure_keys_wrapped_by(
                &self,
                kek_id: &str,
                limit: u32,
            ) -> Result<Vec<$crate::WrappedDataKey>, $crate::StoreError> {
                let rows: Vec<$crate::Departed> = sqlx::query_as($crate::departed::select!(
                    "WHERE kek_id = $1 ORDER BY tenant_id LIMIT $2",
                ))
                .bind(kek_id)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                Ok(rows.iter().filter_map($crate::Departed::wrapped).collect())
            }

            async fn rewrap_departure_key(
                &self,
                key: &$crate::WrappedDataKey,
                old_kek_id: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE departed_tenants SET kek_id = $2, wrapped_key = $3 \
                     WHERE tenant_id = $1 AND kek_id = $4",
                )
                .bind(key.tenant_id.0)
                .bind(key.kek_id.as_str())
                .bind(key.wrapped.as_slice())
                .bind(old_kek_id)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }
        }
    };
}

pub(crate) use impl_departed_store;
