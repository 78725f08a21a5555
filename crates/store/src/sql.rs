//! The statements both stores run, written once.
//!
//! SQLite and PostgreSQL accept the same `$n` placeholders and every
//! statement below, so [`impl_control_store!`] instantiates one body of SQL
//! for each backend's pool type. A generic function over `sqlx::Database`
//! would need a bound per bound value type and per row; a macro keeps the
//! statements readable and makes a divergence between the backends
//! impossible. What does differ (locking, migrations, how to connect) lives
//! in each backend's module.

macro_rules! impl_control_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::ControlStore for $store {
            fn location(&self) -> String {
                self.location.clone()
            }

            async fn lock_exclusive(&self) -> Result<$crate::StoreLock, $crate::StoreError> {
                self.acquire_lock().await
            }

            async fn public_connect_risk(&self) -> Result<Option<String>, $crate::StoreError> {
                self.public_connect_risk_of_database().await
            }

            async fn installation_id(
                &self,
                proposed: uuid::Uuid,
            ) -> Result<uuid::Uuid, $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO installation (singleton, id) VALUES (1, $1) \
                     ON CONFLICT (singleton) DO NOTHING",
                )
                .bind(proposed.to_string())
                .execute(&self.write)
                .await?;
                let (id,): (String,) = sqlx::query_as("SELECT id FROM installation")
                    .fetch_one(&self.write)
                    .await?;
                uuid::Uuid::parse_str(&id)
                    .map_err(|e| $crate::StoreError::Corrupt(format!("installation id: {e}")))
            }

            async fn set_public_url(&self, url: &str) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE installation SET public_url = $1")
                    .bind(url)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn public_url(&self) -> Result<Option<String>, $crate::StoreError> {
                let row: Option<(Option<String>,)> =
                    sqlx::query_as("SELECT public_url FROM installation")
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.and_then(|(url,)| url))
            }

            async fn notify_gateways(
                &self,
                tenants: &[bulkhead_model::TenantId],
            ) -> Result<(), $crate::StoreError> {
                self.notify_gateways_of(tenants).await
            }

            async fn gateway_changes(
                &self,
            ) -> Result<Option<Box<dyn $crate::GatewayChanges>>, $crate::StoreError> {
                self.follow_gateway_changes().await
            }

            async fn ping(&self) -> Result<(), $crate::StoreError> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }

            async fn insert_tenant(
                &self,
                tenant: &bulkhead_model::Tenant,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO tenants (id, name, plan, isolation, region, admin_email, state, \
                     failure_step, failure_reason, failure_undone, purge_requested, last_error, \
                     version, created_at, updated_at, provisioned_at, limits) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17)",
                )
                .bind(tenant.id.0)
                .bind(tenant.name.as_str())
                .bind(tenant.plan.as_str())
                .bind(tenant.isolation.as_str())
                .bind(tenant.region.as_str())
                .bind(tenant.admin_email.as_ref().map(|e| e.as_str()))
                .bind(tenant.state.as_str())
                .bind(tenant.failure.as_ref().map(|f| f.step.as_str()))
                .bind(tenant.failure.as_ref().map(|f| f.reason.as_str()))
                .bind(tenant.failure.as_ref().is_some_and(|f| f.undone))
                .bind(tenant.purge_requested)
                .bind(tenant.last_error.as_deref())
                .bind(tenant.version)
                .bind(tenant.created_at)
                .bind(tenant.updated_at)
                .bind(tenant.provisioned_at)
                .bind($crate::rows::limits_json(&tenant.limits))
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => {
                        Err($crate::StoreError::NameTaken(tenant.name.to_string()))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn tenant(
                &self,
                name: &bulkhead_model::TenantName,
            ) -> Result<Option<bulkhead_model::Tenant>, $crate::StoreError> {
                sqlx::query_as::<_, $crate::rows::TenantRow>(concat!(
                    "SELECT ",
                    $crate::rows::tenant_columns!(),
                    " FROM tenants WHERE name = $1"
                ))
                .bind(name.as_str())
                .fetch_optional(&self.read)
                .await?
                .map(TryInto::try_into)
                .transpose()
            }

            async fn tenant_by_id(
                &self,
                id: bulkhead_model::TenantId,
            ) -> Result<Option<bulkhead_model::Tenant>, $crate::StoreError> {
                sqlx::query_as::<_, $crate::rows::TenantRow>(concat!(
                    "SELECT ",
                    $crate::rows::tenant_columns!(),
                    " FROM tenants WHERE id = $1"
                ))
                .bind(id.0)
                .fetch_optional(&self.read)
                .await?
                .map(TryInto::try_into)
                .transpose()
            }

            async fn list_tenants(
                &self,
                page: &$crate::TenantPage,
            ) -> Result<Vec<bulkhead_model::Tenant>, $crate::StoreError> {
                sqlx::query_as::<_, $crate::rows::TenantRow>(concat!(
                    "SELECT ",
                    $crate::rows::tenant_columns!(),
                    " FROM tenants WHERE name > $1 \
                     AND (($2 IS NULL AND state <> 'deleted') OR state = $2) \
                     ORDER BY name LIMIT $3"
                ))
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(page.state.map(|s| s.as_str()))
                .bind(i64::from(page.limit))
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn unsettled_tenants(
                &self,
            ) -> Result<Vec<bulkhead_model::TenantId>, $crate::StoreError> {
                let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
                    "SELECT id FROM tenants WHERE state IN ('provisioning', 'offboarding') \
                     OR (state = 'failed' AND failure_undone = FALSE) ORDER BY created_at",
                )
                .fetch_all(&self.read)
                .await?;
                Ok(ids.into_iter().map(|(id,)| bulkhead_model::TenantId(id)).collect())
            }

            async fn update_tenant(
                &self,
                tenant: &bulkhead_model::Tenant,
            ) -> Result<bulkhead_model::Tenant, $crate::StoreError> {
                let next = tenant.version + 1;
                let result = sqlx::query(
                    "UPDATE tenants SET plan = $3, isolation = $4, region = $5, admin_email = $6, \
                     state = $7, failure_step = $8, failure_reason = $9, failure_undone = $10, \
                     purge_requested = $11, last_error = $12, version = $13, updated_at = $14, \
                     provisioned_at = $15, limits = $16 \
                     WHERE id = $1 AND version = $2",
                )
                .bind(tenant.id.0)
                .bind(tenant.version)
                .bind(tenant.plan.as_str())
                .bind(tenant.isolation.as_str())
                .bind(tenant.region.as_str())
                .bind(tenant.admin_email.as_ref().map(|e| e.as_str()))
                .bind(tenant.state.as_str())
                .bind(tenant.failure.as_ref().map(|f| f.step.as_str()))
                .bind(tenant.failure.as_ref().map(|f| f.reason.as_str()))
                .bind(tenant.failure.as_ref().is_some_and(|f| f.undone))
                .bind(tenant.purge_requested)
                .bind(tenant.last_error.as_deref())
                .bind(next)
                .bind(tenant.updated_at)
                .bind(tenant.provisioned_at)
                .bind($crate::rows::limits_json(&tenant.limits))
                .execute(&self.write)
                .await?;
                if result.rows_affected() == 1 {
                    Ok(bulkhead_model::Tenant { version: next, ..tenant.clone() })
                } else {
                    Err($crate::StoreError::VersionConflict)
                }
            }

            async fn delete_tenant(
                &self,
                id: bulkhead_model::TenantId,
            ) -> Result<(), $crate::StoreError> {
                // tenant_steps rows go with it: ON DELETE CASCADE.
                sqlx::query("DELETE FROM tenants WHERE id = $1")
                    .bind(id.0)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn steps(
                &self,
                id: bulkhead_model::TenantId,
            ) -> Result<Vec<bulkhead_model::StepRecord>, $crate::StoreError> {
                sqlx::query_as::<_, $crate::rows::StepRow>(
                    "SELECT step, status, output, updated_at FROM tenant_steps \
                     WHERE tenant_id = $1 ORDER BY updated_at, step",
                )
                .bind(id.0)
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn record_step(
                &self,
                id: bulkhead_model::TenantId,
                record: &bulkhead_model::StepRecord,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO tenant_steps (tenant_id, step, status, output, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, step) DO UPDATE \
                     SET status = excluded.status, output = excluded.output, \
                     updated_at = excluded.updated_at",
                )
                .bind(id.0)
                .bind(record.step.as_str())
                .bind(record.status.as_str())
                .bind(record.output.as_ref().map(sqlx::types::Json))
                .bind(record.updated_at)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if e.as_database_error().is_some_and(|d| d.is_foreign_key_violation()) => {
                        Err($crate::StoreError::NotFound(id.to_string()))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn count_by_state(
                &self,
            ) -> Result<Vec<(bulkhead_model::TenantState, u64)>, $crate::StoreError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT state, COUNT(*) FROM tenants GROUP BY state")
                        .fetch_all(&self.read)
                        .await?;
                rows.into_iter()
                    .map(|(state, count)| {
                        let state = state
                            .parse()
                            .map_err(|e| $crate::StoreError::Corrupt(format!("state: {e}")))?;
                        Ok((state, u64::try_from(count).unwrap_or_default()))
                    })
                    .collect()
            }

            async fn regions_in_use(&self) -> Result<Vec<$crate::RegionUse>, $crate::StoreError> {
                let rows: Vec<(String, i64, String)> = sqlx::query_as(
                    "SELECT region, COUNT(*), MIN(name) FROM tenants GROUP BY region ORDER BY region",
                )
                .fetch_all(&self.read)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(region, tenants, first_tenant)| $crate::RegionUse {
                        region,
                        tenants: u64::try_from(tenants).unwrap_or_default(),
                        first_tenant,
                    })
                    .collect())
            }

            async fn operator_tokens(
                &self,
            ) -> Result<Vec<$crate::OperatorToken>, $crate::StoreError> {
                sqlx::query_as::<_, $crate::rows::TokenRow>(
                    "SELECT id, name, token_hash, created_at FROM operator_tokens ORDER BY created_at",
                )
                .fetch_all(&self.read)
                .await?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn insert_operator_token(
                &self,
                token: &$crate::OperatorToken,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO operator_tokens (id, name, token_hash, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(token.id)
                .bind(token.name.as_str())
                .bind(token.token_hash.as_slice())
                .bind(token.created_at)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => Err(
                        $crate::StoreError::Duplicate(format!("operator token {:?}", token.name)),
                    ),
                    Err(e) => Err(e.into()),
                }
            }
        }
    };
}

