//! Leases from the control API: `POST /v1/tenants/{tenant}/credentials`
//! to issue, `DELETE /v1/tenants/{tenant}/credentials/{lease}` to revoke.

use std::{fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::Error;

/// What a lease's login may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// What the tenant's own role may: read, write, and (in a silo) create.
    Write,
    Read,
}

/// The control API, with a credential that may issue leases for the
/// tenants the application serves: an operator token, or a tenant's own
/// token or API key (for its own tenant).
#[derive(Clone)]
pub struct ControlApi {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Arc<Zeroizing<String>>,
}

impl fmt::Debug for ControlApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlApi").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

/// A lease: a login of the tenant's, valid until `expires_at`.
pub struct Lease {
    pub id: Uuid,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// `postgres://<role>:<password>@…/<database>`.
    pub url: Zeroizing<String>,
    /// When this process received it (its monotonic clock).
    pub received: tokio::time::Instant,
}

impl Lease {
    /// How long it lives, from issue to expiry, as the server set it.
    pub fn life(&self) -> Duration {
        (self.expires_at - self.issued_at).try_into().unwrap_or(Duration::ZERO)
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Issued {
    lease: IssuedLease,
    url: String,
}

#[derive(Deserialize)]
struct IssuedLease {
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

#[derive(Serialize)]
struct IssueRequest<'a> {
    access: Access,
    ttl: &'a str,
}

impl ControlApi {
    /// `base` is the control API's URL (`http://127.0.0.1:7070`).
    pub fn new(base: &str, token: impl Into<String>) -> Result<Self, Error> {
        let base = reqwest::Url::parse(base)
            .map_err(|e| Error::Invalid(format!("control API URL {base:?}: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Control(e.to_string()))?;
        Ok(Self { http, base, token: Arc::new(Zeroizing::new(token.into())) })
    }

    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, Error> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Invalid(format!("{} cannot be a base URL", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Issues a lease of `tenant`'s that lives `ttl` (whole seconds).
    pub async fn issue(&self, tenant: &str, access: Access, ttl: Duration) -> Result<Lease, Error> {
        let url = self.url(&["v1", "tenants", tenant, "credentials"])?;
        let ttl = format!("{}s", ttl.as_secs().max(1));
        let response = self
            .http
            .post(url)
            .bearer_auth(self.token.as_str())
            .json(&IssueRequest { access, ttl: &ttl })
            .send()
            .await
            .map_err(|e| Error::Control(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status();
        let body = Zeroizing::new(
            response.text().await.map_err(|e| Error::Control(format!("reading the lease: {e}")))?,
        );
        if !status.is_success() {
            return Err(Error::Control(format!(
                "issuing a lease of {tenant}: {status}: {}",
                *body
            )));
        }
        let issued: Issued = serde_json::from_str(&body).map_err(|e| {
            Error::Control(format!("the lease of {tenant} is not what was expected: {e}"))
        })?;
        Ok(Lease {
            id: issued.lease.id,
            issued_at: issued.lease.issued_at,
            expires_at: issued.lease.expires_at,
            url: Zeroizing::new(issued.url),
            received: tokio::time::Instant::now(),
        })
    }

    /// Revokes the lease: its login is dropped and its sessions ended.
    pub async fn revoke(&self, tenant: &str, lease: Uuid) -> Result<(), Error> {
        let url = self.url(&["v1", "tenants", tenant, "credentials", &lease.to_string()])?;
        let response = self
            .http
            .delete(url)
            .bearer_auth(self.token.as_str())
            .send()
            .await
            .map_err(|e| Error::Control(format!("cannot reach {}: {e}", self.base)))?;
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(Error::Control(format!("revoking lease {lease}: {}", response.status())))
    }
}
