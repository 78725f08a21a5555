//! `bulkhead apps ...` and `bulkhead logs`: tenants' apps and their
//! workers' output.

use std::{collections::BTreeMap, time::Duration};

use bulkhead_model::{AppLimits, AppSecret, AppSpec, HealthCheck};
use serde_json::Value;

use crate::{
    args::{
        AppsCommand, DeployAppArgs, FlagsCommand, GlobalArgs, LogsArgs, Output, RolloutCommand,
    },
    client::ApiClient,
    exit::CliError,
    output,
};

pub async fn run(command: &AppsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        AppsCommand::Deploy(args) => {
            let view = client.deploy_app(&args.tenant, &spec(args)?).await?;
            show(global.output, std::slice::from_ref(&view))
        }
        AppsCommand::List { tenant } => {
            let list = client.apps(tenant).await?;
            show(global.output, list["apps"].as_array().map(Vec::as_slice).unwrap_or_default())
        }
        AppsCommand::Get { tenant, name } => {
            show(global.output, std::slice::from_ref(&client.app(tenant, name).await?))
        }
        AppsCommand::Start { tenant, name } => show(
            global.output,
            std::slice::from_ref(&client.app_action(tenant, name, "start").await?),
        ),
        AppsCommand::Stop { tenant, name } => show(
            global.output,
            std::slice::from_ref(&client.app_action(tenant, name, "stop").await?),
        ),
        AppsCommand::Pin { tenant, name } => show(
            global.output,
            std::slice::from_ref(&client.app_action(tenant, name, "pin").await?),
        ),
        AppsCommand::Unpin { tenant, name } => show(
            global.output,
            std::slice::from_ref(&client.app_action(tenant, name, "unpin").await?),
        ),
        AppsCommand::Delete { tenant, name } => {
            client.delete_app(tenant, name).await?;
            let text = format!("deleted app {name} of tenant {tenant}; its workers are stopping");
            output::done(global.output, &serde_json::json!({ "deleted": name }), &text)
        }
    }
}

/// `bulkhead rollout ...`.
pub async fn rollout(command: &RolloutCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    let rollout = match command {
        RolloutCommand::Start(args) => {
            let request = serde_json::json!({
                "app": args.app,
                "version": args.version,
                "artifact": args.artifact,
                "canary": args.canary,
                "batch": args.batch,
                "pause": args.pause,
                "max_unhealthy": args.max_unhealthy,
            });
            client.start_rollout(&request).await?
        }
        RolloutCommand::Status { id: Some(id) } => client.rollout(id).await?,
        RolloutCommand::Status { id: None } => {
            let list = client.rollouts().await?;
            let rollouts = list["rollouts"].as_array().map(Vec::as_slice).unwrap_or_default();
            if global.output == Output::Json {
                return output::json(&rollouts);
            }
            let rows: Vec<Vec<String>> = rollouts
                .iter()
                .map(|r| {
                    let text = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
                    vec![text("id"), text("app"), text("version"), text("state"), progress(r)]
                })
                .collect();
            outln!("{}", output::table(&["ID", "APP", "VERSION", "STATE", "TENANTS"], &rows));
            return Ok(());
        }
        RolloutCommand::Pause { id } => client.steer_rollout(id, "pause").await?,
        RolloutCommand::Resume { id } => client.steer_rollout(id, "resume").await?,
        RolloutCommand::Abort { id } => client.steer_rollout(id, "abort").await?,
    };
    show_rollout(global.output, &rollout)
}