pub(crate) use impl_control_store;

/// The vault's statements, shared the same way as [`impl_control_store!`].
macro_rules! impl_vault_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::VaultStore for $store {
            async fn master_key_id(&self) -> Result<Option<String>, $crate::StoreError> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT kek_id FROM vault_master_key WHERE singleton = 1")
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.map(|(id,)| id))
            }

            async fn set_master_key_id(
                &self,
                expected: Option<&str>,
                kek_id: &str,
                at: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = match expected {
                    None => {
                        sqlx::query(
                            "INSERT INTO vault_master_key (singleton, kek_id, updated_at) \
                             VALUES (1, $1, $2) ON CONFLICT (singleton) DO NOTHING",
                        )
                        .bind(kek_id)
                        .bind(at)
                        .execute(&self.write)
                        .await?
                    }
                    Some(expected) => {
                        sqlx::query(
                            "UPDATE vault_master_key SET kek_id = $1, updated_at = $2 \
                             WHERE singleton = 1 AND kek_id = $3",
                        )
                        .bind(kek_id)
                        .bind(at)
                        .bind(expected)
                        .execute(&self.write)
                        .await?
                    }
                };
                Ok(result.rows_affected() == 1)
            }

            async fn data_keys(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<$crate::WrappedDataKey>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, version, kek_id, wrapped, created_at FROM vault_data_keys \
                     WHERE tenant_id = $1 ORDER BY version",
                )
                .bind(tenant.0)
                .fetch_all(&self.read)
                .await?)
            }

            async fn insert_data_key(
                &self,
                key: &$crate::WrappedDataKey,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO vault_data_keys (tenant_id, version, kek_id, wrapped, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(key.tenant_id.0)
                .bind(key.version)
                .bind(key.kek_id.as_str())
                .bind(key.wrapped.as_slice())
                .bind(key.created_at)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => {
                        Err($crate::StoreError::Duplicate(format!(
                            "data key version {} of tenant {}",
                            key.version, key.tenant_id
                        )))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn rewrap_data_key(
                &self,
                key: &$crate::WrappedDataKey,
                old_kek_id: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE vault_data_keys SET kek_id = $3, wrapped = $4 \
                     WHERE tenant_id = $1 AND version = $2 AND kek_id = $5",
                )
                .bind(key.tenant_id.0)
                .bind(key.version)
                .bind(key.kek_id.as_str())
                .bind(key.wrapped.as_slice())
                .bind(old_kek_id)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn data_keys_wrapped_by(
                &self,
                kek_id: &str,
                limit: u32,
            ) -> Result<Vec<$crate::WrappedDataKey>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, version, kek_id, wrapped, created_at FROM vault_data_keys \
                     WHERE kek_id = $1 ORDER BY tenant_id, version LIMIT $2",
                )
                .bind(kek_id)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn data_keys_by_kek(&self) -> Result<Vec<(String, i64)>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT kek_id, COUNT(*) FROM (SELECT kek_id FROM vault_data_keys UNION ALL \
                     SELECT kek_id FROM departed_tenants WHERE kek_id IS NOT NULL) k \
                     GROUP BY kek_id ORDER BY kek_id",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_data_keys(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<u64, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM vault_data_keys WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected())
            }

            async fn delete_data_keys_below(
                &self,
                tenant: bulkhead_model::TenantId,
                version: i64,
            ) -> Result<u64, $crate::StoreError> {
                let result =
                    sqlx::query("DELETE FROM vault_data_keys WHERE tenant_id = $1 AND version < $2")
                        .bind(tenant.0)
                        .bind(version)
                        .execute(&self.write)
                        .await?;
                Ok(result.rows_affected())
            }

            async fn insert_secret(
                &self,
                secret: &$crate::SecretVersion,
            ) -> Result<i64, $crate::StoreError> {
                let result: Result<(i64,), sqlx::Error> = sqlx::query_as(
                    "INSERT INTO vault_secrets (tenant_id, path, version, key_version, ciphertext, \
                     size, created_at, created_by) \
                     SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5, $6, $7 \
                     FROM vault_secrets WHERE tenant_id = $1 AND path = $2 \
                     RETURNING version",
                )
                .bind(secret.tenant_id.0)
                .bind(secret.path.as_str())
                .bind(secret.key_version)
                .bind(secret.ciphertext.as_slice())
                .bind(secret.size)
                .bind(secret.created_at)
                .bind(secret.created_by.as_str())
                .fetch_one(&self.write)
                .await;
                match result {
                    Ok((version,)) => Ok(version),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => Err(
                        $crate::StoreError::Duplicate(format!("a version of {}", secret.path)),
                    ),
                    Err(e) => Err(e.into()),
                }
            }

            async fn prune_secret(
                &self,
                tenant: bulkhead_model::TenantId,
                path: &str,
                keep: u32,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "DELETE FROM vault_secrets WHERE tenant_id = $1 AND path = $2 AND version <= \
                     (SELECT MAX(version) FROM vault_secrets WHERE tenant_id = $1 AND path = $2) \
                     - $3",
                )
                .bind(tenant.0)
                .bind(path)
                .bind(i64::from(keep))
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn secret(
                &self,
                tenant: bulkhead_model::TenantId,
                path: &str,
                version: Option<i64>,
            ) -> Result<Option<$crate::SecretVersion>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, path, version, key_version, ciphertext, size, created_at, \
                     created_by FROM vault_secrets WHERE tenant_id = $1 AND path = $2 \
                     AND ($3 IS NULL OR version = $3) ORDER BY version DESC LIMIT 1",
                )
                .bind(tenant.0)
                .bind(path)
                .bind(version)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn list_secrets(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<$crate::SecretSummary>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT s.path, s.version AS latest_version, \
                     (SELECT COUNT(*) FROM vault_secrets c \
                      WHERE c.tenant_id = s.tenant_id AND c.path = s.path) AS versions, \
                     s.size, s.created_at AS updated_at \
                     FROM vault_secrets s WHERE s.tenant_id = $1 AND s.version = \
                     (SELECT MAX(m.version) FROM vault_secrets m \
                      WHERE m.tenant_id = s.tenant_id AND m.path = s.path) \
                     ORDER BY s.path",
                )
                .bind(tenant.0)
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_secret(
                &self,
                tenant: bulkhead_model::TenantId,
                path: &str,
            ) -> Result<u64, $crate::StoreError> {
                let result =
                    sqlx::query("DELETE FROM vault_secrets WHERE tenant_id = $1 AND path = $2")
                        .bind(tenant.0)
                        .bind(path)
                        .execute(&self.write)
                        .await?;
                Ok(result.rows_affected())
            }

            async fn secrets_below_key_version(
                &self,
                tenant: bulkhead_model::TenantId,
                key_version: i64,
                limit: u32,
            ) -> Result<Vec<$crate::SecretVersion>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, path, version, key_version, ciphertext, size, created_at, \
                     created_by FROM vault_secrets WHERE tenant_id = $1 AND key_version < $2 \
                     ORDER BY path, version LIMIT $3",
                )
                .bind(tenant.0)
                .bind(key_version)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn reencrypt_secret(
                &self,
                secret: &$crate::SecretVersion,
                old_key_version: i64,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE vault_secrets SET key_version = $4, ciphertext = $5 \
                     WHERE tenant_id = $1 AND path = $2 AND version = $3 AND key_version = $6",
                )
                .bind(secret.tenant_id.0)
                .bind(secret.path.as_str())
                .bind(secret.version)
                .bind(secret.key_version)
                .bind(secret.ciphertext.as_slice())
                .bind(old_key_version)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn insert_blob(
                &self,
                blob: &$crate::SealedBlob,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO vault_blobs (tenant_id, label, key_version, ciphertext, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(blob.tenant_id.0)
                .bind(blob.label.as_str())
                .bind(blob.key_version)
                .bind(blob.ciphertext.as_slice())
                .bind(blob.created_at)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => {
                        Err($crate::StoreError::Duplicate(format!("sealed blob {}", blob.label)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn blob(
                &self,
                tenant: bulkhead_model::TenantId,
                label: &str,
            ) -> Result<Option<$crate::SealedBlob>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, label, key_version, ciphertext, created_at FROM vault_blobs \
                     WHERE tenant_id = $1 AND label = $2",
                )
                .bind(tenant.0)
                .bind(label)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn delete_blob(
                &self,
                tenant: bulkhead_model::TenantId,
                label: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result =
                    sqlx::query("DELETE FROM vault_blobs WHERE tenant_id = $1 AND label = $2")
                        .bind(tenant.0)
                        .bind(label)
                        .execute(&self.write)
                        .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn blobs_below_key_version(
                &self,
                tenant: bulkhead_model::TenantId,
                key_version: i64,
                limit: u32,
            ) -> Result<Vec<$crate::SealedBlob>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, label, key_version, ciphertext, created_at FROM vault_blobs \
                     WHERE tenant_id = $1 AND key_version < $2 ORDER BY label LIMIT $3",
                )
                .bind(tenant.0)
                .bind(key_version)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn reseal_blob(
                &self,
                blob: &$crate::SealedBlob,
                old_key_version: i64,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE vault_blobs SET key_version = $3, ciphertext = $4 \
                     WHERE tenant_id = $1 AND label = $2 AND key_version = $5",
                )
                .bind(blob.tenant_id.0)
                .bind(blob.label.as_str())
                .bind(blob.key_version)
                .bind(blob.ciphertext.as_slice())
                .bind(old_key_version)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn insert_lease(&self, lease: &$crate::Lease) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO vault_leases (id, tenant_id, region, database, role, access, \
                     issued_by, issued_at, expires_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(lease.id)
                .bind(lease.tenant_id.0)
                .bind(lease.region.as_str())
                .bind(lease.database.as_str())
                .bind(lease.role.as_str())
                .bind(lease.access.as_str())
                .bind(lease.issued_by.as_str())
                .bind(lease.issued_at)
                .bind(lease.expires_at)
                .bind(lease.revoked_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn lease(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::Lease>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::vault::lease_columns!(),
                    " FROM vault_leases WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn leases(
                &self,
                tenant: bulkhead_model::TenantId,
                revoked: bool,
            ) -> Result<Vec<$crate::Lease>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::vault::lease_columns!(),
                    " FROM vault_leases WHERE tenant_id = $1 AND ($2 OR revoked_at IS NULL) \
                     ORDER BY issued_at DESC, id"
                ))
                .bind(tenant.0)
                .bind(revoked)
                .fetch_all(&self.read)
                .await?)
            }

            async fn expired_leases(
                &self,
                now: time::OffsetDateTime,
                limit: u32,
                per_tenant: u32,
            ) -> Result<Vec<$crate::Lease>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::vault::lease_columns!(),
                    " FROM (SELECT *, COALESCE(next_attempt_at, expires_at) AS due, \
                       ROW_NUMBER() OVER (PARTITION BY tenant_id \
                         ORDER BY attempts > 0, COALESCE(next_attempt_at, expires_at), id) AS nth \
                     FROM vault_leases WHERE revoked_at IS NULL \
                       AND ((expires_at <= $1 AND next_attempt_at IS NULL) \
                         OR next_attempt_at <= $1)) AS due_leases \
                     WHERE nth <= $3 ORDER BY attempts > 0, due, id LIMIT $2"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .bind(i64::from(per_tenant))
                .fetch_all(&self.read)
                .await?)
            }

            async fn record_lease_failure(
                &self,
                id: uuid::Uuid,
                attempts: i32,
                next_attempt_at: time::OffsetDateTime,
                error: &str,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE vault_leases SET attempts = $2, next_attempt_at = $3, last_error = $4 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(attempts)
                .bind(next_attempt_at)
                .bind(error)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn leases_to_disable(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::Lease>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::vault::lease_columns!(),
                    " FROM vault_leases WHERE revoked_at IS NULL AND disabled_at IS NULL \
                     AND tenant_id IN (SELECT id FROM tenants WHERE state = 'suspended') \
                     ORDER BY issued_at, id LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn leases_to_enable(
                &self,
                now: time::OffsetDateTime,
                limit: u32,
            ) -> Result<Vec<$crate::Lease>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::vault::lease_columns!(),
                    " FROM vault_leases WHERE revoked_at IS NULL AND disabled_at IS NOT NULL \
                     AND expires_at > $1 AND attempts = 0 \
                     AND tenant_id IN (SELECT id FROM tenants WHERE state = 'active') \
                     ORDER BY issued_at, id LIMIT $2"
                ))
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn set_lease_disabled(
                &self,
                id: uuid::Uuid,
                at: Option<time::OffsetDateTime>,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE vault_leases SET disabled_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn stuck_leases(&self) -> Result<u64, $crate::StoreError> {
                let (count,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM vault_leases \
                     WHERE revoked_at IS NULL AND attempts > 0",
                )
                .fetch_one(&self.read)
                .await?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            async fn extend_lease(
                &self,
                id: uuid::Uuid,
                expires_at: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE vault_leases SET expires_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(expires_at)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn leases_issued_by(
                &self,
                prefix: &str,
            ) -> Result<Vec<$crate::Lease>, $crate::StoreError> {
                // substr rather than LIKE: `_` and `%` in a prefix are
                // characters, not wildcards.
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::vault::lease_columns!(),
                    " FROM vault_leases WHERE revoked_at IS NULL \
                     AND substr(issued_by, 1, length($1)) = $1 ORDER BY issued_at, id"
                ))
                .bind(prefix)
                .fetch_all(&self.read)
                .await?)
            }

            async fn mark_lease_revoked(
                &self,
                id: uuid::Uuid,
                at: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE vault_leases SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn lockouts(&self) -> Result<Vec<$crate::Lockout>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT principal, reason, locked_at FROM vault_lockouts ORDER BY locked_at",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn is_locked_out(&self, principal: &str) -> Result<bool, $crate::StoreError> {
                let found: Option<(i32,)> =
                    sqlx::query_as("SELECT 1 FROM vault_lockouts WHERE principal = $1")
                        .bind(principal)
                        .fetch_optional(&self.read)
                        .await?;
                Ok(found.is_some())
            }

            async fn insert_lockout(
                &self,
                lockout: &$crate::Lockout,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO vault_lockouts (principal, reason, locked_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (principal) DO NOTHING",
                )
                .bind(lockout.principal.as_str())
                .bind(lockout.reason.as_str())
                .bind(lockout.locked_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn delete_lockout(&self, principal: &str) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM vault_lockouts WHERE principal = $1")
                    .bind(principal)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected() == 1)
            }
        }
    };
}
pub(crate) use impl_vault_store;

