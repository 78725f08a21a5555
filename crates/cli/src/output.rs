//! What client commands print: aligned tables for people, the API's JSON
//! for scripts. Results go to stdout, progress to stderr.

use bulkhead_control::api::backups::{BackupKeyView, BackupList, BackupView};
use bulkhead_control::api::types::{
    ApiKeyView, CredentialView, KeyStatusView, LeaseView, LockoutView, RealmKeyView,
    SecretSummaryView, SecretWritten, ServerStatus, StepState, TenantView,
};
use bulkhead_control::usage::UsageExport;
use bulkhead_model::{ApiAuth, ApiSpec, Plan, TenantLimits};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{args::Output, exit::CliError};

/// Columns padded to their widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn time(at: &OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// The first error writing to standard output, if one happened.
static STDOUT_ERROR: std::sync::OnceLock<std::io::ErrorKind> = std::sync::OnceLock::new();

/// What `out!`/`outln!` print through. Once standard output fails (a
/// reader that closed the pipe, a full disk) nothing more is written, and
/// the command goes on to its end: `bulkhead apply -f dir | head -1`
/// still applies every object. [`stdout_error`] tells how it ended.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_ERROR.get().is_some() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        let _ = STDOUT_ERROR.set(error.kind());
    }
}

/// The first error writing to standard output, if one happened: a closed
/// pipe (`BrokenPipe`) is a reader that stopped early, anything else a
/// failure.
pub fn stdout_error() -> Option<std::io::ErrorKind> {
    STDOUT_ERROR.get().copied()
}

/// Fails when `what`, shown only once, could not be printed: whoever runs
/// the command must know it is lost.
pub fn printed(what: &str) -> Result<(), CliError> {
    match stdout_error() {
        None => Ok(()),
        Some(kind) => Err(CliError::failed(format!(
            "{what} could not be printed ({}); it is shown only once, so revoke it and make \
             another",
            std::io::Error::from(kind)
        ))),
    }
}

pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot print JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}

/// The outcome of a command: `value` as JSON for scripts (`-o json`), else
/// `text` for people, on standard error.
pub fn done<T: Serialize>(format: Output, value: &T, text: &str) -> Result<(), CliError> {
    if format == Output::Json {
        return json(value);
    }
    eprintln!("{text}");
    Ok(())
}

pub fn status(format: Output, status: &ServerStatus) -> Result<(), CliError> {
    if format == Output::Json {
        return json(status);
    }
    let tenants: Vec<String> = status.tenants.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let rows = [
        ("api", status.api_url.clone()),
        (
            "gateway",
            status.gateway_url.clone().unwrap_or_else(|| "not served by this version".into()),
        ),
        ("store", status.store.clone()),
        ("data dir", status.data_dir.clone()),
        ("version", status.version.clone()),
        ("tenants", if tenants.is_empty() { "none".into() } else { tenants.join(", ") }),
    ];
    for (name, value) in rows {
        outln!("{name:<9} {value}");
    }
    Ok(())
}

pub fn tenants(format: Output, tenants: &[TenantView]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&tenants);
    }
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|v| {
            let t = &v.tenant;
            vec![
                t.name.to_string(),
                t.state.to_string(),
                t.plan.to_string(),
                t.isolation.to_string(),
                t.region.to_string(),
                v.domain.clone(),
                time(&t.created_at),
            ]
        })
        .collect();
    outln!(
        "{}",
        table(&["NAME", "STATE", "PLAN", "ISOLATION", "REGION", "DOMAIN", "CREATED"], &rows)
    );
    Ok(())
}

/// Milliseconds from creation to active, when the tenant got there.
pub fn provisioning_ms(view: &TenantView) -> Option<i128> {
    view.tenant.provisioned_at.map(|at| (at - view.tenant.created_at).whole_milliseconds())
}

