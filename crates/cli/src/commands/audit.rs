//! `bulkhead audit ...`: read a stream, export it, verify an export
//! offline.
#![allow(clippy::print_stdout)]

use std::{
    fs::File,
    io::{BufReader, Write},
    path::Path,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bulkhead_audit::{Report, verify_export};
use bulkhead_control::{api::audit::AuditKeyList, audit::EventView};

use crate::{
    args::{AuditCommand, GlobalArgs, Output, StreamArg},
    client::ApiClient,
    exit::{CliError, Kind},
    output,
};

/// How often `tail --follow` asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub async fn run(command: &AuditCommand, global: &GlobalArgs) -> Result<(), CliError> {
    match command {
        AuditCommand::Tail { stream, lines, follow } => tail(stream, *lines, *follow, global).await,
        AuditCommand::Export { stream, since } => {
            let client = ApiClient::discover(global)?;
            let mut response =
                client.audit_export(stream.tenant.as_deref(), since.as_deref()).await?;
            let mut stdout = std::io::stdout().lock();
            let cut = |e: reqwest::Error| {
                CliError::new(Kind::Server, format!("the export was cut short: {e}"))
            };
            while let Some(chunk) = response.chunk().await.map_err(cut)? {
                stdout.write_all(&chunk).map_err(|e| CliError::failed(format!("stdout: {e}")))?;
            }
            stdout.flush().map_err(|e| CliError::failed(format!("stdout: {e}")))
        }
        AuditCommand::Verify { file, keys, keys_file } => {
            verify(file, keys, keys_file.as_deref(), global)
        }
    }
}

async fn tail(
    stream: &StreamArg,
    lines: u32,
    follow: bool,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    let tenant = stream.tenant.as_deref();
    let first = client.audit_events(tenant, None, lines.max(1)).await?.events;
    if !follow && global.output == Output::Json {
        return output::json(&first);
    }
    let mut last = first.last().map(|e| e.seq);
    print_events(global.output, &first)?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let next = client.audit_events(tenant, Some(last.unwrap_or(0)), 1_000).await?.events;
        if let Some(event) = next.last() {
            last = Some(event.seq);
        }
        print_events(global.output, &next)?;
    }
}

fn print_events(format: Output, events: &[EventView]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    for event in events {
        let line = match format {
            Output::Json => {
                serde_json::to_string(event).map_err(|e| CliError::failed(e.to_string()))?
            }
            Output::Table => format!(
                "{:>6}  {}  {:<24} {:<22} {:<32} {}",
                event.seq,
                event.time,
                format!("{}:{}", event.actor_kind, event.actor_id),
                event.action,
                event.resource,
                event.outcome
            ),
        };
        writeln!(stdout, "{line}").map_err(|e| CliError::failed(format!("stdout: {e}")))?;
    }
    stdout.flush().map_err(|e| CliError::failed(format!("stdout: {e}")))
}

fn verify(
    file: &Path,
    keys: &[String],
    keys_file: Option<&Path>,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let mut pinned = Vec::new();
    for key in keys {
        pinned.push(public_key(key)?);
    }
    if let Some(path) = keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        let list: AuditKeyList = serde_json::from_str(&text).map_err(|e| {
            CliError::usage(format!("{} is not an audit-keys.json document: {e}", path.display()))
        })?;
        for key in &list.keys {
            pinned.push(public_key(&key.public_key)?);
        }
    }
    let result = if file == Path::new("-") {
        verify_export(std::io::stdin().lock(), &pinned)
    } else {
        let opened = File::open(file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
        verify_export(BufReader::with_capacity(1 << 20, opened), &pinned)
    };
    match result {
        Ok(report) => {
            if global.output == Output::Json {
                return output::json(&report_json(&report, !pinned.is_empty()));
            }
            let signers: Vec<String> = report
                .signers
                .iter()
                .map(|(id, pinned)| format!("{id}{}", if *pinned { " (pinned)" } else { "" }))
                .collect();
            println!(
                "verified: stream {}{}: {} event{} (seq {}..{}), {} signed checkpoint{} by key {}",
                report.stream,
                report.tenant.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
                report.events,
                plural(report.events),
                report.first_seq.unwrap_or(0),
                report.last_seq,
                report.checkpoints,
                plural(report.checkpoints),
                signers.join(", ")
            );
            if report.start > 1 {
                eprintln!(
                    "note: a partial export: events before seq {} are not in this file (an export \
                     --since, or retention), as its export checkpoint signs; compare with your \
                     earlier exports",
                    report.start
                );
            }
            if pinned.is_empty() {
                eprintln!(
                    "note: the keys were taken from the file itself; pass --key or --keys-file \
                     (the realm's audit-keys.json, fetched beforehand) to trust no one"
                );
            }
            Ok(())
        }
        Err(broken) => Err(CliError::failed(format!("broken: {broken}"))),
    }
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn public_key(text: &str) -> Result<[u8; 32], CliError> {
    URL_SAFE_NO_PAD.decode(text.trim()).ok().and_then(|bytes| bytes.try_into().ok()).ok_or_else(
        || CliError::usage(format!("{text:?} is not a public key (base64url of 32 bytes)")),
    )
}

fn report_json(report: &Report, pinned: bool) -> serde_json::Value {
    serde_json::json!({
        "stream": report.stream,
        "tenant": report.tenant,
        "events": report.events,
        "start_seq": report.start,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "head": bulkhead_audit::record::hex(&report.head),
        "checkpoints": report.checkpoints,
        "signers": report.signers.iter().map(|(id, p)| serde_json::json!({"key_id": id, "pinned": p})).collect::<Vec<_>>(),
        "keys_pinned": pinned,
    })
}