/// Identity's statements, shared the same way as [`impl_control_store!`].
macro_rules! impl_identity_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::IdentityStore for $store {
            async fn ensure_realm(
                &self,
                realm: &$crate::RealmRecord,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO identity_realms (tenant_id, algorithm, default_ttl_secs, \
                     max_ttl_secs, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(realm.tenant_id.0)
                .bind(realm.algorithm.as_str())
                .bind(realm.default_ttl_secs)
                .bind(realm.max_ttl_secs)
                .bind(realm.created_at)
                .bind(realm.updated_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn realm(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Option<$crate::RealmRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, algorithm, default_ttl_secs, max_ttl_secs, \
                     tokens_not_before, created_at, updated_at FROM identity_realms \
                     WHERE tenant_id = $1",
                )
                .bind(tenant.0)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn delete_realm(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query("DELETE FROM identity_realms WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn set_realm_tokens_not_before(
                &self,
                tenant: bulkhead_model::TenantId,
                at: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE identity_realms SET tokens_not_before = $2, updated_at = $2 \
                     WHERE tenant_id = $1",
                )
                .bind(tenant.0)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn set_realm_algorithm(
                &self,
                tenant: bulkhead_model::TenantId,
                algorithm: &str,
                at: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE identity_realms SET algorithm = $2, updated_at = $3 WHERE tenant_id = $1",
                )
                .bind(tenant.0)
                .bind(algorithm)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn insert_realm_key(
                &self,
                key: &$crate::RealmKeyRecord,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO identity_keys (tenant_id, kid, algorithm, public_jwk, created_at, \
                     retired_at, remove_after) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(key.tenant_id.0)
                .bind(key.kid.as_str())
                .bind(key.algorithm.as_str())
                .bind(key.public_jwk.as_str())
                .bind(key.created_at)
                .bind(key.retired_at)
                .bind(key.remove_after)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => {
                        Err($crate::StoreError::Duplicate(format!("realm key {}", key.kid)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn realm_keys(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<$crate::RealmKeyRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, kid, algorithm, public_jwk, created_at, retired_at, \
                     remove_after FROM identity_keys WHERE tenant_id = $1 \
                     ORDER BY created_at, kid",
                )
                .bind(tenant.0)
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_realm_keys(
                &self,
            ) -> Result<Vec<$crate::RealmKeyRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, kid, algorithm, public_jwk, created_at, retired_at, \
                     remove_after FROM identity_keys ORDER BY tenant_id, created_at, kid",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_realms(&self) -> Result<Vec<$crate::RealmRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, algorithm, default_ttl_secs, max_ttl_secs, \
                     tokens_not_before, created_at, updated_at FROM identity_realms",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_trusts(&self) -> Result<Vec<$crate::TrustRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, issuer, jwks_url, audience, subject_claim, roles_claim, \
                     role_map, updated_at FROM identity_trusts",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_unrevoked_api_keys(
                &self,
            ) -> Result<Vec<$crate::ApiKeyRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::identity::api_key_columns!(),
                    " FROM identity_api_keys WHERE revoked_at IS NULL"
                ))
                .fetch_all(&self.read)
                .await?)
            }

            async fn retire_realm_keys(
                &self,
                tenant: bulkhead_model::TenantId,
                except: &str,
                at: time::OffsetDateTime,
                remove_after: time::OffsetDateTime,
            ) -> Result<u64, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE identity_keys SET retired_at = $3, remove_after = $4 \
                     WHERE tenant_id = $1 AND kid <> $2 AND retired_at IS NULL",
                )
                .bind(tenant.0)
                .bind(except)
                .bind(at)
                .bind(remove_after)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected())
            }

            async fn expired_realm_keys(
                &self,
                tenant: bulkhead_model::TenantId,
                now: time::OffsetDateTime,
            ) -> Result<Vec<String>, $crate::StoreError> {
                let expired: Vec<(String,)> = sqlx::query_as(
                    "SELECT kid FROM identity_keys WHERE tenant_id = $1 AND remove_after <= $2",
                )
                .bind(tenant.0)
                .bind(now)
                .fetch_all(&self.read)
                .await?;
                Ok(expired.into_iter().map(|(kid,)| kid).collect())
            }

            async fn delete_realm_key(
                &self,
                tenant: bulkhead_model::TenantId,
                kid: &str,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query("DELETE FROM identity_keys WHERE tenant_id = $1 AND kid = $2")
                    .bind(tenant.0)
                    .bind(kid)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn delete_realm_keys(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<String>, $crate::StoreError> {
                let removed: Vec<(String,)> =
                    sqlx::query_as("DELETE FROM identity_keys WHERE tenant_id = $1 RETURNING kid")
                        .bind(tenant.0)
                        .fetch_all(&self.write)
                        .await?;
                Ok(removed.into_iter().map(|(kid,)| kid).collect())
            }

            async fn set_trust(&self, trust: &$crate::TrustRecord) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO identity_trusts (tenant_id, issuer, jwks_url, audience, \
                     subject_claim, roles_claim, role_map, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (tenant_id) DO UPDATE SET issuer = $2, jwks_url = $3, \
                     audience = $4, subject_claim = $5, roles_claim = $6, role_map = $7, \
                     updated_at = $8",
                )
                .bind(trust.tenant_id.0)
                .bind(trust.issuer.as_str())
                .bind(trust.jwks_url.as_str())
                .bind(trust.audience.as_str())
                .bind(trust.subject_claim.as_str())
                .bind(trust.roles_claim.as_str())
                .bind(trust.role_map.as_str())
                .bind(trust.updated_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn trust(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Option<$crate::TrustRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, issuer, jwks_url, audience, subject_claim, roles_claim, \
                     role_map, updated_at FROM identity_trusts WHERE tenant_id = $1",
                )
                .bind(tenant.0)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn delete_trust(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM identity_trusts WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn insert_api_key(
                &self,
                key: &$crate::ApiKeyRecord,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(concat!(
                    "INSERT INTO identity_api_keys (",
                    $crate::identity::api_key_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ))
                .bind(key.id)
                .bind(key.tenant_id.0)
                .bind(key.name.as_str())
                .bind(key.prefix.as_str())
                .bind(key.key_hash.as_slice())
                .bind(key.roles.as_str())
                .bind(key.created_by.as_str())
                .bind(key.created_at)
                .bind(key.last_used_at)
                .bind(key.revoked_at)
                .bind(key.expires_at)
                .bind(key.from_token)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => Err(
                        $crate::StoreError::Duplicate(format!("an API key named {:?}", key.name)),
                    ),
                    Err(e) => Err(e.into()),
                }
            }

            async fn api_key_by_hash(
                &self,
                hash: &[u8],
            ) -> Result<Option<$crate::ApiKeyRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::identity::api_key_columns!(),
                    " FROM identity_api_keys WHERE key_hash = $1"
                ))
                .bind(hash)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn api_keys(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<$crate::ApiKeyRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    $crate::identity::api_key_columns!(),
                    " FROM identity_api_keys WHERE tenant_id = $1 ORDER BY name"
                ))
                .bind(tenant.0)
                .fetch_all(&self.read)
                .await?)
            }

            async fn revoke_api_key(
                &self,
                tenant: bulkhead_model::TenantId,
                id: uuid::Uuid,
                at: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE identity_api_keys SET revoked_at = $3 \
                     WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
                )
                .bind(tenant.0)
                .bind(id)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn revoke_token_made_api_keys(
                &self,
                tenant: bulkhead_model::TenantId,
                at: time::OffsetDateTime,
            ) -> Result<u64, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE identity_api_keys SET revoked_at = $2 \
                     WHERE tenant_id = $1 AND from_token AND created_at <= $2 \
                       AND revoked_at IS NULL",
                )
                .bind(tenant.0)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected())
            }

            async fn touch_api_key(
                &self,
                id: uuid::Uuid,
                at: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE identity_api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn delete_api_key(
                &self,
                tenant: bulkhead_model::TenantId,
                id: uuid::Uuid,
            ) -> Result<bool, $crate::StoreError> {
                let result =
                    sqlx::query("DELETE FROM identity_api_keys WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant.0)
                        .bind(id)
                        .execute(&self.write)
                        .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn delete_api_keys(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<u64, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM identity_api_keys WHERE tenant_id = $1")
                    .bind(tenant.0)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected())
            }
        }
    };
}
pub(crate) use impl_identity_store;

