//! Bulkhead's identity: a realm per tenant with its own signing keys,
//! tokens any JWT/OIDC library can verify from the realm's published keys,
//! and verification that never lets one tenant's token act for another.

pub mod keys;

pub use keys::{Algorithm, Jwk, KeyError, SigningKey, VerifyingKey};
