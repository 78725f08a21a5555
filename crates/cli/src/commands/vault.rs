//! `bulkhead vault ...`: keys and lockouts.

use zeroize::Zeroizing;

use crate::{
    args::{GlobalArgs, Output, VaultCommand},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &VaultCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        VaultCommand::Keys { tenant } => {
            output::keys(global.output, &client.key_status(tenant).await?)
        }
        VaultCommand::RotateKey { tenant, rewrap } => {
            let rotated = client.rotate_data_key(tenant).await?;
            eprintln!("tenant {tenant} now writes with data key version {}", rotated.version);
            if *rewrap {
                let view = client.rewrap(tenant).await?;
                eprintln!("re-encrypted {} secret version(s) under it", view.reencrypted);
            }
            output::keys(global.output, &client.key_status(tenant).await?)
        }
        VaultCommand::TenantKey { tenant, key_file, forget } => {
            if *forget {
                client.forget_tenant_key(tenant).await?;
                eprintln!(
                    "forgot tenant {tenant}'s key; its secrets are sealed until it is supplied again"
                );
                return Ok(());
            }
            let Some(file) = key_file else {
                return Err(CliError::usage("give the tenant's key with --key-file, or --forget"));
            };
            let key =
                Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                    CliError::usage(format!("cannot read {}: {e}", file.display()))
                })?);
            let view = client.set_tenant_key(tenant, key).await?;
            if global.output == Output::Json {
                return output::json(&view);
            }
            if view.adopted {
                eprintln!(
                    "tenant {tenant}'s {} data key(s) are now wrapped by its own key; keep that \
                     key safe: without it, nobody (operators included) can read its secrets",
                    view.rewrapped
                );
            } else {
                eprintln!("loaded tenant {tenant}'s key");
            }
            Ok(())
        }
        VaultCommand::RotateMaster => {
            let view = client.rotate_master().await?;
            if global.output == Output::Json {
                return output::json(&view);
            }
            eprintln!(
                "master key rotated from {} to {}; {} data key(s) re-wrapped. Back up the new \
                 master key file now",
                view.from, view.to, view.rewrapped
            );
            Ok(())
        }
        VaultCommand::Lockouts => {
            output::lockouts(global.output, &client.lockouts().await?.lockouts)
        }
        VaultCommand::Unlock { principal } => {
            client.unlock(principal).await?;
            eprintln!("cleared the lockout of {principal}");
            Ok(())
        }
    }
}
