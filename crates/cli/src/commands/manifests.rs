//! `bulkhead apply`, `diff`, `delete -f` and `get`: manifests.
//!
//! Reading and comparing them is `bulkhead_model::manifest`'s job; this
//! module reads the files, asks the server what exists, and makes the calls.
//! Every document of every file is read and checked against the server
//! before anything changes, so a mistake anywhere changes nothing.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use bulkhead_control::api::types::{
    CreateTenantRequest, GuardrailApplied, GuardrailList, ToolApplied, ToolList,
    UpdateTenantRequest,
};
use bulkhead_model::{
    IsolationError, Plan, RegionSummary, Tenant, TenantName, UnknownPlan, UnknownRegion,
    manifest::{
        self, Action, ApiManifest, AppManifest, Change, Declared, GuardrailManifest, Object,
        TenantManifest, ToolManifest,
    },
};
use serde::Serialize;

use super::tenants;
use crate::{
    args::{ApplyArgs, DeleteManifestArgs, GetCommand, GlobalArgs, ManifestFiles, Output},
    client::{ApiClient, Found},
    exit::{CliError, Kind},
    output,
};

/// What became of one object, as `apply -o json` and `delete -o json` list
/// it.
#[derive(Debug, Serialize)]
struct Outcome {
    /// `tenant/acme`, `api/acme/orders`.
    object: String,
    kind: &'static str,
    tenant: String,
    name: String,
    /// `created`, `changed`, `unchanged`; `deleted`, `absent`.
    result: String,
}

impl Outcome {
    fn of(object: &Object, result: &str) -> Self {
        let name = match object {
            Object::Tenant(t) => t.name.to_string(),
            Object::Api(a) => a.name().to_string(),
            Object::App(a) => a.name().to_string(),
            Object::Guardrail(g) => g.spec.name.clone(),
            Object::Tool(t) => t.spec.name.clone(),
        };
        Self {
            object: object.id(),
            kind: object.kind(),
            tenant: object.tenant().to_string(),
            name,
            result: result.to_owned(),
        }
    }
}

/// Prints outcomes as they come for people, all at once for scripts.
struct Report {
    format: Output,
    outcomes: Vec<Outcome>,
}

impl Report {
    fn new(format: Output) -> Self {
        Self { format, outcomes: Vec::new() }
    }

    fn add(&mut self, object: &Object, result: &str) {
        if self.format != Output::Json {
            outln!("{} {result}", object.id());
        }
        self.outcomes.push(Outcome::of(object, result));
    }

    fn finish(self) -> Result<(), CliError> {
        if self.format == Output::Json {
            return output::json(&self.outcomes);
        }
        Ok(())
    }
}

/// `bulkhead apply -f ...`.
pub async fn apply(args: &ApplyArgs, global: &GlobalArgs) -> Result<(), CliError> {
    let declared = load(&args.files, Some("nothing was applied"))?;
    let client = ApiClient::discover(global)?;
    let steps = plan(&client, &declared)
        .await
        .map_err(|e| CliError { message: format!("{}\nnothing was applied", e.message), ..e })?;
    let mut report = Report::new(global.output);
    for step in &steps {
        let object = &step.declared.object;
        let result = match (object, &step.action) {
            (_, Action::Unchanged) => "unchanged".to_owned(),
            (Object::Tenant(tenant), Action::Create(_)) => {
                create(&client, tenant, args.timeout).await.map_err(|e| about(step.declared, e))?;
                "created".to_owned()
            }
            (Object::Tenant(tenant), Action::Change(_)) => {
                // Isolation and region too, as the manifest has them: the
                // server refuses them if they changed since they were read.
                let spec = &tenant.spec;
                let request = UpdateTenantRequest {
                    plan: Some(spec.plan.to_string()),
                    limits: Some(spec.limits.clone()),
                    isolation: spec.isolation,
                    region: spec.region.as_ref().map(ToString::to_string),
                };
                client
                    .update_tenant(tenant.name.as_str(), &request)
                    .await
                    .map_err(|e| about(step.declared, e))?;
                "changed".to_owned()
            }
            (Object::Api(api), _) => {
                let applied = client
                    .put_api(api.tenant.as_str(), &api.spec)
                    .await
                    .map_err(|e| about(step.declared, e))?;
                applied.result
            }
            (Object::App(app), action) => {
                client
                    .deploy_app(app.tenant.as_str(), &app.spec)
                    .await
                    .map_err(|e| about(step.declared, e))?;
                action.done().to_owned()
            }
            (Object::Guardrail(guardrail), _) => {
                let (tenant, spec) = (guardrail.tenant.as_str(), &guardrail.spec);
                let applied: GuardrailApplied = client
                    .put_resource(tenant, "guardrails", &spec.name, spec)
                    .await
                    .map_err(|e| about(step.declared, e))?;
                applied.result
            }
            (Object::Tool(tool), _) => {
                let (tenant, spec) = (tool.tenant.as_str(), &tool.spec);
                let applied: ToolApplied = client
                    .put_resource(tenant, "tools", &spec.name, spec)
                    .await
                    .map_err(|e| about(step.declared, e))?;
                applied.result
            }
        };
        report.add(object, &result);
    }
    report.finish()
}

