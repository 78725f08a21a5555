//! The claims of a realm token.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::roles::Role;

/// What a Bulkhead realm token says. `tenant_id` and `iss` name the
/// tenant twice on purpose: a verifier checks both against the tenant it
/// resolved itself (from the host, the path or its trust configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub tenant_id: Uuid,
    pub roles: Vec<Role>,
    pub plan: String,
    pub region: String,
}
