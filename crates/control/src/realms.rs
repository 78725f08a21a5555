//! The realms' names and how their tokens verify: issuers and audiences
//! derived from the public URL, a realm's trust from its stored keys, and an
//! external provider's from its fetched keys. Shared by the identity
//! service and the gateway's feed, which needs nothing else of identity
//! (no vault, no private keys).

use std::{collections::HashMap, sync::Arc};

use bulkhead_identity::{
    Algorithm, ClaimMapping, ExternalClaims, Jwk, KeySet, Role, Trust, VerifyingKey,
};
use bulkhead_model::{Tenant, TenantName};
use bulkhead_store::{RealmKeyRecord, RealmRecord, TrustRecord};

use crate::{clock::Clock, provider_keys::ProviderKeys};

#[derive(Debug)]
pub struct Realms {
    /// Where this server is reached from outside, without a trailing slash:
    /// issuers are `<public_url>/realms/<tenant>`.
    public_url: String,
    providers: ProviderKeys,
    clock: Arc<dyn Clock>,
}

impl Realms {
    /// `insecure_jwks_hosts`: external providers' hosts that may be
    /// reached over plain http and at private addresses.
    pub fn new(
        public_url: &str,
        insecure_jwks_hosts: &[String],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        Ok(Self {
            public_url: public_url.trim_end_matches('/').to_owned(),
            providers: ProviderKeys::new(insecure_jwks_hosts)?,
            clock,
        })
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// What every realm's issuer starts with.
    pub fn issuer_prefix(&self) -> String {
        format!("{}/realms/", self.public_url)
    }

    pub fn issuer(&self, tenant: &TenantName) -> String {
        format!("{}{tenant}", self.issuer_prefix())
    }

    /// The audience a realm token must name to call the control API, so
    /// that a token minted for the tenant's own application cannot (and
    /// which the gateway refuses).
    pub fn control_audience(&self) -> String {
        format!("{}/v1", self.public_url)
    }

    /// The audience of a token minted for the tenant's own applications,
    /// which the gateway requires unless an API names its own:
    /// `<issuer>/apps`.
    pub fn app_audience(&self, tenant: &TenantName) -> String {
        format!("{}/apps", self.issuer(tenant))
    }

    /// The control plane's clock.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    pub fn providers(&self) -> &ProviderKeys {
        &self.providers
    }

    /// How the tenant's realm tokens verify, from its stored keys and realm:
    /// with `audience`, only tokens naming it. Keys past `remove_after` are
    /// left out.
    pub fn realm_trust_from<'a>(
        &self,
        tenant: &Tenant,
        keys: impl IntoIterator<Item = &'a RealmKeyRecord>,
        realm: Option<&RealmRecord>,
        audience: Option<String>,
    ) -> Result<Trust, String> {
        let now = self.clock.now();
        let mut verifying = KeySet::default();
        for record in keys.into_iter().filter(|k| k.remove_after.is_none_or(|at| at > now)) {
            let jwk: Jwk = serde_json::from_str(&record.public_jwk).map_err(|e| e.to_string())?;
            let key = VerifyingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
            verifying.insert(record.kid.clone(), key);
        }
        Ok(Trust {
            tenant_id: tenant.id.0,
            issuer: self.issuer(&tenant.name),
            keys: verifying,
            algorithms: &Algorithm::REALM,
            audience,
            not_before: realm.and_then(|r| r.tokens_not_before).map(|t| t.unix_timestamp()),
            claims: ClaimMapping::Realm,
        })
    }

    /// How tokens of the provider `record` trusts verify for the tenant,
    /// with the provider's keys as cached (`refresh`: fetched again, at
    /// most so often).
    pub async fn external_trust(
        &self,
        tenant: &Tenant,
        record: &TrustRecord,
        refresh: bool,
    ) -> Result<Trust, String> {
        let role_map: HashMap<String, Role> =
            serde_json::from_str::<HashMap<String, String>>(&record.role_map)
                .map_err(|e| format!("stored role map: {e}"))?
                .into_iter()
                .filter_map(|(value, role)| Some((value, Role::parse(&role)?)))
                .collect();
        let keys = self.providers.keys(tenant.id.0, &record.jwks_url, refresh).await?;
        Ok(Trust {
            tenant_id: tenant.id.0,
            issuer: record.issuer.clone(),
            keys,
            algorithms: &Algorithm::EXTERNAL,
            audience: Some(record.audience.clone()),
            not_before: None,
            claims: ClaimMapping::External(Box::new(ExternalClaims {
                subject: record.subject_claim.clone(),
                roles: record.roles_claim.clone(),
                role_map,
            })),
        })
    }
}