/// The audit streams' statements, the same on both databases but for the
/// bulk insert of events (`insert_audit_events`: one statement per batch,
/// written the fastest way each database has) and retention
/// (`truncate_audit_rows`).
macro_rules! impl_audit_store {
    ($store:ty, $db:ty, $schema:literal) => {
        #[async_trait::async_trait]
        impl $crate::AuditStore for $store {
            async fn audit_head(
                &self,
                stream: &str,
            ) -> Result<Option<(i64, Vec<u8>)>, $crate::StoreError> {
                let last: Option<(i64, Vec<u8>)> = sqlx::query_as(concat!(
                    "SELECT seq, hash FROM ",
                    $schema,
                    "audit_events WHERE stream = $1 \
                     ORDER BY seq DESC LIMIT 1"
                ))
                .bind(stream)
                .fetch_optional(&self.write)
                .await?;
                if last.is_some() {
                    return Ok(last);
                }
                Ok(sqlx::query_as(concat!(
                    "SELECT seq, head FROM ",
                    $schema,
                    "audit_checkpoints WHERE stream = $1 \
                     AND kind = 'truncation' ORDER BY seq DESC LIMIT 1"
                ))
                .bind(stream)
                .fetch_optional(&self.write)
                .await?)
            }

            async fn audit_last_checkpoint(
                &self,
                stream: &str,
            ) -> Result<Option<i64>, $crate::StoreError> {
                let row: Option<(Option<i64>,)> = sqlx::query_as(concat!(
                    "SELECT MAX(seq) FROM ",
                    $schema,
                    "audit_checkpoints WHERE stream = $1"
                ))
                .bind(stream)
                .fetch_optional(&self.write)
                .await?;
                Ok(row.and_then(|(seq,)| seq))
            }

            async fn audit_signed_head(
                &self,
                stream: &str,
            ) -> Result<Option<$crate::AuditCheckpointRow>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT stream, seq, head, time, 'periodic' AS kind, key_id, signature \
                     FROM audit_heads WHERE stream = $1",
                )
                .bind(stream)
                .fetch_optional(&self.write)
                .await?)
            }

            async fn audit_has_macs(&self, stream: &str) -> Result<bool, $crate::StoreError> {
                let found: Option<(i32,)> = sqlx::query_as(concat!(
                    "SELECT 1 FROM ",
                    $schema,
                    "audit_events WHERE stream = $1 AND mac IS NOT NULL LIMIT 1"
                ))
                .bind(stream)
                .fetch_optional(&self.write)
                .await?;
                Ok(found.is_some())
            }

            async fn set_audit_signed_head(
                &self,
                head: &$crate::AuditCheckpointRow,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO audit_heads (stream, seq, head, time, key_id, signature) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq, head = excluded.head, \
                       time = excluded.time, key_id = excluded.key_id, \
                       signature = excluded.signature \
                     WHERE audit_heads.seq <= excluded.seq",
                )
                .bind(head.stream.as_str())
                .bind(head.seq)
                .bind(head.head.as_slice())
                .bind(head.time.as_str())
                .bind(head.key_id.as_str())
                .bind(head.signature.as_slice())
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn append_audit(
                &self,
                events: &[$crate::AuditEventRow],
                checkpoints: &[$crate::AuditCheckpointRow],
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.write.begin().await?;
                Self::insert_audit_events(&mut tx, events).await?;
                for chunk in checkpoints.chunks($crate::audit::AUDIT_ROWS_PER_STATEMENT) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(concat!(
                        "INSERT INTO ",
                        $schema,
                        "audit_checkpoints (stream, seq, head, time, kind, key_id, \
                         signature) "
                    ));
                    insert.push_values(chunk, |mut row, c| {
                        row.push_bind(c.stream.as_str())
                            .push_bind(c.seq)
                            .push_bind(c.head.as_slice())
                            .push_bind(c.time.as_str())
                            .push_bind(c.kind.as_str())
                            .push_bind(c.key_id.as_str())
                            .push_bind(c.signature.as_slice());
                    });
                    insert.build().persistent(false).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn audit_events(
                &self,
                stream: &str,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::AuditEventRow>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT stream, seq, time, actor_kind, actor_id, action, resource, outcome, \
                     request_id, details, prev_hash, hash, mac, mac_key_id FROM ",
                    $schema,
                    "audit_events \
                     WHERE stream = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ))
                .bind(stream)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn audit_checkpoints(
                &self,
                stream: &str,
                from: i64,
                to: i64,
            ) -> Result<Vec<$crate::AuditCheckpointRow>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT stream, seq, head, time, kind, key_id, signature \
                     FROM ",
                    $schema,
                    "audit_checkpoints WHERE stream = $1 AND seq >= $2 AND seq <= $3 \
                     ORDER BY seq, kind"
                ))
                .bind(stream)
                .bind(from)
                .bind(to)
                .fetch_all(&self.read)
                .await?)
            }

            async fn audit_checkpoint_before(
                &self,
                stream: &str,
                seq: i64,
            ) -> Result<Option<$crate::AuditCheckpointRow>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT stream, seq, head, time, kind, key_id, signature \
                     FROM ",
                    $schema,
                    "audit_checkpoints WHERE stream = $1 AND seq <= $2 \
                     ORDER BY seq DESC, kind DESC LIMIT 1"
                ))
                .bind(stream)
                .bind(seq)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn audit_first_seq_since(
                &self,
                stream: &str,
                time: &str,
            ) -> Result<Option<i64>, $crate::StoreError> {
                let row: Option<(i64,)> = sqlx::query_as(concat!(
                    "SELECT seq FROM ",
                    $schema,
                    "audit_events WHERE stream = $1 AND time >= $2 \
                     ORDER BY seq LIMIT 1"
                ))
                .bind(stream)
                .bind(time)
                .fetch_optional(&self.read)
                .await?;
                Ok(row.map(|(seq,)| seq))
            }

            async fn audit_last_event_before(
                &self,
                stream: &str,
                time: &str,
            ) -> Result<Option<$crate::AuditEventRow>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT stream, seq, time, actor_kind, actor_id, action, resource, outcome, \
                     request_id, details, prev_hash, hash, mac, mac_key_id FROM ",
                    $schema,
                    "audit_events \
                     WHERE stream = $1 AND time < $2 ORDER BY seq DESC LIMIT 1"
                ))
                .bind(stream)
                .bind(time)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn audit_streams(&self) -> Result<Vec<String>, $crate::StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(concat!(
                    "SELECT DISTINCT stream FROM ",
                    $schema,
                    "audit_events ORDER BY stream"
                ))
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(|(stream,)| stream).collect())
            }

            async fn insert_audit_key(
                &self,
                key: &$crate::AuditKeyRow,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(concat!(
                    "INSERT INTO ",
                    $schema,
                    "audit_keys (stream, key_id, public_key, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (stream, key_id) DO NOTHING"
                ))
                .bind(key.stream.as_str())
                .bind(key.key_id.as_str())
                .bind(key.public_key.as_str())
                .bind(key.created_at.as_str())
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn audit_keys(
                &self,
                stream: &str,
            ) -> Result<Vec<$crate::AuditKeyRow>, $crate::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT stream, key_id, public_key, created_at FROM ",
                    $schema,
                    "audit_keys \
                     WHERE stream = $1 ORDER BY created_at, key_id"
                ))
                .bind(stream)
                .fetch_all(&self.read)
                .await?)
            }

            async fn truncate_audit(
                &self,
                checkpoint: &$crate::AuditCheckpointRow,
            ) -> Result<u64, $crate::StoreError> {
                self.truncate_audit_rows(checkpoint).await
            }

            async fn audit_tamper_risk(&self) -> Result<Option<String>, $crate::StoreError> {
                self.audit_tamper_risk_of_role().await
            }
        }
    };
}
pub(crate) use impl_audit_store;