/// Creates the tenant and waits until it is active; a tenant that fails
/// is an error, with what failed.
async fn create(client: &ApiClient, tenant: &TenantManifest, timeout: u64) -> Result<(), CliError> {
    let spec = &tenant.spec;
    let request = CreateTenantRequest {
        name: tenant.name.to_string(),
        plan: spec.plan.to_string(),
        isolation: spec.isolation,
        region: spec.region.as_ref().map(ToString::to_string),
        admin_email: spec.admin_email.as_ref().map(ToString::to_string),
        limits: spec.limits.clone(),
    };
    let created = client.create_tenant(&request).await?;
    let settled = tenants::provisioned(client, &created, timeout).await?;
    tenants::outcome(&settled)
}

/// `bulkhead diff -f ...`: exits 1 when applying would change something.
pub async fn diff(files: &ManifestFiles, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    compare(files, global).await.map_err(|error| match error.kind {
        // 1 says "something would change": a failure exits with a code of
        // its own.
        Kind::Failed => CliError { kind: Kind::Server, ..error },
        _ => error,
    })
}

/// One object of a diff, as `diff -o json` lists it.
#[derive(Debug, Serialize)]
struct Difference<'a> {
    object: String,
    /// Where it is declared: `acme.yaml:12`.
    declared: String,
    /// `create`, `change` or `unchanged`.
    action: &'static str,
    changes: &'a [Change],
}

