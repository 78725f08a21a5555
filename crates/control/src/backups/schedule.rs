//! The backup scheduler: each round takes every tenant's due backup, a few
//! at a time and never two of one tenant at once, backs a failing tenant
//! off on its own, and deletes scheduled backups past their tenant's
//! retention and departed tenants' final snapshots past their time.

use std::{collections::HashMap, time::Duration};

use bulkhead_backup::Listing;
use bulkhead_model::{BackupPolicy, PlanCatalog, Tenant, TenantId, TenantState};
use bulkhead_store::{BackupRun, TenantPage};
use futures_util::StreamExt;
use time::OffsetDateTime;

use super::{BackupService, BackupServiceError, Result, SCHEDULED};
use crate::events::Actor;

/// The longest a failing tenant waits before its next attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// The first retry of a failed backup waits this long; each further
/// failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);

/// How the scheduler runs (`[backup]` in bulkhead.toml).
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// How often due backups are looked for.
    pub check_every: Duration,
    /// Backups taken at once, across tenants.
    pub concurrency: usize,
    /// Tenants with a `tenant` label of their own on the backup metrics.
    pub tenant_labels: usize,
    /// How long a deleted tenant's final snapshot is kept.
    pub final_snapshot_days: u32,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            check_every: Duration::from_secs(60),
            concurrency: 2,
            tenant_labels: 100,
            final_snapshot_days: 90,
        }
    }
}

/// The policy a tenant's backups follow: its own if it set one within its
/// plan, else its plan's (none for a plan that is no longer configured).
pub fn policy(plans: &PlanCatalog, tenant: &Tenant) -> Option<BackupPolicy> {
    let plan = plans.get(tenant.plan.as_str()).ok()?;
    match &tenant.limits.backups {
        Some(own) if plan.backups.allows(own, plan.audit_retention_days).is_ok() => {
            Some(own.clone())
        }
        _ => Some(plan.backups.clone()),
    }
}

/// Whether the tenant's next scheduled backup is due at `now`.
fn due(policy: &BackupPolicy, run: Option<&BackupRun>, now: OffsetDateTime) -> bool {
    if policy.every_hours == 0 {
        return false;
    }
    let Some(run) = run else { return true };
    if run.retry_at.is_some_and(|at| now < at) {
        return false;
    }
    let every = time::Duration::hours(i64::from(policy.every_hours));
    run.last_success.is_none_or(|last| now >= last + every)
}

/// The scheduled backups of `listed` (oldest first) that `policy` no
/// longer keeps, each with the reason: beyond its count, or its age. The
/// newest is always kept: were the tenant's backups failing for longer than
/// its retention, age alone would leave it none.
fn expired<'a>(
    listed: &'a [Listing],
    policy: &BackupPolicy,
    now: OffsetDateTime,
) -> Vec<(&'a Listing, &'static str)> {
    let scheduled: Vec<&Listing> = listed.iter().filter(|l| l.kind == SCHEDULED).collect();
    let oldest_kept = now - time::Duration::days(i64::from(policy.retention_days));
    let over = scheduled.len().saturating_sub(policy.keep as usize);
    let newest = scheduled.len().saturating_sub(1);
    scheduled
        .into_iter()
        .enumerate()
        .take(newest)
        .filter_map(|(i, listing)| {
            if listing.manifest.about.taken_at().is_ok_and(|at| at < oldest_kept) {
                Some((listing, "retention_days"))
            } else if i < over {
                Some((listing, "keep"))
            } else {
                None
            }
        })
        .collect()
}

