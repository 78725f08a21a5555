//! One module per command group; each turns parsed arguments into calls and
//! output.

mod apis;
mod apps;
mod audit;
mod auth;
mod backups;
mod creds;
mod demo;
mod manifests;
mod migrate;
mod secrets;
mod serve;
mod tenants;
mod tools;
mod vault;

use std::process::ExitCode;

use crate::{
    args::{Cli, Command, Output, PlansCommand, UsageArgs, UsageCommand, VerifyCommand},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    if cli.global.output == Output::Yaml && !matches!(cli.command, Command::Get(_)) {
        return Err(CliError::usage("-o yaml is for `bulkhead get`; use -o json or -o table"));
    }
    let export = matches!(&cli.command, Command::Usage(UsageArgs { command: Some(_), .. }));
    if cli.global.output == Output::Csv && !export {
        return Err(CliError::usage(
            "-o csv is for `bulkhead usage export`; use -o json or -o table",
        ));
    }
    match &cli.command {
        Command::Diff(files) => return manifests::diff(files, &cli.global).await,
        Command::Apply(args) => manifests::apply(args, &cli.global).await,
        Command::Delete(args) => manifests::delete(args, &cli.global).await,
        Command::Get(command) => manifests::get(command, &cli.global).await,
        Command::Serve(args) => serve::run(args, cli.global.data_dir.as_deref()).await,
        Command::Tenants(command) => tenants::run(command, &cli.global).await,
        Command::Secrets(command) => secrets::run(command, &cli.global).await,
        Command::Creds(command) => creds::run(command, &cli.global).await,
        Command::Vault(command) => vault::run(command, &cli.global).await,
        Command::Auth(command) => auth::run(command, &cli.global).await,
        Command::Apikeys(command) => auth::apikeys(command, &cli.global).await,
        Command::Apis(command) => apis::run(command, &cli.global).await,
        Command::Tools(command) => tools::run(command, &cli.global).await,
        Command::Apps(command) => apps::run(command, &cli.global).await,
        Command::Logs(args) => apps::logs(args, &cli.global).await,
        Command::Flags(command) => apps::flags(command, &cli.global).await,
        Command::Rollout(command) => apps::rollout(command, &cli.global).await,
        Command::Demo { clean } => demo::run(*clean, &cli.global).await,
        Command::Usage(UsageArgs {
            command: Some(UsageCommand::Export { period, tenant }),
            ..
        }) => {
            let client = ApiClient::discover(&cli.global)?;
            let export = client.usage_export(period, tenant.as_deref()).await?;
            output::usage_export(cli.global.output, &export)
        }
        Command::Usage(UsageArgs { command: None, tenant, api, since }) => {
            let client = ApiClient::discover(&cli.global)?;
            let tenant = tenant.as_deref().unwrap_or_default();
            let usage = client.usage(tenant, api.as_deref(), since.as_deref()).await?;
            output::usage(cli.global.output, &usage.usage)
        }
        Command::Audit(command) => audit::run(command, &cli.global).await,
        Command::Backups(command) => backups::run(command, &cli.global).await,
        Command::Migrate(args) => return migrate::run(args, &cli.global).await,
        Command::Verify { check: None } => {
            let client = ApiClient::discover(&cli.global)?;
            let public = client.public_apis().await?;
            output::public_apis(cli.global.output, &public.apis)
        }
        Command::Verify { check: Some(VerifyCommand::Isolation { tenant }) } => {
            let client = ApiClient::discover(&cli.global)?;
            let report = client.verify_isolation(tenant.as_deref()).await?;
            output::isolation(cli.global.output, &report)?;
            return Ok(if report.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Status { api_url } => {
            let client = ApiClient::discover(&cli.global)?;
            let status = client.status().await?;
            if *api_url {
                outln!("{}", status.api_url);
                return Ok(ExitCode::SUCCESS);
            }
            output::status(cli.global.output, &status)
        }
        Command::Plans(PlansCommand::List) => {
            let client = ApiClient::discover(&cli.global)?;
            output::plans(cli.global.output, &client.plans().await?.plans)
        }
    }?;
    Ok(ExitCode::SUCCESS)
}