/// The APIs' statements, shared the same way as [`impl_control_store!`].
macro_rules! impl_api_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::ApiStore for $store {
            async fn put_api(&self, api: &$crate::ApiRecord) -> Result<bool, $crate::StoreError> {
                // `created_at` survives a replacement: the row's insert and
                // update tell the two apart (RETURNING is on both backends).
                let (created,): (bool,) = sqlx::query_as(
                    "INSERT INTO apis (tenant_id, name, spec, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, name) DO UPDATE SET spec = $3, updated_at = $5 \
                     RETURNING created_at = updated_at",
                )
                .bind(api.tenant_id.0)
                .bind(api.name.as_str())
                .bind(api.spec.as_str())
                .bind(api.created_at)
                .bind(api.updated_at)
                .fetch_one(&self.write)
                .await?;
                Ok(created)
            }

            async fn api(
                &self,
                tenant: bulkhead_model::TenantId,
                name: &str,
            ) -> Result<Option<$crate::ApiRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, name, spec, created_at, updated_at FROM apis \
                     WHERE tenant_id = $1 AND name = $2",
                )
                .bind(tenant.0)
                .bind(name)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn apis(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<$crate::ApiRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, name, spec, created_at, updated_at FROM apis \
                     WHERE tenant_id = $1 ORDER BY name",
                )
                .bind(tenant.0)
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_apis(&self) -> Result<Vec<$crate::ApiRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, name, spec, created_at, updated_at FROM apis \
                     ORDER BY tenant_id, name",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_api(
                &self,
                tenant: bulkhead_model::TenantId,
                name: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM apis WHERE tenant_id = $1 AND name = $2")
                    .bind(tenant.0)
                    .bind(name)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected() == 1)
            }
        }
    };
}
pub(crate) use impl_api_store;

