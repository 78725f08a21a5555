//! Who acts, and recording what they did on the audit streams. Details
//! never carry secret values.

use std::{fmt, sync::Arc};

use bulkhead_audit::{
    Actor as AuditActor, AuditError, AuditLog, KeyRing, NewEvent, StreamId, Witness,
    WriterSettings, canonical::CanonicalJson,
};
use bulkhead_identity::{Permission, Role, roles};
use bulkhead_model::{Tenant, TenantId};
use bulkhead_store::AuditStore;
use serde_json::Value;

use crate::{
    clock::Clock,
    gateway::{ConfigChanges, affects_gateway},
};

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator, by the name of the token they used.
    Operator(String),
    /// The provisioning reconciler.
    Reconciler,
    /// The vault's background work: expiring leases, scheduled rotation.
    Scheduler,
    /// The runtime: starting tenants' workers, delivering their secrets.
    Runtime,
    /// The gateway: reading a tenant's secret for one of its tools' calls.
    Gateway,
    /// Someone who presented no credential that verified.
    Anonymous,
    /// A credential scoped to one tenant (a token of its realm or of the
    /// identity provider it trusts, or one of its API keys): it may act on
    /// that tenant's own resources only, as its roles allow. `expires_at`
    /// is when the credential stops being valid (unix seconds), `None` for
    /// an API key that lasts until revoked; `from_token` says its authority
    /// comes from a token (it is one, or an API key made with one), so what
    /// it makes can be revoked with the realm's tokens.
    Tenant {
        tenant_id: TenantId,
        subject: String,
        roles: Vec<Role>,
        expires_at: Option<i64>,
        from_token: bool,
    },
}

impl Actor {
    /// Whether the actor may touch `tenant`'s resources at all. Operators
    /// and the control plane's own tasks may; a tenant-scoped credential
    /// only for its own tenant, compared by id, never by name.
    pub fn may_access(&self, tenant: &Tenant) -> bool {
        match self {
            Actor::Operator(_)
            | Actor::Reconciler
            | Actor::Scheduler
            | Actor::Runtime
            | Actor::Gateway => true,
            Actor::Anonymous => false,
            Actor::Tenant { tenant_id, .. } => *tenant_id == tenant.id,
        }
    }

    /// Whether the actor may do `permission` to `tenant`: operators and
    /// the control plane's tasks always; a tenant-scoped credential on its
    /// own tenant when one of its roles allows it.
    pub fn allows(&self, tenant: &Tenant, permission: Permission) -> bool {
        match self {
            Actor::Tenant { roles, .. } => {
                self.may_access(tenant) && roles::allows(roles, permission)
            }
            _ => self.may_access(tenant),
        }
    }

    /// When the actor's credential expires (unix seconds), if it does.
    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Actor::Tenant { expires_at, .. } => *expires_at,
            _ => None,
        }
    }

    /// Whether the actor may use platform-wide endpoints (master key,
    /// lockouts, every tenant's list).
    pub fn is_operator(&self) -> bool {
        matches!(self, Actor::Operator(_))
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::Reconciler => f.write_str("reconciler"),
            Actor::Scheduler => f.write_str("scheduler"),
            Actor::Runtime => f.write_str("runtime"),
            Actor::Gateway => f.write_str("gateway"),
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::Tenant { tenant_id, subject, .. } => write!(f, "tenant:{tenant_id}:{subject}"),
        }
    }
}

tokio::task_local! {
    /// The id of the API request being served, for the events it causes.
    pub static REQUEST_ID: String;
}

/// How an actor appears in audit records: a kind, and a name within it.
pub fn audit_actor(actor: &Actor) -> AuditActor {
    let (kind, id) = match actor {
        Actor::Operator(name) => ("operator", name.clone()),
        Actor::Reconciler => ("system", "reconciler".to_owned()),
        Actor::Scheduler => ("system", "scheduler".to_owned()),
        Actor::Runtime => ("system", "runtime".to_owned()),
        Actor::Gateway => ("system", "gateway".to_owned()),
        Actor::Anonymous => ("anonymous", String::new()),
        Actor::Tenant { subject, .. } => ("tenant", subject.clone()),
    };
    AuditActor { kind: kind.to_owned(), id }
}