pub fn tenant(format: Output, view: &TenantView) -> Result<(), CliError> {
    if format == Output::Json {
        return json(view);
    }
    let t = &view.tenant;
    let mut fields = vec![
        ("Name", t.name.to_string()),
        ("Id", t.id.to_string()),
        ("State", t.state.to_string()),
        ("Plan", t.plan.to_string()),
        ("Isolation", t.isolation.to_string()),
        ("Region", t.region.to_string()),
        ("Domain", view.domain.clone()),
        ("Limits", limits(&t.limits)),
        ("Created", time(&t.created_at)),
    ];
    if let Some(email) = &t.admin_email {
        fields.push(("Admin email", email.to_string()));
    }
    if let Some(ms) = provisioning_ms(view) {
        fields.push((
            "Provisioned",
            format!("{} (in {ms} ms)", t.provisioned_at.map(|p| time(&p)).unwrap_or_default()),
        ));
    }
    if let Some(failure) = &t.failure {
        let undone = if failure.undone { "steps undone" } else { "undoing steps" };
        fields.push(("Failure", format!("{}: {} ({undone})", failure.step, failure.reason)));
    }
    if t.purge_requested {
        fields.push(("Purge", "requested".to_owned()));
    }
    if let Some(departure) = &view.departure {
        fields.push(("Deleted", time(&departure.departed_at)));
        fields.push((
            "Final snapshot",
            match &departure.final_snapshot {
                Some(id) => format!(
                    "{id}{}, kept until {} (`bulkhead tenants restore {} --from-final`)",
                    if departure.own_key { " (encrypted to the tenant's own key)" } else { "" },
                    time(&departure.expires_at),
                    t.name
                ),
                None => "none (it never became active, or it keeps its own vault key and \
                         registered no backup recipient of its own)"
                    .to_owned(),
            },
        ));
    }
    if let Some(error) = &t.last_error {
        fields.push(("Last error", error.clone()));
    }
    self::fields(&fields);
    if let Some(steps) = &view.steps {
        let rows: Vec<Vec<String>> = steps
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    step_state(s.state).to_owned(),
                    s.output.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                ]
            })
            .collect();
        outln!("\n{}", table(&["STEP", "STATE", "OUTPUT"], &rows));
    }
    Ok(())
}

/// A tenant's own limits, each in place of its plan's.
fn limits(limits: &TenantLimits) -> String {
    let mut own = Vec::new();
    if let Some(rate) = limits.rate_limit {
        own.push(format!("{}/min +{}", rate.requests_per_minute, rate.burst));
    }
    if let Some(n) = limits.max_in_flight {
        own.push(format!("{n} in flight"));
    }
    if let Some(n) = limits.max_upstream_connections {
        own.push(format!("{n} upstream connections"));
    }
    if let Some(fallback) = limits.limiter_fallback {
        own.push(format!("fallback {}", fallback.as_str()));
    }
    if let Some(caps) = &limits.cost_caps {
        own.push(format!("cost caps {} / {}", caps.soft_usd, caps.hard_usd));
    }
    if own.is_empty() {
        "the plan's".to_owned()
    } else {
        format!("{}; the plan's otherwise", own.join(", "))
    }
}

pub fn step_state(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "pending",
        StepState::Applied => "applied",
        StepState::Undone => "undone",
    }
}

pub fn plans(format: Output, plans: &[Plan]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&plans);
    }
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            vec![
                p.name.to_string(),
                p.default_isolation.to_string(),
                format!(
                    "{}/min +{}, {} in flight",
                    p.gateway.rate_limit.requests_per_minute,
                    p.gateway.rate_limit.burst,
                    p.gateway.max_in_flight
                ),
                format!("${} / ${}", p.cost_caps.soft_usd, p.cost_caps.hard_usd),
                format!("{}d", p.audit_retention_days),
                format!(
                    "every {}h, {} kept {}d",
                    p.backups.every_hours, p.backups.keep, p.backups.retention_days
                ),
                format!(
                    "{} MiB, {} procs, {} mCPU",
                    p.runtime.memory_mib, p.runtime.max_processes, p.runtime.cpu_millicores
                ),
                format!(
                    "{} versions, creds ≤ {}",
                    p.vault.secret_versions,
                    bulkhead_vault::ttl::format_duration(std::time::Duration::from_secs(
                        p.vault.max_credential_ttl_secs
                    ))
                ),
                p.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    outln!(
        "{}",
        table(
            &[
                "NAME",
                "ISOLATION",
                "RATE LIMIT",
                "COST CAPS (SOFT/HARD)",
                "AUDIT",
                "BACKUPS",
                "RUNTIME",
                "VAULT",
                "TOOLS"
            ],
            &rows
        )
    );
    Ok(())
}

