//! Tenants' model budgets, the control plane's part: the durable spend the
//! gateways' counters are seeded from (the usage ledger), and the soft
//! cap's notice, recorded once per tenant and month whatever the gateways
//! and restarts, and told to the operator's webhook when one is set.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bulkhead_gateway::record::BudgetNotice;
use bulkhead_meter::{Ledger, Period};
use bulkhead_model::{Tenant, TenantId};
use bulkhead_store::ControlStore;
use hmac::{KeyInit, Mac};
use serde_json::json;
use time::OffsetDateTime;

use crate::events::{Actor, EventLog};

/// Header of a webhook call: `sha256=<hex HMAC-SHA256 of the body>` under
/// the webhook's secret.
pub const SIGNATURE_HEADER: &str = "bulkhead-signature";
/// Attempts at a webhook call, and the wait before each retry.
const WEBHOOK_RETRIES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];

/// The control store's usage ledger, as the gateway's budgets read it.
#[derive(Debug, Clone)]
pub struct StoreLedger(pub Arc<dyn ControlStore>);

#[async_trait]
impl Ledger for StoreLedger {
    async fn spent(&self, tenant: uuid::Uuid, period: Period) -> Result<u64, String> {
        let (from, until) = period.days();
        self.0.spent(TenantId(tenant), &from, &until).await.map_err(|e| e.to_string())
    }
}

/// Where the soft cap's notice is posted (`[budget] webhook`).
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: String,
    /// Signs each call's body when set.
    pub secret: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &bulkhead_model::redact_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Records soft-cap notices and tells the webhook.
#[derive(Debug, Clone)]
pub struct BudgetNotices {
    store: Arc<dyn ControlStore>,
    events: EventLog,
    webhook: Option<(reqwest::Client, WebhookSettings)>,
}

impl BudgetNotices {
    pub fn new(
        store: Arc<dyn ControlStore>,
        events: EventLog,
        webhook: Option<WebhookSettings>,
    ) -> Self {
        // Operators name the webhook; still, a redirect is not followed.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .ok();
        let webhook = webhook.zip(client).map(|(settings, client)| (client, settings));
        Self { store, events, webhook }
    }

    /// Records `budget.soft_cap` in the tenant's stream and calls the
    /// webhook, unless the tenant was given notice for the period already.
    pub async fn soft_cap(&self, tenant: &Tenant, notice: BudgetNotice, at: OffsetDateTime) {
        match self.store.note_budget(tenant.id, &notice.period, "soft_cap", at).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(tenant = %tenant.name, %error, period = %notice.period, "cannot note that the tenant's model spend passed its soft cap; its budget.soft_cap event and webhook call are not made");
                return;
            }
        }
        let details = json!({
            "period": notice.period,
            "spent_micros": notice.spent_micros,
            "soft_micros": notice.soft_micros,
            "hard_micros": notice.hard_micros,
        });
        self.events.record(&Actor::Gateway, tenant, "budget.soft_cap", "ok", details.clone()).await;
        if let Some((client, settings)) = &self.webhook {
            let mut body = details;
            body["event"] = json!("budget.soft_cap");
            body["tenant"] = json!(tenant.name.as_str());
            body["tenant_id"] = json!(tenant.id.0);
            body["at"] = json!(at.unix_timestamp());
            let (client, settings) = (client.clone(), settings.clone());
            tokio::spawn(post(client, settings, body.to_string()));
        }
    }
}

/// Posts `body`, retrying twice; logs how it ended.
async fn post(client: reqwest::Client, settings: WebhookSettings, body: String) {
    let mut request =
        client.post(&settings.url).header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = &settings.secret
        && let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
    {
        mac.update(body.as_bytes());
        let signature = bulkhead_audit::record::hex(&mac.finalize().into_bytes());
        request = request.header(SIGNATURE_HEADER, format!("sha256={signature}"));
    }
    let request = request.body(body);
    let url = bulkhead_model::redact_url(&settings.url);
    let mut waits = WEBHOOK_RETRIES.iter();
    loop {
        let failure = match request.try_clone().map(|r| r.send()) {
            None => return,
            Some(sent) => match sent.await {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => format!("answered {}", response.status()),
                Err(error) => error.to_string(),
            },
        };
        match waits.next() {
            Some(wait) => tokio::time::sleep(*wait).await,
            None => {
                tracing::warn!(%url, %failure, "the budget webhook was not reached; the notice is in the tenant's audit stream");
                return;
            }
        }
    }
}
