//! `bulkhead serve`: load and validate configuration, start the control
//! plane, run until SIGINT or SIGTERM, stop gracefully.

use std::{io::IsTerminal, path::Path};

use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::{
    args::{LogFormat, Role, ServeArgs},
    env,
    exit::CliError,
    settings::ServeSettings,
};

pub async fn run(args: &ServeArgs, data_dir: Option<&Path>) -> Result<(), CliError> {
    let settings = ServeSettings::load(args, data_dir)?;
    init_logging(settings.log_format)?;
    if args.role == Role::Gateway {
        let running = bulkhead_control::start_gateway(settings.config)
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        wait_for_signal().await?;
        tracing::info!("shutting down");
        running.shutdown().await;
        return Ok(());
    }
    let data_dir = settings.config.data_dir.clone();
    let running = bulkhead_control::start(settings.config)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    tracing::info!(
        "operator token in {}; try: bulkhead tenants create acme --plan professional --wait",
        data_dir.join("operator.token").display()
    );
    tokio::select! {
        signal = wait_for_signal() => signal?,
        reason = running.failed() => {
            running.shutdown().await;
            return Err(CliError::failed(reason));
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Logs go to stderr. `BULKHEAD_LOG` takes `target=level` directives
/// (`Targets`, not `EnvFilter`: span-field filters are not worth the regex
/// engine they would build into the binary).
fn init_logging(format: LogFormat) -> Result<(), CliError> {
    let filter: Targets = match std::env::var(env::LOG) {
        Ok(directives) => directives
            .parse()
            .map_err(|e| CliError::usage(format!("{} {directives:?}: {e}", env::LOG)))?,
        Err(_) => Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("sqlx", tracing::Level::WARN),
    };
    // The builder's own filter would stop at INFO; `filter` decides.
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.finish().with(filter).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(filter)
            .try_init(),
    };
    installed.map_err(|e| CliError::failed(format!("cannot set up logging: {e}")))
}

async fn wait_for_signal() -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| CliError::failed(format!("cannot listen for SIGTERM: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