/// What an action acted on, within its stream: `secrets/<path>`,
/// `credentials/<lease>`, `api-keys/<id>`, `tokens/<jti>`, `keys`,
/// `realm`, `tenant`, `auth`, `master-key`, `lockouts/<principal>`.
fn resource(action: &str, details: &Value) -> String {
    let detail = |name: &str| details.get(name).and_then(Value::as_str).map(str::to_owned);
    let family = action.split('.').next().unwrap_or(action);
    let with = |base: &str, name: &str| match detail(name) {
        Some(id) => format!("{base}/{id}"),
        None => base.to_owned(),
    };
    match family {
        "secret" if action == "secret.rewrap" => "keys".to_owned(),
        "secret" => with("secrets", "path"),
        "credential" => with("credentials", "lease"),
        "apikey" => with("api-keys", "id"),
        "token" => with("tokens", "jti"),
        "data_key" | "tenant_key" => "keys".to_owned(),
        "realm" => "realm".to_owned(),
        "auth" => "auth".to_owned(),
        "master_key" => "master-key".to_owned(),
        "vault" => with("lockouts", "principal"),
        "api" => with("apis", "name"),
        "gateway" => with("apis", "api"),
        // In the platform's stream, which names the tenant.
        "tenant" | "backup" if detail("tenant").is_some() => {
            format!("tenants/{}/tenant", detail("tenant").unwrap_or_default())
        }
        _ => "tenant".to_owned(),
    }
}

/// `text` with control characters replaced by U+FFFD: the columns these
/// go to are text, PostgreSQL refuses U+0000 in text, and one such event
/// would make its whole batch (every tenant's events in it) fail.
fn printable(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
    } else {
        text.to_owned()
    }
}

/// Where events go: the audit streams, through their one writer. A
/// tenant's events go to its own stream; operators' actions also to the
/// platform's, so the operators' own trail is complete in one place.
#[derive(Debug, Clone)]
pub struct EventLog {
    audit: AuditLog,
    clock: Arc<dyn Clock>,
    /// Told of every tenant whose recorded change the gateway must see.
    changes: Option<ConfigChanges>,
}

impl EventLog {
    pub fn new(audit: AuditLog, clock: Arc<dyn Clock>) -> Self {
        Self { audit, clock, changes: None }
    }

    /// This log, telling `changes` of each tenant whose recorded action
    /// changes what the gateway serves.
    pub fn with_changes(self, changes: ConfigChanges) -> Self {
        Self { changes: Some(changes), ..self }
    }

    /// Starts the audit writer over `store`, its checkpoints signed by
    /// `keys`, and returns the log with the writer's task.
    pub fn start(
        store: Arc<dyn AuditStore>,
        keys: Arc<dyn KeyRing>,
        witnesses: Vec<Arc<dyn Witness>>,
        clock: Arc<dyn Clock>,
        settings: WriterSettings,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let now = {
            let clock = Arc::clone(&clock);
            Arc::new(move || clock.now())
        };
        let (audit, writer) = AuditLog::start(store, keys, witnesses, now, settings);
        (Self::new(audit, clock), writer)
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Appends one event and waits until it is written. A failure to
    /// record is logged, not returned: the action it describes has already
    /// happened.
    pub async fn record(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        action: &str,
        outcome: &str,
        details: Value,
    ) {
        let _ = self.append(actor, Some(tenant), action, outcome, details).await;
    }

    /// Records that something secret is about to be handed out (a secret's
    /// value, a database credential, a token, an API key), and says
    /// whether it was recorded: the caller hands it out only then, so the
    /// tenant's stream shows everything that left the vault, as Vault
    /// refuses a request no audit device could log.
    pub async fn record_disclosure(
        &self,
        actor: &Actor,
        tenant: Option<&Tenant>,
        action: &str,
        details: Value,
    ) -> Result<(), Unrecorded> {
        self.append(actor, tenant, action, "ok", details).await.map_err(|error| Unrecorded {
            action: action.to_owned(),
            broken: matches!(error, AuditError::Broken { .. }).then(|| error.to_string()),
        })
    }

    /// Appends an event about the platform rather than one tenant.
    pub async fn record_platform(
        &self,
        actor: &Actor,
        action: &str,
        outcome: &str,
        details: Value,
    ) {
        let _ = self.append(actor, None, action, outcome, details).await;
    }

    /// Records an action on a tenant in the platform's stream, naming the
    /// tenant in its details: what outlives the tenant (offboarding, its
    /// final snapshot) is said there, where its own stream may be closed.
    pub async fn record_platform_about(
        &self,
        actor: &Actor,
        (tenant, tenant_id): (&str, TenantId),
        action: &str,
        outcome: &str,
        mut details: Value,
    ) {
        if let Some(map) = details.as_object_mut() {
            map.insert("tenant".into(), Value::from(tenant));
            map.insert("tenant_id".into(), Value::from(tenant_id.to_string()));
        }
        self.record_platform(actor, action, outcome, details).await;
    }

    /// Appends the event to its stream, and an operator's action on a
    /// tenant to the platform stream too; an error if either could not be
    /// written. Failures are logged here.
    async fn append(
        &self,
        actor: &Actor,
        tenant: Option<&Tenant>,
        action: &str,
        outcome: &str,
        details: Value,
    ) -> Result<(), AuditError> {
        let details = CanonicalJson::from_value(&details).unwrap_or_else(|e| {
            // Never lose the event over its details' shape.
            let fallback = serde_json::json!({ "unrecordable_details": e.to_string() });
            CanonicalJson::from_value(&fallback)
                .unwrap_or_else(|_| CanonicalJson::assume_canonical("{}".to_owned()))
        });
        let mut who = audit_actor(actor);
        who.id = printable(&who.id);
        let event = NewEvent {
            stream: tenant.map_or_else(StreamId::platform, |t| StreamId::tenant(t.id.0)),
            time: self.clock.now(),
            actor: who,
            action: action.to_owned(),
            resource: printable(&resource(
                action,
                &serde_json::from_str(details.as_str()).unwrap_or_default(),
            )),
            outcome: outcome.to_owned(),
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
            details,
        };
        let mirror = match (actor, tenant) {
            (Actor::Operator(_), Some(tenant)) => Some(NewEvent {
                stream: StreamId::platform(),
                resource: format!("tenants/{}/{}", tenant.name, event.resource),
                ..event.clone()
            }),
            _ => None,
        };
        // Whether or not it was recorded, the action happened.
        if let (Some(changes), Some(tenant)) = (&self.changes, tenant)
            && affects_gateway(action)
        {
            changes.tenant(tenant.id);
        }
        let mut result = Ok(());
        for event in std::iter::once(event).chain(mirror) {
            if let Err(error) = self.audit.append(event).await {
                tracing::warn!(tenant = ?tenant.map(|t| t.name.as_str()), action, %error, "cannot record event");
                result = Err(error);
            }
        }
        result
    }
}

/// How many attacker-driven events (refused credentials, refused gateway
/// requests) each tenant's stream takes per window: past the budget they
/// are counted, and the count goes with the next event recorded, so a
/// flood cannot fill a tenant's trail.
#[derive(Debug)]
pub struct Budget {
    per_window: u32,
    window: std::time::Duration,
    /// Per tenant: the window's start, events recorded in it, and events
    /// suppressed since the last one recorded.
    spent: std::sync::Mutex<std::collections::HashMap<TenantId, (std::time::Instant, u32, u32)>>,
}

impl Budget {
    pub fn new(per_window: u32, window: std::time::Duration) -> Self {
        Self { per_window, window, spent: Default::default() }
    }

