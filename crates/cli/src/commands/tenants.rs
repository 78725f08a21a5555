//! `bulkhead tenants ...`.

use std::{
    collections::HashSet,
    io::{BufRead, IsTerminal, Write},
    time::{Duration, Instant},
};

use bulkhead_control::api::types::{
    CreateTenantRequest, StepState, StepView, TenantView, UpdateTenantRequest,
};
use bulkhead_model::TenantState;
use zeroize::Zeroizing;

use crate::{
    args::{
        CreateArgs, DeleteArgs, DepartedArgs, GlobalArgs, TenantRestoreArgs, TenantsCommand,
        UpdateArgs,
    },
    client::{ApiClient, Found},
    exit::{CliError, Kind},
    output,
};

/// Pages fetched at a time by `tenants list`.
const PAGE: u32 = 500;

pub async fn run(command: &TenantsCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    match command {
        TenantsCommand::Create(args) => create(&client, args, global).await,
        TenantsCommand::List { state, limit } => {
            let tenants = list(&client, state.as_deref(), *limit).await?;
            output::tenants(global.output, &tenants)
        }
        TenantsCommand::Get { name } => output::tenant(global.output, &client.tenant(name).await?),
        TenantsCommand::Update(args) => update(&client, args, global).await,
        TenantsCommand::Suspend { name } => {
            output::tenant(global.output, &client.lifecycle(name, "suspend").await?)
        }
        TenantsCommand::Resume { name } => {
            output::tenant(global.output, &client.lifecycle(name, "resume").await?)
        }
        TenantsCommand::Delete(args) => delete(&client, args, global).await,
        TenantsCommand::Restore(args) => restore(&client, args, global).await,
        TenantsCommand::VerifyFinal(args) => verify_final(&client, args, global).await,
    }
}

async fn list(
    client: &ApiClient,
    state: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<TenantView>, CliError> {
    let mut tenants = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let wanted = limit.map_or(PAGE, |l| (l.saturating_sub(tenants.len() as u32)).min(PAGE));
        if wanted == 0 {
            break;
        }
        let page = client.list_tenants(after.as_deref(), state, wanted).await?;
        tenants.extend(page.tenants);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(tenants)
}

async fn create(
    client: &ApiClient,
    args: &CreateArgs,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let request = CreateTenantRequest {
        name: args.name.clone(),
        plan: args.plan.clone(),
        isolation: args.isolation,
        region: args.region.clone(),
        admin_email: args.admin_email.clone(),
        limits: args.limits.over(Default::default()),
    };
    let created = client.create_tenant(&request).await?;
    if !args.wait.wait {
        return output::tenant(global.output, &created);
    }
    let view = provisioned(client, &created, args.wait.timeout).await?;
    output::tenant(global.output, &view)?;
    outcome(&view)
}

/// Waits until a tenant just created is active or failed (its steps
/// undone), showing each step on standard error as it completes, and
/// returns it as it settled.
pub async fn provisioned(
    client: &ApiClient,
    created: &TenantView,
    timeout: u64,
) -> Result<TenantView, CliError> {
    let t = &created.tenant;
    eprintln!(
        "tenant {}: provisioning (plan {}, isolation {}, region {})",
        t.name, t.plan, t.isolation, t.region
    );
    let settled = wait_until(client, created, timeout, StepState::Applied, |view| match view {
        Found::Yes(view) => match view.tenant.state {
            TenantState::Active => true,
            TenantState::Failed => view.tenant.failure.as_ref().is_some_and(|f| f.undone),
            _ => false,
        },
        Found::Gone => true,
    })
    .await?;
    match settled {
        Found::Yes(view) => Ok(view),
        Found::Gone => Err(CliError::new(
            Kind::NotFound,
            format!("tenant {:?} disappeared while provisioning", t.name.as_str()),
        )),
    }
}

/// Says that a settled tenant is active, or fails with what failed.
pub fn outcome(view: &TenantView) -> Result<(), CliError> {
    match (&view.tenant.state, &view.tenant.failure) {
        (TenantState::Active, _) => {
            let ms = output::provisioning_ms(view).unwrap_or_default();
            eprintln!("tenant {} is active (provisioned in {ms} ms)", view.tenant.name);
            Ok(())
        }
        (_, Some(failure)) => Err(CliError::failed(format!(
            "tenant {} failed at step {}: {}; its completed steps were undone (delete it with \
             `bulkhead tenants delete {} --purge --yes`)",
            view.tenant.name, failure.step, failure.reason, view.tenant.name
        ))),
        (state, None) => Err(CliError::failed(format!("tenant {} is {state}", view.tenant.name))),
    }
}

async fn update(
    client: &ApiClient,
    args: &UpdateArgs,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let limits = if args.limits.any() || args.reset_limits {
        let current = if args.reset_limits {
            Default::default()
        } else {
            client.tenant(&args.name).await?.tenant.limits
        };
        Some(args.limits.over(current))
    } else {
        None
    };
    if args.plan.is_none() && limits.is_none() {
        return Err(CliError::usage(
            "nothing to change: give --plan, a limit flag (--rate-limit, --max-in-flight, ...) or \
             --reset-limits",
        ));
    }
    let request = UpdateTenantRequest { plan: args.plan.clone(), limits, ..Default::default() };
    output::tenant(global.output, &client.update_tenant(&args.name, &request).await?)
}

async fn delete(
    client: &ApiClient,
    args: &DeleteArgs,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    if !args.yes {
        confirm(&args.name, args.purge)?;
    }
    let view = client.delete_tenant(&args.name, args.purge, args.departed.as_deref()).await?;
    if !args.wait.wait {
        return output::tenant(global.output, &view);
    }
    eprintln!("tenant {}: offboarding{}", args.name, if args.purge { " (purge)" } else { "" });
    // Another tenant of the name (a new one, or one deleted earlier) is
    // not this one: this one is gone.
    let id = view.tenant.id;
    let settled =
        wait_until(client, &view, args.wait.timeout, StepState::Undone, |view| match view {
            Found::Yes(view) if view.tenant.id == id => {
                view.tenant.state == TenantState::Deleted && !view.tenant.purge_requested
            }
            _ => true,
        })
        .await?;
    match settled {
        Found::Yes(view) if view.tenant.id == id => {
            output::tenant(global.output, &view)?;
            match view.departure.as_ref().filter(|d| d.final_snapshot.is_some()) {
                Some(departure) => eprintln!(
                    "tenant {0} is deleted and its name is free; its final snapshot is kept \
                     until {1} (`bulkhead tenants restore {0} --from-final` brings it back)",
                    args.name,
                    output::time(&departure.expires_at)
                ),
                None => eprintln!("tenant {} is deleted and its name is free", args.name),
            }
        }
        _ => {
            let purged = serde_json::json!({ "name": args.name, "purged": true });
            output::done(global.output, &purged, &format!("tenant {} is purged", args.name))?;
        }
    }
    Ok(())
}

/// Brings a deleted tenant back from its final snapshot.
async fn restore(
    client: &ApiClient,
    args: &TenantRestoreArgs,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let departed = &args.departed;
    let identity = departed_identity(departed)?;
    let restored = client
        .restore_departed(
            &departed.name,
            departed.id.as_deref(),
            args.to.as_deref(),
            identity.as_ref().map(|i| i.as_str()),
        )
        .await?;
    let text = format!(
        "tenant {} is back as tenant {}, from its final snapshot {}",
        departed.name, restored.tenant, restored.backup
    );
    output::done(global.output, &restored, &super::backups::with_warnings(text, &restored))
}

/// Checks a deleted tenant's final snapshot, restoring nothing.
async fn verify_final(
    client: &ApiClient,
    args: &DepartedArgs,
    global: &GlobalArgs,
) -> Result<(), CliError> {
    let identity = departed_identity(args)?;
    let verified = client
        .verify_departed(&args.name, args.id.as_deref(), identity.as_ref().map(|i| i.as_str()))
        .await?;
    let text = format!(
        "final snapshot {} of tenant {} verified: {} parts decrypted, each with the size and \
         SHA-256 recorded when it was taken",
        verified.id,
        args.name,
        verified.parts.len()
    );
    output::done(global.output, &verified, &text)
}

/// The identity file given for a departed tenant's snapshot, read.
fn departed_identity(args: &DepartedArgs) -> Result<Option<Zeroizing<String>>, CliError> {
    args.identity_file.as_deref().map(super::backups::read_identity).transpose()
}

/// Asks for the tenant's name on a terminal; refuses without one.
pub fn confirm(name: &str, purge: bool) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::usage(format!(
            "refusing to delete tenant {name:?} without confirmation: pass --yes"
        )));
    }
    let what = if purge {
        "and everything of it, its backups included"
    } else {
        "(one final encrypted snapshot is kept for a while)"
    };
    eprint!(
        "Delete tenant {name} {what}? Its databases, files and keys will be destroyed. Type its \
         name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer).map_err(|e| CliError::failed(e.to_string()))?;
    if answer.trim() == name {
        Ok(())
    } else {
        Err(CliError::usage("confirmation did not match; nothing was deleted"))
    }
}

