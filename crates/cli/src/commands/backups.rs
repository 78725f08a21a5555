//! `bulkhead backups ...`: take, list, verify and delete a tenant's
//! backups, and manage the key they are encrypted to.

use std::{io::Write, os::unix::fs::OpenOptionsExt};

use zeroize::Zeroizing;

use crate::{
    args::{BackupKeyCommand, BackupsCommand, GlobalArgs, RestoreArgs},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &BackupsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        BackupsCommand::Create { tenant } => {
            let backup = client.create_backup(tenant).await?;
            output::backup(global.output, &backup)
        }
        BackupsCommand::List { tenant } => {
            let list = client.list_backups(tenant).await?;
            output::backups(global.output, &list)
        }
        BackupsCommand::Get { tenant, id } => {
            let backup = client.get_backup(tenant, id).await?;
            output::backup(global.output, &backup)
        }
        BackupsCommand::Verify { tenant, id, identity_file } => {
            let identity = match identity_file {
                Some(file) => Some(read_identity(file)?),
                None => None,
            };
            let identity = identity.as_ref().map(|i| i.as_str());
            let verified = client.verify_backup(tenant, id, identity).await?;
            let text = format!(
                "backup {} verified: {} parts decrypted, each with the size and SHA-256 its \
                 manifest records",
                verified.id,
                verified.parts.len()
            );
            output::done(global.output, &verified, &text)
        }
        BackupsCommand::Delete { tenant, id } => {
            client.delete_backup(tenant, id).await?;
            let text = format!("backup {id} of tenant {tenant} deleted");
            output::done(global.output, &serde_json::json!({ "deleted": id }), &text)
        }
        BackupsCommand::Restore(args) => restore(&client, args, global).await,
        BackupsCommand::Key(BackupKeyCommand::Show { tenant }) => {
            let key = client.backup_key(tenant).await?;
            output::backup_key(global.output, &key)
        }
        BackupsCommand::Key(BackupKeyCommand::Set { tenant, recipient, vault: _ }) => {
            let key = client.set_backup_key(tenant, recipient.as_deref()).await?;
            output::backup_key(global.output, &key)
        }
        BackupsCommand::Key(BackupKeyCommand::Export { tenant, file }) => {
            // Opened first: a file that exists is refused before the key
            // is handed out (and recorded as such).
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .map_err(|e| CliError::usage(format!("cannot create {}: {e}", file.display())))?;
            let identity = match client.export_backup_key(tenant).await {
                Ok(identity) => identity,
                Err(error) => {
                    let _ = std::fs::remove_file(file);
                    return Err(error);
                }
            };
            out.write_all(format!("{}\n", identity.as_str()).as_bytes())
                .and_then(|()| out.sync_all())
                .map_err(|e| CliError::failed(format!("cannot write {}: {e}", file.display())))?;
            let text =
                format!("wrote the backup identity of tenant {tenant} to {}", file.display());
            output::done(
                global.output,
                &serde_json::json!({ "tenant": tenant, "file": file }),
                &text,
            )
        }
    }
}

async fn restore(
    client: &ApiClient,
    args: &RestoreArgs,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let identity = match &args.identity_file {
        Some(file) => Some(read_identity(file)?),
        None => None,
    };
    let restored = match (&args.from, &args.tenant, &args.id) {
        (Some(from), _, _) => {
            let identity =
                identity.ok_or_else(|| CliError::usage("--from needs --identity-file"))?;
            let archive = if from.starts_with("https://") || from.starts_with("http://") {
                client.fetch_archive(from).await?
            } else {
                let file = tokio::fs::File::open(from)
                    .await
                    .map_err(|e| CliError::usage(format!("cannot read {from}: {e}")))?;
                reqwest::Body::from(file)
            };
            client.restore_archive(archive, &identity, args.to.as_deref()).await?
        }
        (None, Some(tenant), Some(id)) => {
            if args.to.is_none() && !args.yes {
                confirm(tenant)?;
            }
            let identity = identity.as_ref().map(|i| i.as_str());
            client.restore_backup(tenant, id, args.to.as_deref(), args.force, identity).await?
        }
        _ => return Err(CliError::usage("give --tenant T ID, or --from FILE|URL")),
    };
    let mut text = format!("restored {} into tenant {}", restored.backup, restored.tenant);
    if restored.created {
        text.push_str(" (new)");
    }
    output::done(global.output, &restored, &with_warnings(text, &restored))
}

/// `text`, then each of the restore's warnings on a line of its own.
pub fn with_warnings(
    mut text: String,
    restored: &bulkhead_control::api::backups::RestoreView,
) -> String {
    for warning in &restored.warnings {
        text.push_str(&format!("\nwarning: {warning}"));
    }
    text
}

/// Restoring over a tenant replaces its data: asked at a terminal, else
/// only with --yes.
fn confirm(tenant: &str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal};
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(format!(
            "restoring into tenant {tenant} replaces its data and suspends it meanwhile; pass \
             --yes to confirm, or --to NAME to restore into a new tenant"
        )));
    }
    eprint!("restoring replaces the data of tenant {tenant}; type its name to go on: ");
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::failed(format!("stdin: {e}")))?;
    if answer.trim() != tenant {
        return Err(CliError::usage("not confirmed; nothing was restored"));
    }
    Ok(())
}

pub fn read_identity(file: &std::path::Path) -> Result<Zeroizing<String>, CliError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?,
    );
    // An `age-keygen` file has comment lines before the key.
    let key =
        text.lines().map(str::trim).find(|line| line.starts_with("AGE-SECRET-KEY-")).ok_or_else(
            || {
                CliError::usage(format!(
                    "{} holds no age identity (a line AGE-SECRET-KEY-1...)",
                    file.display()
                ))
            },
        )?;
    Ok(Zeroizing::new(key.to_owned()))
}