/// `key: value` lines, keys padded to the widest.
fn fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in fields {
        outln!("{:<width$} {value}", format!("{key}:"));
    }
}

pub fn secret_written(format: Output, written: &SecretWritten) -> Result<(), CliError> {
    if format == Output::Json {
        return json(written);
    }
    eprintln!(
        "stored {} version {} ({} bytes, data key v{})",
        written.path, written.version, written.size, written.key_version
    );
    Ok(())
}

pub fn secrets(format: Output, secrets: &[SecretSummaryView]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&secrets);
    }
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.path.clone(),
                s.latest_version.to_string(),
                s.versions.to_string(),
                s.size.to_string(),
                time(&s.updated_at),
            ]
        })
        .collect();
    outln!("{}", table(&["PATH", "VERSION", "KEPT", "BYTES", "UPDATED"], &rows));
    Ok(())
}

pub fn keys(format: Output, status: &KeyStatusView) -> Result<(), CliError> {
    if format == Output::Json {
        return json(status);
    }
    let wrapping = match (status.tenant_key, status.unsealed) {
        (false, _) => "the master key",
        (true, true) => "the tenant's own key (loaded)",
        (true, false) => "the tenant's own key (NOT loaded: secrets are sealed)",
    };
    fields(&[("Tenant", status.tenant.clone()), ("Wrapped by", wrapping.to_owned())]);
    let rows: Vec<Vec<String>> = status
        .data_keys
        .iter()
        .map(|k| vec![k.version.to_string(), k.wrapped_by.clone(), time(&k.created_at)])
        .collect();
    outln!("\n{}", table(&["DATA KEY", "WRAPPED BY", "CREATED"], &rows));
    Ok(())
}

pub fn credential(format: Output, credential: &CredentialView) -> Result<(), CliError> {
    if format == Output::Json {
        json(credential)?;
        return printed("the credential's URL");
    }
    let lease = &credential.lease;
    fields(&[
        ("Lease", lease.id.to_string()),
        ("Role", lease.role.clone()),
        ("Access", lease.access.clone()),
        ("Expires", time(&lease.expires_at)),
        ("URL", credential.url.clone()),
    ]);
    printed("the credential's URL")
}

pub fn leases(format: Output, leases: &[LeaseView]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&leases);
    }
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                l.role.clone(),
                l.access.clone(),
                time(&l.issued_at),
                time(&l.expires_at),
                l.revoked_at.map(|at| time(&at)).unwrap_or_default(),
            ]
        })
        .collect();
    outln!("{}", table(&["LEASE", "ROLE", "ACCESS", "ISSUED", "EXPIRES", "REVOKED"], &rows));
    Ok(())
}

pub fn lockouts(format: Output, lockouts: &[LockoutView]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&lockouts);
    }
    let rows: Vec<Vec<String>> = lockouts
        .iter()
        .map(|l| vec![l.principal.clone(), l.reason.clone(), time(&l.locked_at)])
        .collect();
    outln!("{}", table(&["PRINCIPAL", "REASON", "LOCKED"], &rows));
    Ok(())
}

