//! `bulkhead apis ...`: the contracts a tenant's gateway routes by.

use bulkhead_model::{ApiSpec, Rate, Timeouts};

use crate::{
    args::{ApisCommand, CreateApiArgs, GlobalArgs},
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &ApisCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        ApisCommand::Create(args) => {
            let spec = spec(args)?;
            let created = client.create_api(&args.tenant, &spec).await?;
            output::apis(global.output, std::slice::from_ref(&created.api))
        }
        ApisCommand::List { tenant } => {
            output::apis(global.output, &client.apis(tenant).await?.apis)
        }
        ApisCommand::Get { tenant, name } => {
            output::apis(global.output, std::slice::from_ref(&client.api(tenant, name).await?))
        }
        ApisCommand::Delete { tenant, name } => {
            client.delete_api(tenant, name).await?;
            let text = format!("deleted API {name} of tenant {tenant}");
            output::done(global.output, &serde_json::json!({ "deleted": name }), &text)
        }
    }
}

fn millis(flag: &str, value: Option<&String>, default: u64) -> Result<u64, CliError> {
    match value {
        None => Ok(default),
        Some(text) => bulkhead_vault::ttl::parse_duration(text)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| CliError::usage(format!("--{flag}: {e}"))),
    }
}

/// The spec the flags describe, through the same deserialisation (and so
/// the same checks and defaults) as the API's JSON.
fn spec(args: &CreateApiArgs) -> Result<ApiSpec, CliError> {
    let defaults = Timeouts::default();
    let timeouts = Timeouts {
        connect_ms: millis("connect-timeout", args.connect_timeout.as_ref(), defaults.connect_ms)?,
        response_ms: millis(
            "response-timeout",
            args.response_timeout.as_ref(),
            defaults.response_ms,
        )?,
        idle_ms: millis("idle-timeout", args.idle_timeout.as_ref(), defaults.idle_ms)?,
    };
    let rate_limit = args
        .rate_limit
        .zip(args.burst)
        .map(|(requests_per_minute, burst)| Rate { requests_per_minute, burst });
    let mut json = serde_json::json!({
        "name": args.name,
        "prefix": args.prefix,
        "upstreams": args.upstreams,
        "strip_prefix": args.strip_prefix,
        "methods": args.methods,
        "auth": if args.public { "public" } else { "required" },
        "roles": args.roles,
        "timeouts": timeouts,
    });
    let optional = [
        ("type", args.api_type.as_ref().map(|t| serde_json::json!(t))),
        ("models", (!args.models.is_empty()).then(|| serde_json::json!(args.models))),
        ("protocol", args.protocol.as_ref().map(|p| serde_json::json!(p))),
        ("audience", args.audience.as_ref().map(|a| serde_json::json!(a))),
        ("rate_limit", rate_limit.map(|r| serde_json::json!(r))),
        ("max_body_bytes", args.max_body_bytes.map(|b| serde_json::json!(b))),
        ("audit", args.audit.as_ref().map(|a| serde_json::json!(a))),
    ];
    for (field, value) in optional {
        if let (Some(value), Some(object)) = (value, json.as_object_mut()) {
            object.insert(field.to_owned(), value);
        }
    }
    let spec: ApiSpec = serde_json::from_value(json).map_err(|e| CliError::usage(e.to_string()))?;
    spec.validate().map_err(|e| CliError::usage(format!("API {}: {e}", args.name)))
}
