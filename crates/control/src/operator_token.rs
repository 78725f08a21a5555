//! Operator credentials: the bearer tokens that may do anything through the
//! control API.
//!
//! The first one is made at first start and written to
//! `<data-dir>/operator.token` (mode 0600) for the local CLI; the store keeps
//! only SHA-256 hashes. A presented token is hashed and compared with every
//! known hash in constant time.

use std::{fmt, io, path::Path, sync::Arc};

use base64::Engine;
use bulkhead_store::{ControlStore, OperatorToken, StoreError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::{
    clock::Clock,
    data_dir::{make_private, write_private},
};

const PREFIX: &str = "bho_";

#[derive(Debug, Error)]
pub enum OperatorTokenError {
    #[error("cannot read or write the operator token at {path}: {source}")]
    File {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} does not hold an operator token (expected one line: {PREFIX} and 43 characters \
         of URL-safe base64); delete it and restart to make a new one"
    )]
    Malformed { path: String },
    #[error("cannot generate a random token: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The hashes of every operator token, loaded once at start.
#[derive(Clone)]
pub struct OperatorTokens {
    known: Arc<Vec<(String, [u8; 32])>>,
}

impl fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorTokens").field("count", &self.known.len()).finish()
    }
}

impl OperatorTokens {
    /// Makes sure `<data-dir>/operator.token` exists and its hash is in the
    /// store, then loads every known hash.
    pub async fn ensure(
        store: &dyn ControlStore,
        token_path: &Path,
        clock: &dyn Clock,
    ) -> Result<Self, OperatorTokenError> {
        let file_error =
            |source| OperatorTokenError::File { path: token_path.display().to_string(), source };
        let token = match std::fs::read_to_string(token_path).map(Zeroizing::new) {
            Ok(contents) => {
                if make_private(token_path).map_err(file_error)? {
                    tracing::warn!(path = %token_path.display(), "operator token file was readable by others; narrowed it to mode 0600");
                }
                let token = Zeroizing::new(contents.trim().to_owned());
                if !well_formed(&token) {
                    return Err(OperatorTokenError::Malformed {
                        path: token_path.display().to_string(),
                    });
                }
                token
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let token = generate()?;
                // File first, store second: a crash in between leaves a file
                // whose hash the next start adds, never a hash nobody holds.
                write_private(token_path, format!("{}\n", token.as_str()).as_bytes())
                    .map_err(file_error)?;
                tracing::info!(path = %token_path.display(), "created the operator token");
                token
            }
            Err(e) => return Err(file_error(e)),
        };

        let hash = hash(&token);
        let mut known = store.operator_tokens().await?;
        if !known.iter().any(|t| t.token_hash == hash) {
            let name = if known.iter().any(|t| t.name == "initial") {
                format!("local-{}", hex(&hash[..4]))
            } else {
                "initial".to_owned()
            };
            let record = OperatorToken {
                id: uuid::Uuid::new_v4(),
                name,
                token_hash: hash,
                created_at: clock.now(),
            };
            store.insert_operator_token(&record).await?;
            known.push(record);
        }
        Ok(Self { known: Arc::new(known.into_iter().map(|t| (t.name, t.token_hash)).collect()) })
    }

    /// The name of the operator token `presented` is, if any. Every known
    /// hash is compared, in constant time, whether or not one matched.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let presented = hash(presented);
        let mut found = None;
        for (name, known) in self.known.iter() {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn generate() -> Result<Zeroizing<String>, OperatorTokenError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut_slice()).map_err(|e| OperatorTokenError::Random(e.to_string()))?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice());
    Ok(Zeroizing::new(format!("{PREFIX}{encoded}")))
}

/// The prefix and 43 characters of URL-safe base64 (32 random bytes), as
/// [`generate`] makes them.
fn well_formed(token: &str) -> bool {
    token.strip_prefix(PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use std::os::unix::fs::PermissionsExt;

    async fn store(dir: &Path) -> Arc<dyn ControlStore> {
        let location = bulkhead_store::StoreLocation::Sqlite(dir.join("bulkhead.db"));
        bulkhead_store::open(&location).await.unwrap()
    }

    #[tokio::test]
    async fn first_start_writes_a_private_token_and_stores_only_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let path = dir.path().join("operator.token");
        let tokens = OperatorTokens::ensure(store.as_ref(), &path, &SystemClock).await.unwrap();

        let token = std::fs::read_to_string(&path).unwrap();
        let token = token.trim();
        assert!(token.starts_with("bho_") && token.len() == 4 + 43, "{token}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(tokens.verify(token), Some("initial"));
        assert_eq!(tokens.verify("bho_wrong"), None);
        assert_eq!(tokens.verify(""), None);

        let stored = store.operator_tokens().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].token_hash, hash(token));

        // A restart reuses the token.
        let again = OperatorTokens::ensure(store.as_ref(), &path, &SystemClock).await.unwrap();
        assert_eq!(again.verify(token), Some("initial"));
        assert_eq!(store.operator_tokens().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_token_file_unknown_to_the_store_is_added_and_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.token");
        OperatorTokens::ensure(store(dir.path()).await.as_ref(), &path, &SystemClock)
            .await
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let fresh = tempfile::tempdir().unwrap();
        let fresh_store = store(fresh.path()).await;
        let tokens =
            OperatorTokens::ensure(fresh_store.as_ref(), &path, &SystemClock).await.unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        assert!(tokens.verify(token.trim()).is_some());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_malformed_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.token");
        for contents in ["hunter2", "bho_", "bho_short", &format!("bho_{}!", "a".repeat(42))] {
            std::fs::write(&path, contents).unwrap();
            let err = OperatorTokens::ensure(store(dir.path()).await.as_ref(), &path, &SystemClock)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("does not hold an operator token"), "{err}");
            assert!(contents == "bho_" || !err.to_string().contains(contents), "{err}");
        }
    }
}