async fn compare(files: &ManifestFiles, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let declared = load(files, None)?;
    let client = ApiClient::discover(global)?;
    let steps = plan(&client, &declared).await?;
    let differences: Vec<Difference> = steps
        .iter()
        .map(|step| {
            let (action, changes): (_, &[Change]) = match &step.action {
                Action::Create(changes) => ("create", changes),
                Action::Change(changes) => ("change", changes),
                Action::Unchanged => ("unchanged", &[]),
            };
            Difference {
                object: step.declared.object.id(),
                declared: step.declared.place(),
                action,
                changes,
            }
        })
        .collect();
    let changing = differences.iter().filter(|d| d.action != "unchanged").count();
    if global.output == Output::Json {
        output::json(&differences)?;
    } else {
        for difference in differences.iter().filter(|d| d.action != "unchanged") {
            let (sign, what) = match difference.action {
                "create" => ('+', "would be created"),
                _ => ('~', "would change"),
            };
            outln!("{sign} {} ({}) {what}", difference.object, difference.declared);
            for change in difference.changes {
                outln!("    {change}");
            }
        }
        let unchanged = differences.len() - changing;
        eprintln!("{changing} to create or change, {unchanged} unchanged");
    }
    Ok(if changing > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `bulkhead delete -f ...`: APIs and apps first, then tenants (offboarded
/// as `tenants delete` without `--purge` does: a final snapshot is kept).
pub async fn delete(args: &DeleteManifestArgs, global: &GlobalArgs) -> Result<(), CliError> {
    let declared = load(&args.files, Some("nothing was deleted"))?;
    let client = ApiClient::discover(global)?;
    let (tenants, apis): (Vec<&Declared>, Vec<&Declared>) =
        declared.iter().partition(|d| matches!(d.object, Object::Tenant(_)));
    if !args.yes {
        for declared in &tenants {
            tenants::confirm(declared.object.tenant().as_str(), false)?;
        }
    }
    let mut report = Report::new(global.output);
    for declared in apis.into_iter().chain(tenants) {
        let object = &declared.object;
        let deleted = match object {
            Object::Api(api) => {
                client.delete_api(api.tenant.as_str(), api.name().as_str()).await.map(|_| ())
            }
            Object::App(app) => client.delete_app(app.tenant.as_str(), app.name().as_str()).await,
            Object::Guardrail(g) => {
                client.delete_resource(g.tenant.as_str(), "guardrails", &g.spec.name).await
            }
            Object::Tool(t) => {
                client.delete_resource(t.tenant.as_str(), "tools", &t.spec.name).await
            }
            Object::Tenant(tenant) => {
                client.delete_tenant(tenant.name.as_str(), false, None).await.map(|_| ())
            }
        };
        let result = match deleted {
            Ok(()) => "deleted",
            Err(e) if e.kind == Kind::NotFound => "absent",
            Err(e) => return Err(about(declared, e)),
        };
        report.add(object, result);
    }
    report.finish()
}

/// `bulkhead get tenant|api ...`: the manifest `apply` takes back unchanged.
pub async fn get(command: &GetCommand, global: &GlobalArgs) -> Result<(), CliError> {
    let client = ApiClient::discover(global)?;
    let objects = match command {
        GetCommand::Tenant { name, apis } => {
            let tenant = client.tenant(name).await?.tenant;
            let mut objects = vec![Object::Tenant(TenantManifest::of(&tenant))];
            if *apis {
                let specs = client.apis(name).await?.apis;
                objects.extend(
                    specs.into_iter().map(|spec| Object::Api(ApiManifest::of(&tenant.name, spec))),
                );
            }
            objects
        }
        GetCommand::Api { tenant, name } => {
            let spec = client.api(tenant, name).await?;
            let tenant = stored_name(tenant)?;
            vec![Object::Api(ApiManifest::of(&tenant, spec))]
        }
        GetCommand::App { tenant, name } => {
            let spec = match client.find_app(tenant, name).await? {
                Found::Yes(spec) => spec,
                Found::Gone => {
                    return Err(CliError::new(
                        Kind::NotFound,
                        format!("tenant {tenant:?} has no app named {name:?}"),
                    ));
                }
            };
            let tenant = stored_name(tenant)?;
            vec![Object::App(AppManifest::of(&tenant, spec))]
        }
        GetCommand::Guardrails { tenant, name } => {
            let specs = match name {
                Some(name) => vec![one(&client, tenant, "guardrails", name).await?],
                None => client.resources::<GuardrailList>(tenant, "guardrails").await?.guardrails,
            };
            let tenant = stored_name(tenant)?;
            specs
                .into_iter()
                .map(|spec| Object::Guardrail(GuardrailManifest::of(&tenant, spec)))
                .collect()
        }
        GetCommand::Tools { tenant, name } => {
            let specs = match name {
                Some(name) => vec![one(&client, tenant, "tools", name).await?],
                None => client.resources::<ToolList>(tenant, "tools").await?.tools,
            };
            let tenant = stored_name(tenant)?;
            specs.into_iter().map(|spec| Object::Tool(ToolManifest::of(&tenant, spec))).collect()
        }
    };
    if global.output == Output::Json {
        return match objects.as_slice() {
            [object] => output::json(&object.document()),
            objects => output::json(&objects.iter().map(Object::document).collect::<Vec<_>>()),
        };
    }
    let yaml = manifest::to_yaml(&objects)
        .map_err(|e| CliError::failed(format!("cannot print YAML: {e}")))?;
    out!("{yaml}");
    Ok(())
}

/// One guardrail or tool of `tenant`, or an error that says how to list
/// them.
async fn one<T: serde::de::DeserializeOwned>(
    client: &ApiClient,
    tenant: &str,
    collection: &str,
    name: &str,
) -> Result<T, CliError> {
    match client.find_resource(tenant, collection, name).await? {
        Found::Yes(spec) => Ok(spec),
        Found::Gone => {
            let noun = collection.trim_end_matches('s');
            Err(CliError::new(
                Kind::NotFound,
                format!(
                    "tenant {tenant:?} has no {noun} named {name:?}; `bulkhead get {collection} \
                     --tenant {tenant}` lists them"
                ),
            ))
        }
    }
}

fn stored_name(tenant: &str) -> Result<TenantName, CliError> {
    TenantName::parse_stored(tenant).map_err(|e| CliError::usage(e.to_string()))
}

/// What applying one object would do.
struct Step<'a> {
    declared: &'a Declared,
    action: Action,
}

/// Reads what exists of each object and says what applying it would do:
/// tenants first, then APIs, each in the order declared. Refuses, with
/// every reason found, any object that cannot be applied: a tenant whose
/// isolation or region would change, an unknown plan or region, an API of
/// a tenant that neither exists nor is declared.
async fn plan<'a>(client: &ApiClient, declared: &'a [Declared]) -> Result<Vec<Step<'a>>, CliError> {
    let mut errors = Vec::new();
    let mut steps = Vec::new();
    let mut catalog = Catalog::default();
    // Each tenant named, as the server has it, and whether this set
    // creates it.
    let mut tenants: HashMap<TenantName, (Option<Tenant>, bool)> = HashMap::new();
    let (tenant_objects, mut owned_objects): (Vec<&Declared>, Vec<&Declared>) =
        declared.iter().partition(|d| matches!(d.object, Object::Tenant(_)));
    // Guardrails and tools before the APIs that use them, so that no API
    // is served, even for a moment, without the guardrails declared with it.
    owned_objects.sort_by_key(|d| !matches!(d.object, Object::Guardrail(_) | Object::Tool(_)));
    for declared in tenant_objects {
        let Object::Tenant(manifest) = &declared.object else { continue };
        let current = live(client.find_tenant(manifest.name.as_str()).await?);
        let action = match manifest.against(current.as_ref()) {
            Ok(action) => action,
            Err(refusal) => {
                errors.push(format!(
                    "{}: {}: {}",
                    declared.place(),
                    declared.object.id(),
                    refusal.message
                ));
                continue;
            }
        };
        if let Err(why) = catalog.check(client, manifest, &action).await? {
            errors.push(format!("{}: {}: {why}", declared.place(), declared.object.id()));
        }
        let creates = matches!(action, Action::Create(_));
        tenants.insert(manifest.name.clone(), (current, creates));
        steps.push(Step { declared, action });
    }
    // Then each tenant's APIs and apps, which need their tenant.
    let everything = declared;
    for declared in owned_objects {
        let tenant = declared.object.tenant();
        if !tenants.contains_key(tenant) {
            let current = live(client.find_tenant(tenant.as_str()).await?);
            tenants.insert(tenant.clone(), (current, false));
        }
        let exists = match &tenants[tenant] {
            (_, true) => false,
            (Some(_), false) => true,
            (None, false) => {
                errors.push(format!(
                    "{}: {}: tenant {:?} does not exist; declare it in a Tenant document or \
                     create it first",
                    declared.place(),
                    declared.object.id(),
                    tenant.as_str()
                ));
                continue;
            }
        };
        let action = match &declared.object {
            Object::Api(manifest) => {
                let current = match exists {
                    true => client
                        .find_api(tenant.as_str(), manifest.name().as_str())
                        .await?
                        .into_option(),
                    false => None,
                };
                manifest.against(current.as_ref())
            }
            Object::App(manifest) => {
                let current = match exists {
                    true => client
                        .find_app(tenant.as_str(), manifest.name().as_str())
                        .await?
                        .into_option(),
                    false => None,
                };
                manifest.against(current.as_ref())
            }
            Object::Guardrail(manifest) => {
                if let Some(api) = &manifest.spec.api {
                    let beside = everything.iter().any(|d| {
                        matches!(&d.object, Object::Api(a) if &a.tenant == tenant && a.name().as_str() == api)
                    });
                    let stored = exists
                        && client.find_api(tenant.as_str(), api).await?.into_option().is_some();
                    if !beside && !stored {
                        errors.push(format!(
                            "{}: {}: spec.api: tenant {:?} has no API {api:?}, and none is \
                             declared; `bulkhead apis list --tenant {}` shows its APIs",
                            declared.place(),
                            declared.object.id(),
                            tenant.as_str(),
                            tenant.as_str(),
                        ));
                        continue;
                    }
                }
                let current = match exists {
                    true => client
                        .find_resource(tenant.as_str(), "guardrails", &manifest.spec.name)
                        .await?
                        .into_option(),
                    false => None,
                };
                manifest.against(current.as_ref())
            }
            Object::Tool(manifest) => {
                let current = match exists {
                    true => client
                        .find_resource(tenant.as_str(), "tools", &manifest.spec.name)
                        .await?
                        .into_option(),
                    false => None,
                };
                manifest.against(current.as_ref())
            }
            Object::Tenant(_) => continue,
        };
        steps.push(Step { declared, action });
    }
    if errors.is_empty() { Ok(steps) } else { Err(CliError::usage(errors.join("\n"))) }
}

