//! `bulkhead audit ...`: read a stream, export it, verify an export
//! offline.

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
            let response = client.audit_export(stream.tenant.as_deref(), since.as_deref()).await?;
            export(response).await
        }
        AuditCommand::Verify { file, keys, keys_file, previous, checkpoint } => verify(
            file,
            keys,
            keys_file.as_deref(),
            previous.as_deref(),
            checkpoint.as_deref(),
            global,
        ),
    }
}

/// Copies an export to standard output line by line. An export the server
/// could not finish ends with an error line instead of its export
/// checkpoint: that line is not copied, and its message is the error.
async fn export(mut response: reqwest::Response) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let write_error = |e: std::io::Error| CliError::failed(format!("stdout: {e}"));
    let cut = |why: String| {
        CliError::new(
            Kind::Server,
            format!("the export was cut short ({why}); the file is incomplete, export again"),
        )
    };
    // Bytes of the line not yet complete.
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| cut(e.to_string()))? {
        pending.extend_from_slice(&chunk);
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else { continue };
        let complete: Vec<u8> = pending.drain(..=end).collect();
        let last = complete[..end].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete[last..].starts_with(b"{\"error\":") {
            stdout.write_all(&complete[..last]).map_err(write_error)?;
            stdout.flush().map_err(write_error)?;
            return Err(trailer_error(&complete[last..]));
        }
        stdout.write_all(&complete).map_err(write_error)?;
    }
    if !pending.is_empty() {
        return Err(cut("it ended inside a line".into()));
    }
    stdout.flush().map_err(write_error)
}

/// The error an export's error line reports.
fn trailer_error(line: &[u8]) -> CliError {
    #[derive(serde::Deserialize)]
    struct Trailer {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Trailer>(line) {
        Ok(Trailer { error }) => CliError::new(
            if error.code == "unavailable" { Kind::Server } else { Kind::Failed },
            format!("the export was refused midway: {} ({})", error.message, error.code),
        ),
        Err(_) => CliError::new(Kind::Server, "the export ended with an unreadable error line"),
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
    if global.output == Output::Table {
        outln!(
            "{:>6}  {:<27}  {:<24} {:<22} {:<8} RESOURCE",
            "SEQ",
            "TIME",
            "ACTOR",
            "ACTION",
            "OUTCOME"
        );
    }
    print_events(global.output, &first)?;
    if !follow {
        return Ok(());
    }
    // Followed until the reader goes away.
    while output::stdout_error().is_none() {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let next = client.audit_events(tenant, Some(last.unwrap_or(0)), 1_000).await?.events;
        if let Some(event) = next.last() {
            last = Some(event.seq);
        }
        print_events(global.output, &next)?;
    }
    Ok(())
}

fn print_events(format: Output, events: &[EventView]) -> Result<(), CliError> {
    for event in events {
        let line = match format {
            Output::Json => {
                serde_json::to_string(event).map_err(|e| CliError::failed(e.to_string()))?
            }
            // The resource last: it may be long (a secret's path), and
            // would push the columns after it out of line. (`-o yaml` is
            // and `-o csv` are refused before any command but theirs runs.)
            Output::Table | Output::Yaml | Output::Csv => format!(
                "{:>6}  {}  {:<24} {:<22} {:<8} {}",
                event.seq,
                event.time,
                format!("{}:{}", event.actor_kind, event.actor_id),
                event.action,
                event.outcome,
                event.resource
            ),
        };
        outln!("{line}");
    }
    Ok(())
}

fn verify(
    file: &Path,
    keys: &[String],
    keys_file: Option<&Path>,
    previous: Option<&Path>,
    checkpoint: Option<&str>,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    use bulkhead_audit::verify::{Earlier, verify_export_extending};

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
    let stdin = Path::new("-");
    if file == stdin && previous == Some(stdin) {
        return Err(CliError::usage("the export and --previous cannot both be standard input"));
    }
    let open = |path: &Path| -> Result<Box<dyn std::io::BufRead>, CliError> {
        if path == stdin {
            return Ok(Box::new(std::io::stdin().lock()));
        }
        let opened = File::open(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, opened)))
    };
    // The earlier export is verified first, with the same keys: only an
    // export that verifies says where the history stood.
    let earlier = match (previous, checkpoint) {
        (Some(path), _) => {
            let report = verify_export(open(path)?, &pinned).map_err(|broken| {
                CliError::failed(format!("broken: the earlier export {}: {broken}", path.display()))
            })?;
            Some(Earlier::of(&report))
        }
        (None, Some(text)) => {
            Some(Earlier::parse(text).map_err(|e| CliError::usage(format!("--checkpoint: {e}")))?)
        }
        (None, None) => None,
    };
    match verify_export_extending(open(file)?, &pinned, earlier.as_ref()) {
        Ok(report) => {
            if global.output == Output::Json {
                return output::json(&report_json(&report, !pinned.is_empty()));
            }
            let signers: Vec<String> = report
                .signers
                .iter()
                .map(|(id, pinned)| format!("{id}{}", if *pinned { " (pinned)" } else { "" }))
                .collect();
            outln!(
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
            if let Some(earlier) = &report.extends {
                outln!(
                    "extends the earlier export: the same head at seq {} ({}), so nothing up to \
                     it was changed, removed or inserted since",
                    earlier.seq,
                    bulkhead_audit::record::hex(&earlier.head)
                );
            }
            if report.start > 1 {
                eprintln!(
                    "note: a partial export: events before seq {} are not in this file (an export \
                     --since, or retention), as its export checkpoint signs{}",
                    report.start,
                    if report.extends.is_some() {
                        ""
                    } else {
                        "; pass --previous with an earlier export to prove it extends it"
                    }
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
        "extends_previous": report.extends.is_some(),
        "previous_seq": report.extends.as_ref().map(|e| e.seq),
        "previous_head": report.extends.as_ref().map(|e| bulkhead_audit::record::hex(&e.head)),
    })
}