    /// `Some(suppressed before)` when this event may be recorded; `None`
    /// when the tenant's budget is spent (it is counted).
    pub fn take(&self, tenant: TenantId) -> Option<u32> {
        let mut spent = self.spent.lock().ok()?;
        let now = std::time::Instant::now();
        let (start, recorded, suppressed) = spent.entry(tenant).or_insert((now, 0, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *recorded = 0;
        }
        if *recorded >= self.per_window {
            *suppressed += 1;
            return None;
        }
        *recorded += 1;
        Some(std::mem::take(suppressed))
    }
}

/// An action that would hand out something secret was not done because its
/// audit event could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit stream could not record this {action}, so nothing was handed out; {}",
    broken.as_deref().unwrap_or("try again (the server's log says why it could not record)"))]
pub struct Unrecorded {
    pub action: String,
    /// Why, when the stream itself was found changed outside Bulkhead:
    /// retrying cannot help then.
    pub broken: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_model::{Isolation, NewTenant, PlanName, RegionName, TenantName};
    use time::OffsetDateTime;

    fn tenant(name: &str) -> Tenant {
        Tenant::new(
            NewTenant {
                id: TenantId::random(),
                name: TenantName::parse(name).unwrap(),
                plan: PlanName::parse("starter").unwrap(),
                isolation: Isolation::Pool,
                region: RegionName::default(),
                admin_email: None,
                limits: bulkhead_model::TenantLimits::default(),
            },
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn a_tenant_credential_reaches_its_own_tenant_only() {
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let admin = Actor::Tenant {
            tenant_id: acme.id,
            subject: "alice".into(),
            roles: vec![Role::Admin],
            expires_at: None,
            from_token: false,
        };
        assert!(admin.may_access(&acme));
        assert!(!admin.may_access(&globex));
        assert!(admin.allows(&acme, Permission::Manage));
        assert!(!admin.allows(&acme, Permission::Own));
        assert!(!admin.allows(&globex, Permission::Read));
        // Same name, another tenant (recreated after a purge): still no.
        let impostor = Tenant { id: TenantId::random(), ..acme.clone() };
        assert!(!admin.may_access(&impostor));
        assert!(!admin.is_operator());
        assert!(Actor::Operator("initial".into()).may_access(&globex));
    }
}