/// The server's plans and regions, read once and only if needed.
#[derive(Default)]
struct Catalog {
    plans: Option<Vec<Plan>>,
    regions: Option<Vec<RegionSummary>>,
}

impl Catalog {
    /// Why the server would refuse `manifest` as `action` does it: an
    /// unknown plan, an unknown region, an isolation its region does not
    /// offer.
    async fn check(
        &mut self,
        client: &ApiClient,
        manifest: &TenantManifest,
        action: &Action,
    ) -> Result<Result<(), String>, CliError> {
        if matches!(action, Action::Unchanged) {
            return Ok(Ok(()));
        }
        if self.plans.is_none() {
            self.plans = Some(client.plans().await?.plans);
        }
        let plans = self.plans.as_deref().unwrap_or_default();
        let plan = manifest.spec.plan.as_str();
        if !plans.iter().any(|p| p.name.as_str() == plan) {
            let valid = plans.iter().map(|p| p.name.to_string()).collect();
            return Ok(Err(UnknownPlan { name: plan.to_owned(), valid }.to_string()));
        }
        if !matches!(action, Action::Create(_)) {
            return Ok(Ok(()));
        }
        if self.regions.is_none() {
            self.regions = Some(client.regions().await?.regions);
        }
        let regions = self.regions.as_deref().unwrap_or_default();
        let region = match &manifest.spec.region {
            Some(name) => regions.iter().find(|r| r.name == name.as_str()).ok_or_else(|| {
                UnknownRegion {
                    name: name.to_string(),
                    valid: regions.iter().map(|r| r.name.clone()).collect(),
                }
                .to_string()
            }),
            None => regions.first().ok_or_else(|| "the server has no region".to_owned()),
        };
        let region = match region {
            Ok(region) => region,
            Err(why) => return Ok(Err(why)),
        };
        match manifest.spec.isolation {
            Some(isolation) if !region.isolation.contains(&isolation) => {
                Ok(Err(IsolationError::Unsupported { isolation, region: region.name.clone() }
                    .to_string()))
            }
            _ => Ok(Ok(())),
        }
    }
}