/// Steps in the order they reach `progress`: offboarding undoes them last
/// to first.
fn in_order(steps: &[StepView], progress: StepState) -> Vec<&StepView> {
    match progress {
        StepState::Undone => steps.iter().rev().collect(),
        _ => steps.iter().collect(),
    }
}

/// Polls the tenant, printing each step as it reaches `progress` (applied
/// while provisioning, undone while offboarding), until `settled` says so
/// or the timeout passes. `known` is the tenant as last seen, with its
/// steps: polls can miss a fast step, and a purged tenant is gone before
/// its last steps can be read, so once settled the steps that had to pass
/// for it to settle and were not seen are printed too, in their order.
async fn wait_until(
    client: &ApiClient,
    known: &TenantView,
    timeout: u64,
    progress: StepState,
    settled: impl Fn(&Found<TenantView>) -> bool,
) -> Result<Found<TenantView>, CliError> {
    let name = known.tenant.name.as_str();
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut seen: HashSet<String> = HashSet::new();
    let mut steps: Vec<StepView> = known.steps.clone().unwrap_or_default();
    let mut pause = Duration::from_millis(20);
    loop {
        let found = client.find_tenant(name).await?;
        if let Found::Yes(view) = &found {
            if let Some(now) = &view.steps {
                steps.clone_from(now);
            }
            for step in in_order(&steps, progress) {
                if step.state == progress && seen.insert(step.name.clone()) {
                    eprintln!("  {} {}", output::step_state(step.state), step.name);
                }
            }
        }
        if settled(&found) {
            let passed = match &found {
                Found::Yes(view) => {
                    !(progress == StepState::Applied && view.tenant.failure.is_some())
                }
                Found::Gone => true,
            };
            if passed {
                for step in in_order(&steps, progress) {
                    if step.state != StepState::Pending && seen.insert(step.name.clone()) {
                        eprintln!("  {} {}", output::step_state(progress), step.name);
                    }
                }
            }
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(CliError::failed(format!(
                "gave up waiting after {timeout}s; the tenant is still settling: see `bulkhead tenants get {name}`"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
