//! Bulkhead's identity: a realm per tenant with its own signing keys,
//! tokens any JWT/OIDC library can verify from the realm's published keys,
//! and verification that never lets one tenant's token act for another.

pub mod claims;
pub mod jws;
pub mod keys;
pub mod verify;

pub use bulkhead_model::{Permission, Role};
pub use claims::RealmClaims;
pub use keys::{Algorithm, Jwk, KeyError, SigningKey, VerifyingKey};

/// Roles live in the model, which the gateway and control share.
pub mod roles {
    pub use bulkhead_model::{Permission, Role, allows};
}
pub use verify::{
    ClaimMapping, ExternalClaims, KeySet, Reason, Rejected, Trust, Verified, VerifiedCache, verify,
};
