//! `bulkhead creds ...`: short-lived database logins.

use bulkhead_control::{api::types::IssueCredentialRequest, credentials::Access};

use crate::{
    args::{AccessArg, CredsCommand, GlobalArgs},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &CredsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        CredsCommand::Issue { tenant, ttl, access } => {
            if let Some(ttl) = ttl {
                bulkhead_vault::ttl::parse_duration(ttl)
                    .map_err(|e| CliError::usage(format!("--ttl: {e}")))?;
            }
            let request = IssueCredentialRequest {
                access: Some(match access {
                    AccessArg::Write => Access::Write,
                    AccessArg::Read => Access::Read,
                }),
                ttl: ttl.clone(),
            };
            output::credential(global.output, &client.issue_credential(tenant, &request).await?)
        }
        CredsCommand::Revoke { lease, tenant } => {
            let lease = client.revoke_credential(tenant.as_deref(), lease).await?;
            output::leases(global.output, std::slice::from_ref(&lease))
        }
        CredsCommand::List { tenant, all } => {
            output::leases(global.output, &client.list_credentials(tenant, *all).await?.leases)
        }
    }
}