pub fn realm_keys(format: Output, keys: &[RealmKeyView]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&keys);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.kid.clone(),
                k.algorithm.clone(),
                if k.retired_at.is_some() { "retiring" } else { "signing" }.to_owned(),
                time(&k.created_at),
                k.remove_after.map(|at| time(&at)).unwrap_or_default(),
            ]
        })
        .collect();
    outln!("{}", table(&["KID", "ALG", "STATE", "CREATED", "LEAVES JWKS"], &rows));
    Ok(())
}

pub fn apis(format: Output, apis: &[ApiSpec]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&apis);
    }
    let rows: Vec<Vec<String>> = apis
        .iter()
        .map(|a| {
            let upstreams: Vec<String> = a.upstreams.iter().map(ToString::to_string).collect();
            let roles: Vec<&str> = a.roles.iter().map(|r| r.as_str()).collect();
            vec![
                a.name.to_string(),
                a.prefix.as_str().to_owned(),
                upstreams.join(","),
                match a.auth {
                    ApiAuth::Required if roles.is_empty() => "required".to_owned(),
                    ApiAuth::Required => format!("required: {}", roles.join(",")),
                    ApiAuth::Public => "PUBLIC".to_owned(),
                },
                a.rate_limit.map_or_else(
                    || "tenant's".to_owned(),
                    |r| format!("{}/min +{}", r.requests_per_minute, r.burst),
                ),
            ]
        })
        .collect();
    outln!("{}", table(&["NAME", "PREFIX", "UPSTREAMS", "AUTH", "RATE LIMIT"], &rows));
    Ok(())
}

/// `bulkhead tools list`.
pub fn tools(format: Output, tools: &[bulkhead_model::ToolSpec]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&tools);
    }
    let rows: Vec<Vec<String>> = tools
        .iter()
        .map(|t| {
            let (kind, url) = match &t.upstream {
                bulkhead_model::ToolUpstream::Mcp(url) => ("mcp", url),
                bulkhead_model::ToolUpstream::Http(url) => ("http", url),
            };
            let roles: Vec<&str> = t.roles.iter().map(|r| r.as_str()).collect();
            vec![
                t.name.clone(),
                format!("{kind} {url}"),
                if t.tools.is_empty() { "all".to_owned() } else { t.tools.join(",") },
                if roles.is_empty() { "any".to_owned() } else { roles.join(",") },
                t.credential.as_ref().map_or_else(|| "none".to_owned(), |c| c.secret.clone()),
            ]
        })
        .collect();
    outln!("{}", table(&["NAME", "UPSTREAM", "TOOLS", "ROLES", "CREDENTIAL"], &rows));
    Ok(())
}

