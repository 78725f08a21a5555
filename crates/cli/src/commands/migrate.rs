//! `bulkhead migrate`: start a migration job from a directory of SQL
//! files, and follow it (`--wait`, `migrate status`).

use std::{path::Path, process::ExitCode, time::Duration};

use bulkhead_control::api::types::{MigrationFile, MigrationJobView, StartMigrationRequest};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    args::{GlobalArgs, MigrateArgs, MigrateCommand, Output},
    client::ApiClient,
    exit::{CliError, Kind},
    output,
};

/// How often a followed job is asked for again.
const POLL: Duration = Duration::from_millis(500);

pub async fn run(args: &MigrateArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let client = ApiClient::discover(global)?;
    if let Some(MigrateCommand::Status { id, wait }) = &args.command {
        let job = match id {
            Some(id) => client.migration(id).await?,
            None => {
                let latest = client.migrations(1).await?.jobs.into_iter().next();
                let latest = latest.ok_or_else(|| {
                    CliError::new(
                        Kind::NotFound,
                        "no migration job yet: start one with `bulkhead migrate --dir DIR`",
                    )
                })?;
                client.migration(&latest.id.to_string()).await?
            }
        };
        let job = if *wait { follow(&client, job, global.output).await? } else { job };
        return finish(&job, global.output);
    }
    let dir = args.dir.as_deref().ok_or_else(|| {
        CliError::usage("give the migration files' directory: bulkhead migrate --dir DIR")
    })?;
    let request = StartMigrationRequest {
        files: read_files(dir)?,
        tenants: args.tenants.clone(),
        canary: args.canary.clone(),
        concurrency: args.concurrency,
        halt_after: args.halt_after,
        dry_run: args.dry_run,
    };
    let job = client.start_migration(&request).await?;
    if !args.wait {
        if global.output == Output::Json {
            output::json(&job)?;
        } else {
            outln!(
                "migration job {} started: {} databases, files up to version {:04}\n\
                 follow it with: bulkhead migrate status {} --wait",
                job.id,
                job.targets.len(),
                job.latest_version,
                job.id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let job = follow(&client, job, global.output).await?;
    finish(&job, global.output)
}

/// Every `NNNN_*.sql` of `dir`: the server checks the names.
fn read_files(dir: &Path) -> Result<Vec<MigrationFile>, CliError> {
    let unreadable = |e: std::io::Error| {
        CliError::usage(format!("cannot read the migration files in {}: {e}", dir.display()))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if !name.ends_with(".sql") || !path.is_file() {
            continue;
        }
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        files.push(MigrationFile { name: name.to_owned(), sql });
    }
    if files.is_empty() {
        return Err(CliError::usage(format!(
            "no .sql files in {}: name them NNNN_name.sql, e.g. 0001_create_notes.sql",
            dir.display()
        )));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Asks for the job until it ends, with a progress bar on a terminal.
async fn follow(
    client: &ApiClient,
    mut job: MigrationJobView,
    format: Output,
) -> Result<MigrationJobView, CliError> {
    let bar = if format == Output::Json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(job.targets.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} databases  {msg}  [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let finished = job.targets.iter().filter(|t| t.finished_at.is_some()).count();
        bar.set_message(summary(&job));
        bar.set_position(finished as u64);
        if job.state != "running" {
            bar.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(POLL).await;
        job = client.migration(&job.id.to_string()).await?;
    }
}

/// `3 migrated, 1 failed`: the states with any database in them.
fn summary(job: &MigrationJobView) -> String {
    job.counts.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
}

/// Prints the job's report; exits 1 unless it succeeded (or still runs).
fn finish(job: &MigrationJobView, format: Output) -> Result<ExitCode, CliError> {
    output::migration(format, job, &summary(job))?;
    Ok(match job.state.as_str() {
        "succeeded" | "running" => ExitCode::SUCCESS,
        _ => ExitCode::from(Kind::Failed as u8),
    })
}
