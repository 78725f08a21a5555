//! `bulkhead vault ...`: keys and lockouts.

use bulkhead_audit::{Actor, NewEvent, StreamId, canonical::CanonicalJson, writer::append_offline};
use bulkhead_control::clock::{Clock, SystemClock};
use bulkhead_store::StoreLocation;
use zeroize::Zeroizing;

use crate::{
    args::{GlobalArgs, Output, Sensitive, VaultCommand},
    client::ApiClient,
    env,
    exit::{CliError, Kind},
    output,
    settings::parse_store,
};

pub async fn run(command: &VaultCommand, global: &GlobalArgs) -> Result<(), CliError> {
    if let VaultCommand::Unlock { principal, offline: true, store } = command {
        return unlock_offline(principal, store.as_ref(), global).await;
    }
    let client = ApiClient::discover(global)?;
    match command {
        VaultCommand::Keys { tenant } => {
            output::keys(global.output, &client.key_status(tenant).await?)
        }
        VaultCommand::RotateKey { tenant, rewrap } => {
            let rotated = client.rotate_data_key(tenant).await?;
            if global.output == Output::Table {
                eprintln!("tenant {tenant} now writes with data key version {}", rotated.version);
            }
            if *rewrap {
                let view = client.rewrap(tenant).await?;
                if global.output == Output::Table {
                    eprintln!("re-encrypted {} secret version(s) under it", view.reencrypted);
                }
            }
            output::keys(global.output, &client.key_status(tenant).await?)
        }
        VaultCommand::TenantKey { tenant, key_file, forget } => {
            if *forget {
                client.forget_tenant_key(tenant).await?;
                return output::done(
                    global.output,
                    &serde_json::json!({ "tenant": tenant, "tenant_key_loaded": false }),
                    &format!(
                        "forgot tenant {tenant}'s key; its secrets are sealed until it is \
                         supplied again"
                    ),
                );
            }
            let Some(file) = key_file else {
                return Err(CliError::usage("give the tenant's key with --key-file, or --forget"));
            };
            let key =
                Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                    CliError::usage(format!("cannot read {}: {e}", file.display()))
                })?);
            let view = client.set_tenant_key(tenant, key).await?;
            let text = if view.adopted {
                format!(
                    "tenant {tenant} now has a data key wrapped by its own key ({} secret \
                     version(s) re-encrypted, master-wrapped keys destroyed); keep that key safe: \
                     without it, nobody (operators included) can read its secrets",
                    view.reencrypted
                )
            } else {
                format!("loaded tenant {tenant}'s key")
            };
            output::done(global.output, &view, &text)
        }
        VaultCommand::RotateMaster => {
            let view = client.rotate_master().await?;
            let text = format!(
                "master key rotated from {} to {}; {} data key(s) re-wrapped. Back up the new \
                 master key file now",
                view.from, view.to, view.rewrapped
            );
            output::done(global.output, &view, &text)
        }
        VaultCommand::Lockouts => {
            output::lockouts(global.output, &client.lockouts().await?.lockouts)
        }
        VaultCommand::Unlock { principal, .. } => {
            client.unlock(principal).await?;
            output::done(
                global.output,
                &serde_json::json!({ "unlocked": principal }),
                &format!("cleared the lockout of {principal}"),
            )
        }
    }
}

/// Clears a lockout in the control store itself: whoever can open the store
/// has more power than any API token, so this needs no token.
async fn unlock_offline(
    principal: &str,
    store: Option<&Sensitive>,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let data_dir = global.data_dir.clone().unwrap_or_else(env::default_data_dir);
    let location = match store {
        Some(url) => parse_store(url.expose())?,
        None => StoreLocation::Sqlite(data_dir.join("bulkhead.db")),
    };
    // The event it records is MACed like the writer's, with the platform's
    // audit key: checked before anything changes.
    let key = bulkhead_control::audit::existing_platform_key(&data_dir)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let store = bulkhead_store::open(&location)
        .await
        .map_err(|e| CliError::new(Kind::Unreachable, e.to_string()))?;
    let cleared =
        store.delete_lockout(principal).await.map_err(|e| CliError::failed(e.to_string()))?;
    if !cleared {
        return Err(CliError::new(Kind::NotFound, format!("no lockout for {principal:?}")));
    }
    let details = CanonicalJson::from_value(&serde_json::json!({ "principal": principal }))
        .map_err(|e| CliError::failed(e.to_string()))?;
    let event = NewEvent {
        stream: StreamId::platform(),
        time: SystemClock.now(),
        actor: Actor { kind: "operator".into(), id: "offline".into() },
        action: "vault.unlock".into(),
        resource: format!("lockouts/{principal}"),
        outcome: "ok".into(),
        request_id: None,
        details,
    };
    append_offline(store.as_ref(), &key, event)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    output::done(
        global.output,
        &serde_json::json!({ "unlocked": principal, "store": store.location() }),
        &format!("cleared the lockout of {principal} in {}", store.location()),
    )
}