/// `bulkhead verify`: what answers without a credential.
pub fn public_apis(
    format: Output,
    apis: &[bulkhead_control::api::types::PublicApi],
) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&apis);
    }
    if apis.is_empty() {
        outln!("public APIs: none (every API asks for a credential)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = apis
        .iter()
        .map(|p| {
            let upstreams: Vec<String> = p.api.upstreams.iter().map(ToString::to_string).collect();
            vec![
                p.tenant.clone(),
                p.api.name.to_string(),
                p.api.prefix.as_str().to_owned(),
                upstreams.join(","),
            ]
        })
        .collect();
    outln!(
        "public APIs: {} answer without a credential (auth: public)\n{}",
        apis.len(),
        table(&["TENANT", "API", "PREFIX", "UPSTREAMS"], &rows)
    );
    Ok(())
}

pub fn isolation(
    format: Output,
    report: &bulkhead_control::api::types::IsolationReportView,
) -> Result<(), CliError> {
    if format == Output::Json {
        return json(report);
    }
    for line in &report.checked {
        outln!("checked: {line}");
    }
    if report.findings.is_empty() {
        outln!("isolation: no findings");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .findings
        .iter()
        .map(|f| {
            vec![
                f.severity.to_uppercase(),
                f.check.clone(),
                f.subject.clone(),
                f.problem.clone(),
                f.fix.clone(),
            ]
        })
        .collect();
    outln!(
        "isolation: {} findings\n{}",
        report.findings.len(),
        table(&["SEVERITY", "CHECK", "SUBJECT", "PROBLEM", "FIX"], &rows)
    );
    Ok(())
}

/// A migration job's report: a line on the job, then every database.
pub fn migration(
    format: Output,
    job: &bulkhead_control::api::types::MigrationJobView,
    summary: &str,
) -> Result<(), CliError> {
    if format == Output::Json {
        return json(job);
    }
    let version = |v: Option<i64>| v.map_or_else(|| "-".into(), |v| format!("{v:04}"));
    let rows: Vec<Vec<String>> = job
        .targets
        .iter()
        .map(|t| {
            vec![
                t.database.clone(),
                t.region.clone(),
                if t.canary { "yes".into() } else { String::new() },
                t.state.clone(),
                version(t.from_version),
                version(t.to_version),
                t.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    outln!(
        "migration job {} {}{}: {summary} (files up to {:04})\n{}",
        job.id,
        job.state,
        if job.dry_run { " (dry run)" } else { "" },
        job.latest_version,
        table(&["DATABASE", "REGION", "CANARY", "STATE", "FROM", "TO", "DETAIL"], &rows)
    );
    Ok(())
}

pub fn usage(format: Output, rows: &[bulkhead_meter::UsageRow]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&rows);
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let refused: Vec<String> =
                r.refused.iter().map(|(phase, n)| format!("{phase}:{n}")).collect();
            let mean = r.upstream_latency_sum_us.checked_div(r.upstream_responses);
            vec![
                time(&r.minute),
                r.api.clone().unwrap_or_else(|| "-".into()),
                r.requests.to_string(),
                if refused.is_empty() { "0".into() } else { refused.join(",") },
                format!("{}/{}", r.bytes_in, r.bytes_out),
                mean.map_or_else(|| "-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0)),
                format!("{:.1} ms", r.upstream_latency_max_us as f64 / 1000.0),
            ]
        })
        .collect();
    outln!(
        "{}",
        table(
            &["MINUTE", "API", "REQUESTS", "REFUSED", "BYTES IN/OUT", "MEAN LATENCY", "MAX"],
            &rows
        )
    );
    Ok(())
}

/// Micro-units as a decimal amount: `1234567` is `1.234567`.
fn amount(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

pub fn usage_export(format: Output, export: &UsageExport) -> Result<(), CliError> {
    if format == Output::Json {
        return json(export);
    }
    const HEADER: [&str; 11] = [
        "day",
        "tenant",
        "tenant_id",
        "api",
        "kind",
        "item",
        "requests",
        "tokens_in",
        "tokens_out",
        "cost_micros",
        "cost",
    ];
    let rows: Vec<Vec<String>> = export
        .lines
        .iter()
        .map(|l| {
            vec![
                l.day.clone(),
                l.tenant.clone(),
                l.tenant_id.to_string(),
                l.api.clone(),
                l.kind.clone(),
                l.item.clone(),
                l.requests.to_string(),
                l.tokens_in.to_string(),
                l.tokens_out.to_string(),
                l.cost_micros.to_string(),
                amount(l.cost_micros),
            ]
        })
        .collect();
    if format == Output::Csv {
        let mut out = csv_line(&HEADER);
        for row in &rows {
            out.push_str(&csv_line(row));
        }
        out!("{out}");
        return Ok(());
    }
    let header: Vec<String> = HEADER.iter().map(|h| h.to_uppercase()).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    outln!("{}", table(&header, &rows));
    let t = &export.totals;
    outln!(
        "\n{}: {} requests, {} model calls, {} tool calls, {} tokens in, {} out, cost {}",
        export.period,
        t.requests,
        t.model_calls,
        t.tool_calls,
        t.tokens_in,
        t.tokens_out,
        amount(t.cost_micros)
    );
    Ok(())
}

/// One CSV record (RFC 4180): a field with a comma, a quote or a line
/// break is quoted, its quotes doubled; a field a spreadsheet would run as
/// a formula is prefixed with `'`.
fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = String::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let field = field.as_ref();
        let field = match field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            true => format!("'{field}"),
            false => field.to_owned(),
        };
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&field);
        }
    }
    line.push_str("\r\n");
    line
}