/// How long a tenant that failed `failures` times in a row waits.
fn backoff(failures: i64) -> Duration {
    let doublings = u32::try_from(failures.clamp(0, 16)).unwrap_or(16);
    FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

impl BackupService {
    /// One round of the scheduler; returns how many backups it took and
    /// deleted.
    pub async fn schedule_round(&self, settings: &ScheduleSettings) -> Result<u64> {
        let now = self.sources.clock.now();
        let runs: HashMap<TenantId, BackupRun> = self
            .sources
            .store
            .backup_runs()
            .await?
            .into_iter()
            .map(|run| (run.tenant_id, run))
            .collect();
        let tenants = self.live_tenants().await?;
        let due: Vec<(Tenant, BackupPolicy)> = tenants
            .iter()
            .filter_map(|t| policy(&self.plans, t).map(|p| (t.clone(), p)))
            .filter(|(t, p)| due(p, runs.get(&t.id), now))
            .collect();
        let taken: Vec<TenantId> = futures_util::stream::iter(due)
            .map(|(tenant, _)| async move { self.scheduled(&tenant).await.then_some(tenant.id) })
            .buffer_unordered(settings.concurrency.max(1))
            .filter_map(std::future::ready)
            .collect()
            .await;
        // Retention for the tenants just backed up, and for every tenant once
        // an hour (ages pass without new backups): listing every tenant's
        // backups each round would cost a request per backup kept.
        let sweep = {
            let mut swept =
                self.swept.lock().map_err(|_| BackupServiceError::Internal("poisoned".into()))?;
            let due = swept.is_none_or(|at| now - at >= time::Duration::hours(1));
            if due {
                *swept = Some(now);
            }
            due
        };
        let mut deleted = 0;
        for tenant in tenants.iter().filter(|t| sweep || taken.contains(&t.id)) {
            if let Some(policy) = policy(&self.plans, tenant) {
                match self.expire(tenant, &policy, now).await {
                    Ok(n) => deleted += n,
                    Err(error) => {
                        tracing::warn!(%error, tenant = %tenant.name, "cannot apply backup retention");
                    }
                }
            }
        }
        // Departed tenants' final snapshots past their time go too.
        match self.expire_departures(now).await {
            Ok(n) => deleted += n,
            Err(error) => tracing::warn!(%error, "cannot destroy expired final snapshots"),
        }
        self.publish_metrics(&tenants, settings.tenant_labels).await?;
        Ok(taken.len() as u64 + deleted)
    }

    /// Active and suspended tenants: the ones backed up.
    async fn live_tenants(&self) -> Result<Vec<Tenant>> {
        let mut all = Vec::new();
        for state in [TenantState::Active, TenantState::Suspended] {
            let mut after = None;
            loop {
                let page = TenantPage { after: after.clone(), state: Some(state), limit: 500 };
                let tenants = self.sources.store.list_tenants(&page).await?;
                let Some(last) = tenants.last() else { break };
                after = Some(last.name.to_string());
                all.extend(tenants);
            }
        }
        Ok(all)
    }

    /// Takes one scheduled backup; a failure is recorded (and audited by
    /// `create`) and backs the tenant off. Returns whether it took one.
    async fn scheduled(&self, tenant: &Tenant) -> bool {
        let name = tenant.name.as_str();
        match self.create(&Actor::Scheduler, name, SCHEDULED).await {
            Ok(_) => true,
            // Another backup of the tenant is under way: it counts.
            Err(BackupServiceError::Running(_)) => false,
            Err(error) => {
                let now = self.sources.clock.now();
                let failures = match self.sources.store.backup_run(tenant.id).await {
                    Ok(run) => run.map_or(0, |r| r.failures),
                    Err(_) => 0,
                };
                let retry_at = now + backoff(failures);
                tracing::warn!(%error, tenant = name, retry_at = %retry_at, "a scheduled backup failed");
                let said = error.to_string();
                if let Err(error) =
                    self.sources.store.backup_failed(tenant.id, &said, now, retry_at).await
                {
                    tracing::warn!(%error, tenant = name, "cannot record a failed backup");
                }
                false
            }
        }
    }

    /// Deletes the tenant's scheduled backups beyond its policy's count or
    /// age, oldest first; manual backups stay until deleted.
    async fn expire(
        &self,
        tenant: &Tenant,
        policy: &BackupPolicy,
        now: OffsetDateTime,
    ) -> Result<u64> {
        let listed = self.storage.list(tenant.id.0).await?;
        let mut deleted = 0;
        for (listing, reason) in expired(&listed, policy, now) {
            self.storage.delete(tenant.id.0, &listing.id).await?;
            let details = serde_json::json!({ "backup": listing.id, "reason": reason });
            self.events.record(&Actor::Scheduler, tenant, "backup.expire", "ok", details).await;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Sets the backup metrics: each tenant's last success, for the
    /// `labels` tenants whose last success is oldest (the ones to look at),
    /// the rest as `tenant="_other"` (the oldest of them).
    async fn publish_metrics(&self, tenants: &[Tenant], labels: usize) -> Result<()> {
        let runs = self.sources.store.backup_runs().await?;
        let mut names: HashMap<TenantId, String> = HashMap::new();
        for tenant in tenants {
            names.insert(tenant.id, tenant.name.to_string());
        }
        let mut last: Vec<(String, i64, i64)> = runs
            .iter()
            .filter_map(|run| {
                let name = names.get(&run.tenant_id)?;
                let at = run.last_success.map_or(0, |t| t.unix_timestamp());
                Some((name.clone(), at, run.failures))
            })
            .collect();
        last.sort_by_key(|(name, at, _)| (*at, name.clone()));
        self.metrics.set_backups(&last, labels);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(last: Option<OffsetDateTime>, retry: Option<OffsetDateTime>) -> BackupRun {
        BackupRun {
            tenant_id: TenantId(uuid::Uuid::nil()),
            last_success: last,
            last_backup: None,
            last_attempt: time::macros::datetime!(2026-12-01 00:00 UTC),
            failures: 0,
            last_error: None,
            retry_at: retry,
        }
    }

    #[test]
    fn a_backup_is_due_once_its_cadence_has_passed_and_not_while_backing_off() {
        let daily = BackupPolicy { every_hours: 24, keep: 7, retention_days: 7 };
        let off = BackupPolicy { every_hours: 0, ..daily.clone() };
        let now = time::macros::datetime!(2026-12-04 12:00 UTC);
        assert!(due(&daily, None, now), "never backed up");
        assert!(!due(&off, None, now));
        let yesterday = Some(now - time::Duration::hours(24));
        assert!(due(&daily, Some(&run(yesterday, None)), now));
        let recent = Some(now - time::Duration::hours(23));
        assert!(!due(&daily, Some(&run(recent, None)), now));
        let later = Some(now + time::Duration::minutes(5));
        assert!(!due(&daily, Some(&run(None, later)), now), "backing off");
        assert!(due(&daily, Some(&run(None, Some(now))), now));
    }

    fn listing(id: &str, kind: &str, created_at: &str) -> Listing {
        Listing {
            id: id.to_owned(),
            kind: kind.to_owned(),
            size: 1,
            recipient: String::new(),
            manifest: bulkhead_backup::Manifest {
                format: 1,
                about: bulkhead_backup::About {
                    tenant: "acme".into(),
                    tenant_id: uuid::Uuid::nil(),
                    plan: "starter".into(),
                    created_at: created_at.to_owned(),
                    schemas: Default::default(),
                },
                parts: Vec::new(),
            },
        }
    }

    #[test]
    fn retention_drops_scheduled_backups_past_the_count_or_the_age_and_keeps_manual_ones() {
        let now = time::macros::datetime!(2026-12-10 00:00 UTC);
        let listed = [
            listing("a", "scheduled", "2026-11-01T00:00:00Z"),
            listing("b", "manual", "2026-11-01T00:00:00Z"),
            listing("c", "scheduled", "2026-12-07T00:00:00Z"),
            listing("d", "scheduled", "2026-12-08T00:00:00Z"),
            listing("e", "scheduled", "2026-12-09T00:00:00Z"),
        ];
        let policy = BackupPolicy { every_hours: 24, keep: 2, retention_days: 7 };
        let gone: Vec<(&str, &str)> =
            expired(&listed, &policy, now).iter().map(|(l, why)| (l.id.as_str(), *why)).collect();
        assert_eq!(gone, [("a", "retention_days"), ("c", "keep")]);
        let roomy = BackupPolicy { every_hours: 24, keep: 10, retention_days: 365 };
        assert!(expired(&listed, &roomy, now).is_empty());
        let short = BackupPolicy { every_hours: 24, keep: 10, retention_days: 1 };
        let gone: Vec<&str> =
            expired(&listed, &short, now).iter().map(|(l, _)| l.id.as_str()).collect();
        assert_eq!(gone, ["a", "c", "d"], "the newest stays, however old");
    }

    #[test]
    fn failures_back_off_doubling_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_secs(60));
        assert_eq!(backoff(1), Duration::from_secs(120));
        assert_eq!(backoff(3), Duration::from_secs(480));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
