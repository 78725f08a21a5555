//! Manifests: tenants, their APIs and their apps declared in YAML documents
//! (`apiVersion: bulkhead.dev/v1`), as `bulkhead apply`, `diff`, `delete`
//! and `get -o yaml` read and write them. `docs/manifests.md` is the
//! reference.
//!
//! Parsing ([`parse`]) turns text into [`Declared`] objects, each with the
//! file and line it came from, and refuses anything it does not know with
//! that place named. Comparing ([`TenantManifest::against`],
//! [`ApiManifest::against`]) says what applying an object to what exists
//! would do, field by field. Neither touches a server: the CLI reads the
//! current state and makes the calls.

mod diff;
mod parse;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    AdminEmail, ApiName, ApiSpec, AppName, AppSpec, GuardrailSpec, Isolation, PlanName, RegionName,
    Tenant, TenantLimits, TenantName, TenantState, ToolSpec,
};

pub use diff::{Change, changes};
pub use parse::{ManifestError, check_set, parse};

/// The `apiVersion` every document names.
pub const API_VERSION: &str = "bulkhead.dev/v1";

/// What a `Tenant` document declares: the tenant's plan and limits, and the
/// placement it is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub plan: PlanName,
    /// Left out: the plan's default, as the region allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Left out: the first configured region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<AdminEmail>,
    /// Left out: no overrides, the plan's limits.
    #[serde(default, skip_serializing_if = "TenantLimits::is_empty")]
    pub limits: TenantLimits,
}

/// A `Tenant` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantManifest {
    pub name: TenantName,
    pub spec: TenantSpec,
}

/// An `Api` document: one API of a tenant. The spec's name is the
/// document's `metadata.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiManifest {
    pub tenant: TenantName,
    pub spec: ApiSpec,
}

/// An `App` document: one app of a tenant, run by the runtime. The spec's
/// name is the document's `metadata.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppManifest {
    pub tenant: TenantName,
    pub spec: AppSpec,
}

/// A `Guardrail` document: one guardrail of a tenant. The spec's name is
/// the document's `metadata.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailManifest {
    pub tenant: TenantName,
    pub spec: GuardrailSpec,
}

/// A `Tool` document: one entry of a tenant's tool registry. The spec's
/// name is the document's `metadata.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolManifest {
    pub tenant: TenantName,
    pub spec: ToolSpec,
}

/// One object a manifest declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Tenant(TenantManifest),
    Api(ApiManifest),
    App(AppManifest),
    Guardrail(GuardrailManifest),
    Tool(ToolManifest),
}

/// An object and where it was declared, for messages about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The file, as it was named (or `<stdin>`).
    pub source: String,
    /// The line its document starts on (1-based).
    pub line: u64,
    pub object: Object,
}

impl Declared {
    /// `acme.yaml:12`.
    pub fn place(&self) -> String {
        format!("{}:{}", self.source, self.line)
    }
}

/// What applying an object would do, and to which fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(Vec<Change>),
    Change(Vec<Change>),
    Unchanged,
}

impl Action {
    /// `created`, `changed` or `unchanged`: what `apply` reports once done.
    pub fn done(&self) -> &'static str {
        match self {
            Action::Create(_) => "created",
            Action::Change(_) => "changed",
            Action::Unchanged => "unchanged",
        }
    }

    fn between(current: Option<Value>, desired: Value) -> Self {
        match current {
            None => Action::Create(changes(&Value::Null, &desired)),
            Some(current) => {
                let changes = changes(&current, &desired);
                if changes.is_empty() { Action::Unchanged } else { Action::Change(changes) }
            }
        }
    }
}

/// Why an object cannot be applied to what exists; `field` is the spec
/// field at fault, if one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: Option<&'static str>,
    pub message: String,
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Tenant(_) => "Tenant",
            Object::Api(_) => "Api",
            Object::App(_) => "App",
            Object::Guardrail(_) => "Guardrail",
            Object::Tool(_) => "Tool",
        }
    }

    /// `tenant/acme` or `api/acme/orders`: how `apply` and `diff` name it.
    pub fn id(&self) -> String {
        match self {
            Object::Tenant(t) => format!("tenant/{}", t.name),
            Object::Api(a) => format!("api/{}/{}", a.tenant, a.spec.name),
            Object::App(a) => format!("app/{}/{}", a.tenant, a.spec.name),
            Object::Guardrail(g) => format!("guardrail/{}/{}", g.tenant, g.spec.name),
            Object::Tool(t) => format!("tool/{}/{}", t.tenant, t.spec.name),
        }
    }

    /// The tenant the object is or belongs to.
    pub fn tenant(&self) -> &TenantName {
        match self {
            Object::Tenant(t) => &t.name,
            Object::Api(a) => &a.tenant,
            Object::App(a) => &a.tenant,
            Object::Guardrail(g) => &g.tenant,
            Object::Tool(t) => &t.tenant,
        }
    }

    /// The object as a document: `apiVersion`, `kind`, `metadata`, `spec`,
    /// each mapping's keys in alphabetical order (as `kubectl` prints them).
    pub fn document(&self) -> Value {
        let (metadata, spec) = match self {
            Object::Tenant(t) => (json!({ "name": t.name }), t.spec.fields()),
            Object::Api(a) => {
                (json!({ "name": a.spec.name, "tenant": a.tenant }), fields_but_name(&a.spec))
            }
            Object::App(a) => {
                (json!({ "name": a.spec.name, "tenant": a.tenant }), fields_but_name(&a.spec))
            }
            Object::Guardrail(g) => {
                (json!({ "name": g.spec.name, "tenant": g.tenant }), fields_but_name(&g.spec))
            }
            Object::Tool(t) => {
                (json!({ "name": t.spec.name, "tenant": t.tenant }), fields_but_name(&t.spec))
            }
        };
        json!({ "apiVersion": API_VERSION, "kind": self.kind(), "metadata": metadata, "spec": spec })
    }
}

