//! Each tenant's backup key: an age X25519 identity the vault seals under
//! the tenant's data key like every other key of the tenant (so destroying
//! the data keys makes its backups unreadable too), made on first use. A
//! tenant that brings its own key registers an age recipient instead:
//! Bulkhead then writes backups it cannot read.

use std::sync::Arc;

use bulkhead_model::Tenant;
use bulkhead_store::StoreError;
use bulkhead_vault::{Vault, VaultError};
use zeroize::Zeroizing;

use crate::clock::Clock;

const IDENTITY: &str = "backup/identity";
const RECIPIENT: &str = "backup/recipient";

/// Where a tenant's archives are encrypted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `age1...`.
    pub recipient: String,
    /// The tenant's own (bring-your-own-key): Bulkhead holds no identity
    /// that opens it.
    pub own: bool,
}

#[derive(Debug)]
pub struct BackupKeys {
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
}

impl BackupKeys {
    pub fn new(vault: Arc<Vault>, clock: Arc<dyn Clock>) -> Self {
        Self { vault, clock }
    }

    /// The recipient the tenant's next archive is encrypted to: its own if
    /// it registered one, else the recipient of the identity the vault
    /// holds for it (made now if it has none).
    pub async fn recipient(&self, tenant: &Tenant) -> Result<Recipient, VaultError> {
        if let Some(recipient) = self.own(tenant).await? {
            return Ok(Recipient { recipient, own: true });
        }
        let identity = self.identity_or_new(tenant).await?;
        let recipient = bulkhead_backup::recipient_of(&identity)
            .map_err(|e| VaultError::Corrupt(format!("the tenant's backup key: {e}")))?;
        Ok(Recipient { recipient, own: false })
    }

    /// The recipient the tenant registered as its own, if it did.
    pub async fn own(&self, tenant: &Tenant) -> Result<Option<String>, VaultError> {
        let Some(own) = self.vault.open_blob(tenant.id, RECIPIENT).await? else {
            return Ok(None);
        };
        String::from_utf8(own.to_vec())
            .map(Some)
            .map_err(|_| VaultError::Corrupt("the tenant's backup recipient".to_owned()))
    }

    /// The identity the vault holds for the tenant, if any.
    pub async fn identity(&self, tenant: &Tenant) -> Result<Option<Zeroizing<String>>, VaultError> {
        let Some(sealed) = self.vault.open_blob(tenant.id, IDENTITY).await? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&sealed)
            .map_err(|_| VaultError::Corrupt("the tenant's backup key".to_owned()))?;
        Ok(Some(Zeroizing::new(text.to_owned())))
    }

    async fn identity_or_new(&self, tenant: &Tenant) -> Result<Zeroizing<String>, VaultError> {
        if let Some(identity) = self.identity(tenant).await? {
            return Ok(identity);
        }
        let (identity, _) = bulkhead_backup::generate_key();
        match self.vault.seal_blob(tenant.id, IDENTITY, identity.as_bytes(), self.clock.now()).await
        {
            Ok(()) => Ok(identity),
            // Another backup of the tenant made one first: use that.
            Err(VaultError::Store(StoreError::Duplicate(_))) => self
                .identity(tenant)
                .await?
                .ok_or_else(|| VaultError::Corrupt("the tenant's backup key vanished".to_owned())),
            Err(other) => Err(other),
        }
    }

    /// Registers the tenant's own recipient (`None`: go back to the key the
    /// vault holds). The caller has checked it.
    pub async fn set_own(
        &self,
        tenant: &Tenant,
        recipient: Option<&str>,
    ) -> Result<(), VaultError> {
        self.vault.delete_blob(tenant.id, RECIPIENT).await?;
        if let Some(recipient) = recipient {
            let now = self.clock.now();
            self.vault.seal_blob(tenant.id, RECIPIENT, recipient.as_bytes(), now).await?;
        }
        Ok(())
    }
}
