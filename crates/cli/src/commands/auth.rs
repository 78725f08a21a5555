//! `bulkhead auth ...` and `bulkhead apikeys ...`: realms' tokens, signing
//! keys and API keys.

use bulkhead_control::api::types::{CreateApiKeyRequest, IssueTokenRequest, TrustRequest};

use crate::{
    args::{ApikeysCommand, AuthCommand, GlobalArgs, Output},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &AuthCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        AuthCommand::Token { tenant, subject, roles, ttl, audience, control_api } => {
            let request = IssueTokenRequest {
                subject: subject.clone(),
                roles: roles.clone(),
                ttl: ttl.clone(),
                audience: audience.clone(),
                control_api: *control_api,
            };
            let token = client.issue_token(tenant, &request).await?;
            if global.output == Output::Json {
                output::json(&token)?;
            } else {
                // The token alone on stdout, for `TOKEN=$(bulkhead auth token ...)`.
                outln!("{}", token.token);
            }
            output::printed("the token")
        }
        AuthCommand::RotateKey { tenant, algorithm } => {
            let rotated = client.rotate_realm_key(tenant, algorithm.as_deref()).await?;
            let text = format!(
                "realm {tenant} now signs with key {}; {} older key(s) stay published until \
                 their tokens expire",
                rotated.kid, rotated.retired
            );
            output::done(global.output, &rotated, &text)
        }
        AuthCommand::RevokeTokens { tenant } => {
            let revoked = client.revoke_realm_tokens(tenant).await?;
            let text = format!(
                "realm {tenant} refuses every token issued until {}; {} API key(s) made with a \
                 token revoked too (other API keys are unaffected)",
                revoked.not_before, revoked.api_keys_revoked
            );
            output::done(global.output, &revoked, &text)
        }
        AuthCommand::Keys { tenant } => {
            output::realm_keys(global.output, &client.realm_keys(tenant).await?.keys)
        }
        AuthCommand::Trust {
            tenant,
            issuer,
            jwks_url,
            audience,
            subject_claim,
            roles_claim,
            role_map,
        } => {
            let request = TrustRequest {
                issuer: issuer.clone(),
                jwks_url: jwks_url.clone(),
                audience: audience.clone(),
                role_map: role_map.iter().cloned().collect(),
                subject_claim: Some(subject_claim.clone()),
                roles_claim: Some(roles_claim.clone()),
            };
            let trust = client.set_trust(tenant, &request).await?;
            let text = format!(
                "tenant {tenant} now accepts tokens of {} (keys from {})",
                trust.issuer, trust.jwks_url
            );
            output::done(global.output, &trust, &text)
        }
        AuthCommand::Untrust { tenant } => {
            client.remove_trust(tenant).await?;
            output::done(
                global.output,
                &serde_json::json!({ "tenant": tenant, "trusted": false }),
                &format!("tenant {tenant} no longer accepts an external provider's tokens"),
            )
        }
    }
}

pub async fn apikeys(command: &ApikeysCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        ApikeysCommand::Create { tenant, name, roles, ttl } => {
            let request =
                CreateApiKeyRequest { name: name.clone(), roles: roles.clone(), ttl: ttl.clone() };
            let created = client.create_api_key(tenant, &request).await?;
            if global.output == Output::Json {
                output::json(&created)?;
                return output::printed("the API key");
            }
            let lives = match created.api_key.expires_at {
                Some(at) => format!("it expires at {at}"),
                None => "it lasts until revoked".to_owned(),
            };
            eprintln!(
                "API key {} ({}) created; {lives}; it is shown this once, store it now:",
                created.api_key.name, created.api_key.id
            );
            outln!("{}", created.key);
            output::printed("the API key")
        }
        ApikeysCommand::List { tenant } => {
            output::api_keys(global.output, &client.api_keys(tenant).await?.api_keys)
        }
        ApikeysCommand::Revoke { tenant, id } => {
            client.revoke_api_key(tenant, id).await?;
            output::done(
                global.output,
                &serde_json::json!({ "tenant": tenant, "revoked": id }),
                &format!("revoked API key {id}"),
            )
        }
    }
}