/// Objects as YAML documents, `---` between them: what `get -o yaml`
/// prints and `apply` reads back unchanged.
pub fn to_yaml(objects: &[Object]) -> Result<String, String> {
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let yaml = serde_saphyr::to_string(&object.document()).map_err(|e| e.to_string())?;
        out.push_str(&yaml);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// A spec as its manifest writes it: every field but `name`.
fn fields_but_name<T: Serialize>(spec: &T) -> Value {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(fields) = value.as_object_mut() {
        fields.remove("name");
    }
    value
}

impl TenantSpec {
    fn fields(&self) -> Value {
        // Plain names, enums and numbers: serialisation cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// What an update may change, as compared.
    fn mutable(plan: &PlanName, limits: &TenantLimits) -> Value {
        json!({ "plan": plan, "limits": limits })
    }
}

impl TenantManifest {
    /// The manifest of an existing tenant: applying it changes nothing.
    pub fn of(tenant: &Tenant) -> Self {
        Self {
            name: tenant.name.clone(),
            spec: TenantSpec {
                plan: tenant.plan.clone(),
                isolation: Some(tenant.isolation),
                region: Some(tenant.region.clone()),
                admin_email: tenant.admin_email.clone(),
                limits: tenant.limits.clone(),
            },
        }
    }

    /// What applying this manifest to `current` (`None`: no such tenant)
    /// would do. Only the plan and the limits can change; a manifest that
    /// would change anything else is refused, naming the field.
    pub fn against(&self, current: Option<&Tenant>) -> Result<Action, Refusal> {
        let Some(tenant) = current else {
            return Ok(Action::between(None, self.spec.fields()));
        };
        let name = tenant.name.as_str();
        let state = |message: String| Refusal { field: None, message };
        match tenant.state {
            TenantState::Provisioning | TenantState::Active | TenantState::Suspended => {}
            TenantState::Failed => {
                return Err(state(format!(
                    "tenant {name:?} failed provisioning; delete it with `bulkhead tenants delete \
                     {name} --purge --yes`, then apply again"
                )));
            }
            TenantState::Offboarding => {
                return Err(state(format!("tenant {name:?} is being deleted")));
            }
            TenantState::Deleted => {
                return Err(state(format!(
                    "a deleted tenant named {name:?} still holds the name; purge it with \
                     `bulkhead tenants delete {name} --purge --yes`, then apply again"
                )));
            }
        }
        let fixed = [
            ("isolation", self.spec.isolation.map(|i| i.to_string()), tenant.isolation.to_string()),
            (
                "region",
                self.spec.region.as_ref().map(ToString::to_string),
                tenant.region.to_string(),
            ),
            (
                "admin_email",
                self.spec.admin_email.as_ref().map(ToString::to_string),
                tenant.admin_email.as_ref().map(ToString::to_string).unwrap_or_default(),
            ),
        ];
        for (field, desired, current) in fixed {
            if let Some(desired) = desired
                && desired != current
            {
                let current = if current.is_empty() { "none".to_owned() } else { current };
                return Err(Refusal {
                    field: Some(field),
                    message: format!(
                        "spec.{field} is {desired} but tenant {name:?} has {current}: {field} is \
                         fixed when a tenant is created and cannot change (to move a tenant, \
                         create a new one and move its data)"
                    ),
                });
            }
        }
        Ok(Action::between(
            Some(TenantSpec::mutable(&tenant.plan, &tenant.limits)),
            TenantSpec::mutable(&self.spec.plan, &self.spec.limits),
        ))
    }
}

impl ApiManifest {
    pub fn of(tenant: &TenantName, spec: ApiSpec) -> Self {
        Self { tenant: tenant.clone(), spec }
    }

    pub fn name(&self) -> &ApiName {
        &self.spec.name
    }

    /// What applying this manifest over `current` (`None`: no such API)
    /// would do. The spec is the whole API: a field left out of it is its
    /// default.
    pub fn against(&self, current: Option<&ApiSpec>) -> Action {
        Action::between(current.map(fields_but_name), fields_but_name(&self.spec))
    }
}

impl AppManifest {
    pub fn of(tenant: &TenantName, spec: AppSpec) -> Self {
        Self { tenant: tenant.clone(), spec }
    }

    pub fn name(&self) -> &AppName {
        &self.spec.name
    }

    /// What applying this manifest over `current` (`None`: no such app)
    /// would do; a change deploys the new spec.
    pub fn against(&self, current: Option<&AppSpec>) -> Action {
        Action::between(current.map(fields_but_name), fields_but_name(&self.spec))
    }
}

impl GuardrailManifest {
    pub fn of(tenant: &TenantName, spec: GuardrailSpec) -> Self {
        Self { tenant: tenant.clone(), spec }
    }

    /// What applying this manifest over `current` (`None`: no such
    /// guardrail) would do; the spec is the whole guardrail.
    pub fn against(&self, current: Option<&GuardrailSpec>) -> Action {
        Action::between(current.map(fields_but_name), fields_but_name(&self.spec))
    }
}

impl ToolManifest {
    pub fn of(tenant: &TenantName, spec: ToolSpec) -> Self {
        Self { tenant: tenant.clone(), spec }
    }

    /// What applying this manifest over `current` (`None`: no such tool)
    /// would do; the spec is the whole entry.
    pub fn against(&self, current: Option<&ToolSpec>) -> Action {
        Action::between(current.map(fields_but_name), fields_but_name(&self.spec))
    }
}

#[cfg(test)]
mod tests;