/// The resources' statements, shared the same way as [`impl_control_store!`].
macro_rules! impl_resource_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::ResourceStore for $store {
            async fn put_resource(
                &self,
                resource: &$crate::ResourceRecord,
            ) -> Result<bool, $crate::StoreError> {
                // As `put_api`: the insert and the update tell themselves apart.
                let (created,): (bool,) = sqlx::query_as(
                    "INSERT INTO tenant_resources \
                     (tenant_id, kind, name, spec, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (tenant_id, kind, name) DO UPDATE SET spec = $4, updated_at = $6 \
                     RETURNING created_at = updated_at",
                )
                .bind(resource.tenant_id.0)
                .bind(resource.kind.as_str())
                .bind(resource.name.as_str())
                .bind(resource.spec.as_str())
                .bind(resource.created_at)
                .bind(resource.updated_at)
                .fetch_one(&self.write)
                .await?;
                Ok(created)
            }

            async fn resource(
                &self,
                tenant: bulkhead_model::TenantId,
                kind: &str,
                name: &str,
            ) -> Result<Option<$crate::ResourceRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, kind, name, spec, created_at, updated_at \
                     FROM tenant_resources WHERE tenant_id = $1 AND kind = $2 AND name = $3",
                )
                .bind(tenant.0)
                .bind(kind)
                .bind(name)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn resources(
                &self,
                tenant: bulkhead_model::TenantId,
                kind: &str,
            ) -> Result<Vec<$crate::ResourceRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, kind, name, spec, created_at, updated_at \
                     FROM tenant_resources WHERE tenant_id = $1 AND kind = $2 ORDER BY name",
                )
                .bind(tenant.0)
                .bind(kind)
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_resources(
                &self,
                kind: &str,
            ) -> Result<Vec<$crate::ResourceRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, kind, name, spec, created_at, updated_at \
                     FROM tenant_resources WHERE kind = $1 ORDER BY tenant_id, name",
                )
                .bind(kind)
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_resource(
                &self,
                tenant: bulkhead_model::TenantId,
                kind: &str,
                name: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "DELETE FROM tenant_resources WHERE tenant_id = $1 AND kind = $2 AND name = $3",
                )
                .bind(tenant.0)
                .bind(kind)
                .bind(name)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }
        }
    };
}
pub(crate) use impl_resource_store;

