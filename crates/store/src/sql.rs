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
                     version, created_at, updated_at, provisioned_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
                     provisioned_at = $15 \
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

            async fn append_event(&self, event: &$crate::NewEvent) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO events (at, tenant_id, tenant, actor, action, outcome, details) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(event.at)
                .bind(event.tenant_id.map(|id| id.0))
                .bind(event.tenant.as_deref())
                .bind(event.actor.as_str())
                .bind(event.action.as_str())
                .bind(event.outcome.as_str())
                .bind(sqlx::types::Json(&event.details))
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn events(
                &self,
                tenant: Option<bulkhead_model::TenantId>,
                limit: u32,
            ) -> Result<Vec<$crate::EventRecord>, $crate::StoreError> {
                let rows = sqlx::query_as::<_, $crate::rows::EventRow>(
                    "SELECT id, at, tenant_id, tenant, actor, action, outcome, details FROM events \
                     WHERE $1 IS NULL OR tenant_id = $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(tenant.map(|id| id.0))
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
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