/// `moved 3, moving 1, failed 0, pending 6, skipped 1`
fn progress(rollout: &Value) -> String {
    let steps = rollout["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
    ["moved", "moving", "failed", "pending", "skipped"]
        .iter()
        .map(|state| {
            let n = steps.iter().filter(|s| s["state"] == *state).count();
            format!("{state} {n}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_rollout(format: Output, rollout: &Value) -> Result<(), CliError> {
    if format == Output::Json {
        return output::json(rollout);
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let rows: Vec<Vec<String>> = rollout["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let batch = match s["batch"].as_u64() {
                _ if s["state"] == "skipped" => "-".to_owned(),
                Some(0) => "canary".to_owned(),
                Some(n) => n.to_string(),
                None => String::new(),
            };
            vec![
                text(&s["tenant"]),
                batch,
                text(&s["from_version"]),
                text(&s["state"]),
                text(&s["reason"]),
            ]
        })
        .collect();
    outln!(
        "rollout {} of app {} to {}: {}{}",
        text(&rollout["id"]),
        text(&rollout["app"]),
        text(&rollout["version"]),
        text(&rollout["state"]),
        rollout["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
    );
    outln!("{}", progress(rollout));
    outln!("{}", output::table(&["TENANT", "BATCH", "FROM", "STATE", "REASON"], &rows));
    Ok(())
}

/// The spec the flags describe, checked as the server will check it.
fn spec(args: &DeployAppArgs) -> Result<AppSpec, CliError> {
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--env {pair:?}: write KEY=VALUE")))?;
        env.insert(key.to_owned(), value.to_owned());
    }
    let secrets = args
        .secret
        .iter()
        .map(|s| match s.split_once('=') {
            Some((path, file)) => AppSecret { path: path.to_owned(), file: Some(file.to_owned()) },
            None => AppSecret { path: s.clone(), file: None },
        })
        .collect();
    let health = args
        .health
        .as_ref()
        .map(|path| serde_json::from_value::<HealthCheck>(serde_json::json!({ "path": path })));
    let spec = AppSpec {
        name: bulkhead_model::AppName::parse(&args.name)
            .map_err(|e| CliError::usage(e.to_string()))?,
        version: args.version.clone(),
        command: args.command.clone(),
        artifact: args.artifact.clone(),
        env,
        secrets,
        workers: args.workers,
        health: health.transpose().map_err(|e| CliError::usage(e.to_string()))?,
        limits: AppLimits {
            memory_mib: args.memory_mib,
            max_processes: args.max_processes,
            cpu_millicores: args.cpu_millicores,
        },
        egress: args.egress.clone(),
    };
    spec.validate().map_err(|e| CliError::usage(format!("app {}: {e}", args.name)))
}

/// `2.0`, `1.0 -> 2.0` while the app switches, `(pinned)` after it.
fn version(app: &Value) -> String {
    let spec = app["spec"]["version"].as_str().unwrap_or_default();
    let live = app["live_version"].as_str().unwrap_or(spec);
    let mut text = if live == spec { spec.to_owned() } else { format!("{live} -> {spec}") };
    if app["pinned"].as_bool() == Some(true) {
        text.push_str(" (pinned)");
    }
    text
}

fn show(format: Output, apps: &[Value]) -> Result<(), CliError> {
    if format == Output::Json {
        return output::json(&apps);
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|app| {
            let workers: Vec<String> = app["workers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|w| {
                    let state = w["state"].as_str().unwrap_or("?");
                    match (state, w["reason"].as_str(), w["last_exit"].as_str()) {
                        ("failed", Some(reason), _) => format!("failed: {reason}"),
                        ("backoff", _, Some(exit)) => format!("restarting ({exit})"),
                        _ => state.to_owned(),
                    }
                })
                .collect();
            vec![
                app["spec"]["name"].as_str().unwrap_or_default().to_owned(),
                version(app),
                if app["running"].as_bool() == Some(true) { "yes" } else { "stopped" }.to_owned(),
                workers.join(", "),
            ]
        })
        .collect();
    outln!("{}", output::table(&["NAME", "VERSION", "RUNNING", "WORKERS"], &rows));
    Ok(())
}

/// `bulkhead logs`: prints the lines, and with `--follow` polls for new
/// ones every second (the server keeps no connection per follower).
pub async fn logs(args: &LogsArgs, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    let mut query = vec![("worker", args.worker.to_string()), ("tail", args.tail.to_string())];
    if let Some(since) = &args.since {
        query.push(("since", since.clone()));
    }
    let mut last: Option<String> = None;
    loop {
        let answer = client.app_logs(&args.tenant, &args.app, &query).await?;
        let lines: Vec<&str> = answer["lines"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // Lines at the last one's time came back again: skip through it.
        let start = match &last {
            Some(last) => lines.iter().position(|l| l == last).map_or(0, |i| i + 1),
            None => 0,
        };
        for line in &lines[start..] {
            // A worker writes what it likes: no escape sequence of its
            // reaches the operator's terminal.
            let line: String = line
                .chars()
                .map(|c| if c.is_control() && c != '\t' { '\u{fffd}' } else { c })
                .collect();
            if global.output == Output::Json {
                output::json(&line)?;
            } else {
                outln!("{line}");
            }
        }
        // Followed until the reader goes away.
        if !args.follow || output::stdout_error().is_some() {
            return Ok(());
        }
        if let Some(newest) = lines.last() {
            let stamp = newest.split(' ').next().unwrap_or_default().to_owned();
            query.retain(|(k, _)| *k != "since");
            query.push(("since", stamp));
            last = Some((*newest).to_owned());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `bulkhead flags set|unset|list`.
pub async fn flags(command: &FlagsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    let answer = match command {
        FlagsCommand::Set { tenant, pairs } => {
            let mut set = serde_json::Map::new();
            for pair in pairs {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| CliError::usage(format!("{pair:?}: write KEY=VALUE")))?;
                set.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            client.change_flags(tenant, &serde_json::json!({ "set": set })).await?
        }
        FlagsCommand::Unset { tenant, keys } => {
            client.change_flags(tenant, &serde_json::json!({ "unset": keys })).await?
        }
        FlagsCommand::List { tenant } => client.flags(tenant).await?,
    };
    if global.output == Output::Json {
        return output::json(&answer["flags"]);
    }
    let rows: Vec<Vec<String>> = answer["flags"]
        .as_object()
        .map(|flags| {
            flags
                .iter()
                .map(|(k, v)| vec![k.clone(), v.as_str().unwrap_or_default().to_owned()])
                .collect()
        })
        .unwrap_or_default();
    outln!("{}", output::table(&["FLAG", "VALUE"], &rows));
    Ok(())
}