/// An error about one object, named with where it is declared.
fn about(declared: &Declared, error: CliError) -> CliError {
    CliError {
        message: format!("{}: {}: {}", declared.place(), declared.object.id(), error.message),
        ..error
    }
}

/// Every object the files declare, each document checked; any mistake
/// anywhere is returned with all the others found, and `nothing` (what was
/// therefore not done) after them.
fn load(files: &ManifestFiles, nothing: Option<&str>) -> Result<Vec<Declared>, CliError> {
    let mut declared = Vec::new();
    let mut errors = Vec::new();
    for (source, text) in sources(&files.files)? {
        match manifest::parse(&source, &text) {
            Ok(objects) => declared.extend(objects),
            Err(found) => errors.extend(found),
        }
    }
    if errors.is_empty()
        && let Err(found) = manifest::check_set(&declared)
    {
        errors = found;
    }
    let mut message: Vec<String> = errors.iter().map(ToString::to_string).collect();
    if message.is_empty() {
        if !declared.is_empty() {
            return Ok(declared);
        }
        message.push("the manifests declare no object".to_owned());
    }
    message.extend(nothing.map(str::to_owned));
    Err(CliError::usage(message.join("\n")))
}

/// The text of each file named, a directory standing for its `*.yaml` and
/// `*.yml` files in name order, `-` for standard input; each with the name
/// errors give it.
fn sources(paths: &[PathBuf]) -> Result<Vec<(String, String)>, CliError> {
    let unreadable = |path: &Path, e: std::io::Error| {
        CliError::usage(format!("cannot read {}: {e}", path.display()))
    };
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| unreadable(path, e))?;
            sources.push(("<stdin>".to_owned(), text));
            continue;
        }
        if !path.is_dir() {
            let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
            sources.push((path.display().to_string(), text));
            continue;
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| unreadable(path, e))? {
            let file = entry.map_err(|e| unreadable(path, e))?.path();
            let yaml = file.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
            if yaml && file.is_file() {
                files.push(file);
            }
        }
        if files.is_empty() {
            return Err(CliError::usage(format!(
                "{} has no manifests: no *.yaml or *.yml files",
                path.display()
            )));
        }
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| unreadable(&file, e))?;
            sources.push((file.display().to_string(), text));
        }
    }
    Ok(sources)
}

/// The tenant found, unless it is a deleted tenant's departure, whose name
/// is free.
fn live(found: Found<bulkhead_control::api::types::TenantView>) -> Option<Tenant> {
    match found {
        Found::Yes(view) if view.departure.is_none() => Some(view.tenant),
        _ => None,
    }
}
