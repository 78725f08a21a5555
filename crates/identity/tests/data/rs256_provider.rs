//! An external provider signing with RS256, for the tests and the bench:
//! a 2048-bit key and a token made by PyJWT (`make_rs256.py`), trusted the
//! way `bulkhead auth trust` would (issuer, audience, role map).

use std::collections::HashMap;

use bulkhead_identity::{
    Algorithm, ClaimMapping, ExternalClaims, Jwk, KeySet, Role, Trust, VerifyingKey,
};
use uuid::Uuid;

/// The provider's token and a tenant's trust in the provider.
pub fn rs256_provider() -> (String, Trust) {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("rs256.json")).unwrap();
    let jwk: Jwk = serde_json::from_value(fixture["jwk"].clone()).unwrap();
    let trust = Trust {
        tenant_id: Uuid::new_v4(),
        issuer: "https://idp.example/".into(),
        keys: KeySet::from([("rsa-1".into(), VerifyingKey::from_jwk(&jwk).unwrap())]),
        algorithms: &Algorithm::EXTERNAL,
        audience: Some("api".into()),
        not_before: None,
        claims: ClaimMapping::External(Box::new(ExternalClaims {
            subject: "sub".into(),
            roles: "roles".into(),
            role_map: HashMap::from([("admin".into(), Role::Admin)]),
        })),
    };
    (fixture["token"].as_str().unwrap().to_owned(), trust)
}