pub fn api_keys(format: Output, keys: &[ApiKeyView]) -> Result<(), CliError> {
    if format == Output::Json {
        return json(&keys);
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.to_string(),
                k.name.clone(),
                format!("{}…", k.prefix),
                k.roles.join(","),
                k.last_used_at.map(|at| time(&at)).unwrap_or_else(|| "never".into()),
                k.revoked_at.map(|at| time(&at)).unwrap_or_default(),
            ]
        })
        .collect();
    outln!("{}", table(&["ID", "NAME", "PREFIX", "ROLES", "LAST USED", "REVOKED"], &rows));
    Ok(())
}

pub fn backups(format: Output, list: &BackupList) -> Result<(), CliError> {
    if format == Output::Json {
        return json(list);
    }
    let schedule = &list.schedule;
    let every = match &schedule.policy {
        Some(p) if p.every_hours > 0 => {
            format!("every {}h, {} kept for {} days", p.every_hours, p.keep, p.retention_days)
        }
        _ => "none scheduled".to_owned(),
    };
    let last = schedule.last_success.as_deref().unwrap_or("never");
    eprintln!("schedule: {every}; last success: {last}");
    if let Some(error) = &list.store_error {
        eprintln!("the backups cannot be listed: {error}");
    }
    if schedule.failures > 0 {
        eprintln!(
            "failing: {} attempt(s) since, the last: {}; next attempt {}",
            schedule.failures,
            schedule.last_error.as_deref().unwrap_or("?"),
            schedule.retry_at.as_deref().unwrap_or("at the next round")
        );
    }
    let backups = &list.backups;
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.kind.clone(),
                b.created_at.clone(),
                b.size.to_string(),
                b.parts.len().to_string(),
            ]
        })
        .collect();
    outln!("{}", table(&["ID", "KIND", "CREATED", "BYTES", "PARTS"], &rows));
    Ok(())
}

pub fn backup(format: Output, backup: &BackupView) -> Result<(), CliError> {
    if format == Output::Json {
        return json(backup);
    }
    outln!("backup     {}", backup.id);
    outln!("tenant     {} ({} plan)", backup.tenant, backup.plan);
    outln!("kind       {}", backup.kind);
    outln!("created    {}", backup.created_at);
    outln!("size       {} bytes, format {}", backup.size, backup.format);
    outln!("recipient  {}", backup.recipient);
    let rows: Vec<Vec<String>> = backup
        .parts
        .iter()
        .map(|p| vec![p.name.clone(), p.size.to_string(), p.sha256.clone()])
        .collect();
    outln!("{}", table(&["PART", "BYTES", "SHA-256"], &rows));
    Ok(())
}

pub fn backup_key(format: Output, key: &BackupKeyView) -> Result<(), CliError> {
    if format == Output::Json {
        return json(key);
    }
    let whose = if key.own { "the tenant's own key" } else { "the key the vault holds" };
    outln!("{} ({whose})", key.recipient);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows =
            vec![vec!["acme".to_owned(), "active".to_owned()], vec!["b".to_owned(), "".to_owned()]];
        assert_eq!(table(&["NAME", "STATE"], &rows), "NAME  STATE\nacme  active\nb");
    }

    #[test]
    fn csv_quotes_what_needs_it_and_defuses_formulas() {
        assert_eq!(
            csv_line(&["a", "b,c", "say \"hi\"", "=SUM(A1)"]),
            "a,\"b,c\",\"say \"\"hi\"\"\",'=SUM(A1)\r\n"
        );
        assert_eq!(amount(1_234_567), "1.234567");
        assert_eq!(amount(5), "0.000005");
    }
}
