//! `bulkhead tools ...`: a tenant's tool registry, what its agents may
//! call through its MCP endpoint.

use bulkhead_control::api::types::{ToolApplied, ToolList};
use bulkhead_model::ToolSpec;
use serde_json::json;

use crate::{
    args::{AddToolArgs, GlobalArgs, ToolsCommand},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &ToolsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        ToolsCommand::Add(args) => {
            let spec = spec(args)?;
            let applied: ToolApplied =
                client.put_resource(&args.tenant, "tools", &spec.name, &spec).await?;
            let text = format!("tool {} of tenant {} {}", spec.name, args.tenant, applied.result);
            output::done(global.output, &applied, &text)
        }
        ToolsCommand::List { tenant } => output::tools(
            global.output,
            &client.resources::<ToolList>(tenant, "tools").await?.tools,
        ),
        ToolsCommand::Delete { tenant, name } => {
            client.delete_resource(tenant, "tools", name).await?;
            let text = format!("deleted tool {name} of tenant {tenant}");
            output::done(global.output, &json!({ "deleted": name }), &text)
        }
    }
}

/// The spec the flags describe, through the same deserialisation and
/// checks as the API's JSON.
fn spec(args: &AddToolArgs) -> Result<ToolSpec, CliError> {
    let upstream = match (&args.mcp, &args.http) {
        (Some(url), _) => json!({ "mcp": url }),
        (None, Some(url)) => json!({ "http": url }),
        (None, None) => return Err(CliError::usage("give --mcp URL or --http URL")),
    };
    let mut value = json!({
        "name": args.name,
        "upstream": upstream,
        "tools": args.tools,
        "roles": args.roles,
    });
    if let Some(secret) = &args.secret {
        value["credential"] = json!({ "secret": secret, "header": args.header });
    }
    if let Some(description) = &args.description {
        value["description"] = json!(description);
    }
    let spec: ToolSpec =
        serde_json::from_value(value).map_err(|e| CliError::usage(e.to_string()))?;
    spec.validate().map_err(|e| CliError::usage(e.to_string()))?;
    Ok(spec)
}
