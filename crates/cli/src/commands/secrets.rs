//! `bulkhead secrets ...`. Values come from standard input or a file,
//! never from the command line (where `ps` and shell history would keep
//! them), and are written back byte for byte.

use std::io::{IsTerminal, Read, Write};

use base64::{Engine, engine::general_purpose::STANDARD};
use bulkhead_vault::SecretPath;
use zeroize::Zeroizing;

use crate::{
    args::{GlobalArgs, Output, SecretsCommand},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &SecretsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    // Checked here too: a path such as `a/../b` must not be resolved by the
    // URL it travels in before the server can refuse it.
    if let SecretsCommand::Put { path, .. }
    | SecretsCommand::Get { path, .. }
    | SecretsCommand::Delete { path, .. } = command
    {
        SecretPath::parse(path).map_err(|e| CliError::usage(e.to_string()))?;
    }
    let client = ApiClient::discover(global)?;
    match command {
        SecretsCommand::Put { tenant, path, file } => {
            let value = match file {
                Some(file) => Zeroizing::new(std::fs::read(file).map_err(|e| {
                    CliError::usage(format!("cannot read {}: {e}", file.display()))
                })?),
                None => read_stdin()?,
            };
            let written = client.put_secret(tenant, path, value).await?;
            output::secret_written(global.output, &written)
        }
        SecretsCommand::Get { tenant, path, version } => {
            let (stored, value) = client.get_secret(tenant, path, *version).await?;
            if global.output == Output::Json {
                // Text as text; anything else (the value is bytes) as base64.
                let version = stored.and_then(|v| v.parse::<i64>().ok());
                let (key, text) = match std::str::from_utf8(&value) {
                    Ok(text) => ("value", Zeroizing::new(text.to_owned())),
                    Err(_) => ("value_base64", Zeroizing::new(STANDARD.encode(&*value))),
                };
                let mut view = serde_json::json!({
                    "tenant": tenant, "path": path, "version": version,
                });
                view[key] = serde_json::Value::from(text.as_str());
                return output::json(&view);
            }
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&value)
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::failed(format!("cannot write the value: {e}")))
        }
        SecretsCommand::List { tenant } => {
            output::secrets(global.output, &client.list_secrets(tenant).await?.secrets)
        }
        SecretsCommand::Delete { tenant, path } => {
            client.delete_secret(tenant, path).await?;
            output::done(
                global.output,
                &serde_json::json!({ "tenant": tenant, "deleted": path }),
                &format!("deleted every version of {path}"),
            )
        }
        SecretsCommand::Rewrap { tenant } => {
            let view = client.rewrap(tenant).await?;
            let text = format!(
                "re-encrypted {} secret version(s) under the latest data key",
                view.reencrypted
            );
            output::done(global.output, &view, &text)
        }
    }
}

fn read_stdin() -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        eprintln!("reading the secret value from standard input; end it with Ctrl-D");
    }
    let mut value = Zeroizing::new(Vec::new());
    stdin
        .read_to_end(&mut value)
        .map_err(|e| CliError::failed(format!("cannot read standard input: {e}")))?;
    Ok(value)
}