/// The apps' statements, shared the same way as [`impl_control_store!`].
macro_rules! impl_app_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::AppStore for $store {
            async fn put_app(&self, app: &$crate::AppRecord) -> Result<bool, $crate::StoreError> {
                if app.revision == 0 {
                    let inserted = sqlx::query(
                        "INSERT INTO apps (tenant_id, name, spec, previous, running, pinned, created_at, updated_at, live, revision) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1)",
                    )
                    .bind(app.tenant_id.0)
                    .bind(app.name.as_str())
                    .bind(app.spec.as_str())
                    .bind(app.previous.as_deref())
                    .bind(app.running)
                    .bind(app.pinned)
                    .bind(app.created_at)
                    .bind(app.updated_at)
                    .bind(app.live.as_deref())
                    .execute(&self.write)
                    .await;
                    return match inserted {
                        Ok(_) => Ok(true),
                        Err(e) if $crate::StoreError::is_unique_violation(&e) => {
                            Err($crate::StoreError::VersionConflict)
                        }
                        Err(e) => Err(e.into()),
                    };
                }
                let updated = sqlx::query(
                    "UPDATE apps SET spec = $3, previous = $4, running = $5, pinned = $6, updated_at = $7, \
                     live = $8, revision = revision + 1 \
                     WHERE tenant_id = $1 AND name = $2 AND revision = $9",
                )
                .bind(app.tenant_id.0)
                .bind(app.name.as_str())
                .bind(app.spec.as_str())
                .bind(app.previous.as_deref())
                .bind(app.running)
                .bind(app.pinned)
                .bind(app.updated_at)
                .bind(app.live.as_deref())
                .bind(app.revision)
                .execute(&self.write)
                .await?;
                if updated.rows_affected() == 1 {
                    Ok(false)
                } else {
                    Err($crate::StoreError::VersionConflict)
                }
            }

            async fn app(
                &self,
                tenant: bulkhead_model::TenantId,
                name: &str,
            ) -> Result<Option<$crate::AppRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, name, spec, previous, live, revision, running, pinned, created_at, updated_at \
                     FROM apps WHERE tenant_id = $1 AND name = $2",
                )
                .bind(tenant.0)
                .bind(name)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn apps(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<$crate::AppRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, name, spec, previous, live, revision, running, pinned, created_at, updated_at \
                     FROM apps WHERE tenant_id = $1 ORDER BY name",
                )
                .bind(tenant.0)
                .fetch_all(&self.read)
                .await?)
            }

            async fn all_apps(&self) -> Result<Vec<$crate::AppRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, name, spec, previous, live, revision, running, pinned, created_at, updated_at \
                     FROM apps ORDER BY tenant_id, name",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn promote_app(
                &self,
                tenant: bulkhead_model::TenantId,
                name: &str,
                spec: &str,
                now: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE apps SET live = spec, updated_at = $4, revision = revision + 1 \
                     WHERE tenant_id = $1 AND name = $2 AND spec = $3 AND live IS DISTINCT FROM spec",
                )
                .bind(tenant.0)
                .bind(name)
                .bind(spec)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn revert_app(
                &self,
                tenant: bulkhead_model::TenantId,
                name: &str,
                spec: &str,
                now: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "UPDATE apps SET previous = spec, spec = live, updated_at = $4, revision = revision + 1 \
                     WHERE tenant_id = $1 AND name = $2 AND spec = $3 AND live IS NOT NULL AND live <> spec",
                )
                .bind(tenant.0)
                .bind(name)
                .bind(spec)
                .bind(now)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn put_rollout(
                &self,
                rollout: &$crate::RolloutRecord,
            ) -> Result<(), $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO rollouts (id, app, state, body, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET state = $3, body = $4, updated_at = $6",
                )
                .bind(rollout.id)
                .bind(rollout.app.as_str())
                .bind(rollout.state.as_str())
                .bind(rollout.body.as_str())
                .bind(rollout.created_at)
                .bind(rollout.updated_at)
                .execute(&self.write)
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => Err(
                        $crate::StoreError::Duplicate(format!("a rollout of app {:?} under way", rollout.app)),
                    ),
                    Err(e) => Err(e.into()),
                }
            }

            async fn rollout(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::RolloutRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, app, state, body, created_at, updated_at FROM rollouts WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn rollouts(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::RolloutRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, app, state, body, created_at, updated_at FROM rollouts \
                     ORDER BY created_at DESC, id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn unfinished_rollouts(&self) -> Result<Vec<$crate::RolloutRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, app, state, body, created_at, updated_at FROM rollouts \
                     WHERE state IN ('running', 'paused', 'halted', 'aborting') ORDER BY created_at DESC, id LIMIT 1000",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_app(
                &self,
                tenant: bulkhead_model::TenantId,
                name: &str,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM apps WHERE tenant_id = $1 AND name = $2")
                    .bind(tenant.0)
                    .bind(name)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn set_flags(
                &self,
                tenant: bulkhead_model::TenantId,
                changes: &[(String, Option<String>)],
                now: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.write.begin().await?;
                for (key, value) in changes {
                    match value {
                        Some(value) => {
                            sqlx::query(
                                "INSERT INTO tenant_flags (tenant_id, key, value, updated_at) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (tenant_id, key) DO UPDATE SET value = $3, updated_at = $4",
                            )
                            .bind(tenant.0)
                            .bind(key.as_str())
                            .bind(value.as_str())
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM tenant_flags WHERE tenant_id = $1 AND key = $2")
                                .bind(tenant.0)
                                .bind(key.as_str())
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn flags(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Vec<(String, String)>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT key, value FROM tenant_flags WHERE tenant_id = $1 ORDER BY key")
                    .bind(tenant.0)
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn runtime_users(
                &self,
            ) -> Result<Vec<(bulkhead_model::TenantId, u32)>, $crate::StoreError> {
                let rows: Vec<(uuid::Uuid, i64)> =
                    sqlx::query_as("SELECT tenant_id, uid FROM runtime_users ORDER BY uid")
                        .fetch_all(&self.read)
                        .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(tenant, uid)| Some((bulkhead_model::TenantId(tenant), u32::try_from(uid).ok()?)))
                    .collect())
            }

            async fn runtime_user(
                &self,
                tenant: bulkhead_model::TenantId,
                first: u32,
                last: u32,
                now: time::OffsetDateTime,
            ) -> Result<Option<u32>, $crate::StoreError> {
                // The lowest free uid of the range: the first one, or the one
                // after a taken one. A concurrent allocation of the same uid
                // fails on the primary key and is retried.
                for _ in 0..8 {
                    let existing: Option<(i64,)> =
                        sqlx::query_as("SELECT uid FROM runtime_users WHERE tenant_id = $1")
                            .bind(tenant.0)
                            .fetch_optional(&self.write)
                            .await?;
                    if let Some((uid,)) = existing {
                        return Ok(u32::try_from(uid).ok());
                    }
                    let free: Option<(i64,)> = sqlx::query_as(
                        "SELECT c FROM (SELECT CAST($1 AS BIGINT) AS c UNION \
                         SELECT uid + 1 FROM runtime_users WHERE uid >= $1 AND uid < $2) AS candidates \
                         WHERE c NOT IN (SELECT uid FROM runtime_users) ORDER BY c LIMIT 1",
                    )
                    .bind(i64::from(first))
                    .bind(i64::from(last))
                    .fetch_optional(&self.write)
                    .await?;
                    let Some((uid,)) = free else { return Ok(None) };
                    let inserted = sqlx::query(
                        "INSERT INTO runtime_users (uid, tenant_id, allocated_at) VALUES ($1, $2, $3)",
                    )
                    .bind(uid)
                    .bind(tenant.0)
                    .bind(now)
                    .execute(&self.write)
                    .await;
                    match inserted {
                        Ok(_) => return Ok(u32::try_from(uid).ok()),
                        Err(e) if $crate::StoreError::is_unique_violation(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err($crate::StoreError::Duplicate(format!("the Unix user of tenant {} (allocations kept colliding; try again)", tenant.0)))
            }
        }
    };
}
pub(crate) use impl_app_store;

/// The usage statements, shared the same way as [`impl_control_store!`].
macro_rules! impl_usage_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::UsageStore for $store {
            async fn insert_usage(
                &self,
                records: &[$crate::UsageRecord],
                ledger: &[$crate::LedgerLine],
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.write.begin().await?;
                for record in records {
                    sqlx::query(
                        "INSERT INTO gateway_usage (tenant_id, api, minute, row) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(record.tenant_id.0)
                    .bind(record.api.as_str())
                    .bind(record.minute)
                    .bind(record.row.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                for line in ledger {
                    sqlx::query(
                        "INSERT INTO usage_ledger (tenant_id, day, api, kind, item, requests, \
                         tokens_in, tokens_out, cost_micros) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (tenant_id, day, api, kind, item) DO UPDATE SET \
                         requests = usage_ledger.requests + excluded.requests, \
                         tokens_in = usage_ledger.tokens_in + excluded.tokens_in, \
                         tokens_out = usage_ledger.tokens_out + excluded.tokens_out, \
                         cost_micros = usage_ledger.cost_micros + excluded.cost_micros",
                    )
                    .bind(line.tenant_id.0)
                    .bind(line.day.as_str())
                    .bind(line.api.as_str())
                    .bind(line.kind.as_str())
                    .bind(line.item.as_str())
                    .bind(line.requests)
                    .bind(line.tokens_in)
                    .bind(line.tokens_out)
                    .bind(line.cost_micros)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn ledger(
                &self,
                tenant: Option<bulkhead_model::TenantId>,
                from: &str,
                until: &str,
            ) -> Result<Vec<$crate::LedgerLine>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, day, api, kind, item, requests, tokens_in, tokens_out, \
                     cost_micros FROM usage_ledger \
                     WHERE day >= $1 AND day < $2 AND ($3 IS NULL OR tenant_id = $3) \
                     ORDER BY tenant_id, day, api, kind, item",
                )
                .bind(from)
                .bind(until)
                .bind(tenant.map(|t| t.0))
                .fetch_all(&self.read)
                .await?)
            }

            async fn spent(
                &self,
                tenant: bulkhead_model::TenantId,
                from: &str,
                until: &str,
            ) -> Result<u64, $crate::StoreError> {
                let (spent,): (Option<i64>,) = sqlx::query_as(
                    "SELECT CAST(SUM(cost_micros) AS BIGINT) FROM usage_ledger \
                     WHERE tenant_id = $1 AND day >= $2 AND day < $3",
                )
                .bind(tenant.0)
                .bind(from)
                .bind(until)
                .fetch_one(&self.read)
                .await?;
                Ok(u64::try_from(spent.unwrap_or(0)).unwrap_or(0))
            }

            async fn note_budget(
                &self,
                tenant: bulkhead_model::TenantId,
                period: &str,
                kind: &str,
                at: time::OffsetDateTime,
            ) -> Result<bool, $crate::StoreError> {
                let result = sqlx::query(
                    "INSERT INTO budget_notices (tenant_id, period, kind, noticed_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(tenant.0)
                .bind(period)
                .bind(kind)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn usage(
                &self,
                tenant: bulkhead_model::TenantId,
                api: Option<&str>,
                since: time::OffsetDateTime,
            ) -> Result<Vec<$crate::UsageRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, api, minute, row FROM gateway_usage \
                     WHERE tenant_id = $1 AND minute >= $2 AND ($3 IS NULL OR api = $3) \
                     ORDER BY minute, api",
                )
                .bind(tenant.0)
                .bind(since)
                .bind(api)
                .fetch_all(&self.read)
                .await?)
            }

            async fn delete_usage_before(
                &self,
                before: time::OffsetDateTime,
            ) -> Result<u64, $crate::StoreError> {
                let result = sqlx::query("DELETE FROM gateway_usage WHERE minute < $1")
                    .bind(before)
                    .execute(&self.write)
                    .await?;
                Ok(result.rows_affected())
            }

            async fn queue_decisions(
                &self,
                decisions: &[(bulkhead_model::TenantId, String)],
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.write.begin().await?;
                for (tenant, record) in decisions {
                    sqlx::query(
                        "INSERT INTO gateway_decisions (tenant_id, record) VALUES ($1, $2)",
                    )
                    .bind(tenant.0)
                    .bind(record.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn queued_decisions(
                &self,
                limit: u32,
            ) -> Result<Vec<(i64, String)>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, record FROM gateway_decisions ORDER BY id LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn dequeue_decisions(&self, up_to: i64) -> Result<(), $crate::StoreError> {
                sqlx::query("DELETE FROM gateway_decisions WHERE id <= $1")
                    .bind(up_to)
                    .execute(&self.write)
                    .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use impl_usage_store;

/// The migration jobs' statements, shared the same way as
/// [`impl_control_store!`].
macro_rules! impl_migration_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::MigrationStore for $store {
            async fn insert_migration_job(
                &self,
                job: &$crate::MigrationJobRecord,
                targets: &[$crate::MigrationTargetRecord],
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.write.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO migration_jobs (id, created_at, created_by, state, spec, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(job.id)
                .bind(job.created_at)
                .bind(job.created_by.as_str())
                .bind(job.state.as_str())
                .bind(job.spec.as_str())
                .bind(job.finished_at)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Err(e) if $crate::StoreError::is_unique_violation(&e) => {
                        return Err($crate::StoreError::Duplicate("a running migration job".into()));
                    }
                    other => other?,
                };
                for target in targets {
                    sqlx::query(
                        "INSERT INTO migration_targets (job_id, position, tenant_id, region, label, \
                         canary, state, from_version, to_version, detail, finished_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(job.id)
                    .bind(target.position)
                    .bind(target.tenant_id)
                    .bind(target.region.as_str())
                    .bind(target.label.as_str())
                    .bind(target.canary)
                    .bind(target.state.as_str())
                    .bind(target.from_version)
                    .bind(target.to_version)
                    .bind(target.detail.as_deref())
                    .bind(target.finished_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn migration_job(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::MigrationJobRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, created_at, created_by, state, spec, finished_at \
                     FROM migration_jobs WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn migration_jobs(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::MigrationJobRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, created_at, created_by, state, spec, finished_at \
                     FROM migration_jobs ORDER BY created_at DESC, id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?)
            }

            async fn migration_targets(
                &self,
                job: uuid::Uuid,
            ) -> Result<Vec<$crate::MigrationTargetRecord>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT job_id, position, tenant_id, region, label, canary, state, \
                     from_version, to_version, detail, finished_at \
                     FROM migration_targets WHERE job_id = $1 ORDER BY position",
                )
                .bind(job)
                .fetch_all(&self.read)
                .await?)
            }

            async fn update_migration_target(
                &self,
                target: &$crate::MigrationTargetRecord,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE migration_targets SET state = $3, from_version = $4, to_version = $5, \
                     detail = $6, finished_at = $7 WHERE job_id = $1 AND position = $2",
                )
                .bind(target.job_id)
                .bind(target.position)
                .bind(target.state.as_str())
                .bind(target.from_version)
                .bind(target.to_version)
                .bind(target.detail.as_deref())
                .bind(target.finished_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn finish_migration_job(
                &self,
                id: uuid::Uuid,
                state: &str,
                at: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE migration_jobs SET state = $2, finished_at = $3 \
                     WHERE id = $1 AND state = 'running'",
                )
                .bind(id)
                .bind(state)
                .bind(at)
                .execute(&self.write)
                .await?;
                Ok(())
            }
        }
    };
}
pub(crate) use impl_migration_store;

macro_rules! impl_backup_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::BackupStore for $store {
            async fn backup_runs(&self) -> Result<Vec<$crate::BackupRun>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, last_success, last_backup, last_attempt, failures, \
                     last_error, retry_at FROM backup_runs",
                )
                .fetch_all(&self.read)
                .await?)
            }

            async fn backup_run(
                &self,
                tenant: bulkhead_model::TenantId,
            ) -> Result<Option<$crate::BackupRun>, $crate::StoreError> {
                Ok(sqlx::query_as(
                    "SELECT tenant_id, last_success, last_backup, last_attempt, failures, \
                     last_error, retry_at FROM backup_runs WHERE tenant_id = $1",
                )
                .bind(tenant.0)
                .fetch_optional(&self.read)
                .await?)
            }

            async fn backup_succeeded(
                &self,
                tenant: bulkhead_model::TenantId,
                id: &str,
                at: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO backup_runs (tenant_id, last_success, last_backup, last_attempt, \
                     failures) VALUES ($1, $2, $3, $2, 0) \
                     ON CONFLICT (tenant_id) DO UPDATE SET last_success = $2, last_backup = $3, \
                     last_attempt = $2, failures = 0, last_error = NULL, retry_at = NULL",
                )
                .bind(tenant.0)
                .bind(at)
                .bind(id)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn backup_failed(
                &self,
                tenant: bulkhead_model::TenantId,
                error: &str,
                at: time::OffsetDateTime,
                retry_at: time::OffsetDateTime,
            ) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO backup_runs (tenant_id, last_attempt, failures, last_error, \
                     retry_at) VALUES ($1, $2, 1, $3, $4) \
                     ON CONFLICT (tenant_id) DO UPDATE SET last_attempt = $2, \
                     failures = backup_runs.failures + 1, last_error = $3, retry_at = $4",
                )
                .bind(tenant.0)
                .bind(at)
                .bind(error)
                .bind(retry_at)
                .execute(&self.write)
                .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_backup_store;
