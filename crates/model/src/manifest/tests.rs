use serde_json::json;

use super::*;
use crate::{LimiterFallback, NewTenant, Rate, TenantId};

const ACME: &str = "\
apiVersion: bulkhead.dev/v1
kind: Tenant
metadata:
  name: acme
spec:
  plan: professional
  limits:
    max_in_flight: 100
---
# The public one.
apiVersion: bulkhead.dev/v1
kind: Api
metadata:
  name: status
  tenant: acme
spec:
  prefix: /status
  upstreams: [\"http://127.0.0.1:9000\"]
  auth: public
--- # and a private one
apiVersion: bulkhead.dev/v1
kind: Api
metadata: {name: orders, tenant: acme}
spec:
  prefix: /orders
  upstreams:
    - http://127.0.0.1:9001
  methods: [post, get]
  roles: [viewer]
";

fn errors(text: &str) -> Vec<String> {
    parse("m.yaml", text).unwrap_err().iter().map(ToString::to_string).collect()
}

fn tenant(state: TenantState) -> Tenant {
    let mut tenant = Tenant::new(
        NewTenant {
            id: TenantId::random(),
            name: TenantName::parse("acme").unwrap(),
            plan: PlanName::parse("professional").unwrap(),
            isolation: Isolation::Pool,
            region: RegionName::default(),
            admin_email: None,
            limits: TenantLimits { max_in_flight: Some(100), ..TenantLimits::default() },
        },
        time::OffsetDateTime::UNIX_EPOCH,
    );
    tenant.state = state;
    tenant
}

#[test]
fn reads_every_document_with_its_line() {
    let declared = parse("acme.yaml", ACME).unwrap();
    let found: Vec<(String, u64)> = declared.iter().map(|d| (d.object.id(), d.line)).collect();
    assert_eq!(
        found,
        [
            ("tenant/acme".to_owned(), 1),
            ("api/acme/status".to_owned(), 11),
            ("api/acme/orders".to_owned(), 21),
        ]
    );
    assert_eq!(declared[1].place(), "acme.yaml:11");
    let Object::Tenant(acme) = &declared[0].object else { panic!("a tenant") };
    assert_eq!(acme.spec.plan.as_str(), "professional");
    assert_eq!(acme.spec.isolation, None);
    assert_eq!(acme.spec.limits.max_in_flight, Some(100));
    let Object::Api(orders) = &declared[2].object else { panic!("an API") };
    assert_eq!(orders.name().as_str(), "orders");
    assert_eq!(orders.tenant.as_str(), "acme");
    assert_eq!(orders.spec.methods, ["GET", "POST"], "validated and normalised");
    let Object::Api(status) = &declared[1].object else { panic!("an API") };
    assert_eq!(status.spec.auth, crate::ApiAuth::Public);
}

#[test]
fn documents_are_cut_at_their_markers_only() {
    let text = "---\n\n# nothing here\n---\r\napiVersion: bulkhead.dev/v1\r\nkind: Tenant\r\n\
                metadata: {name: acme}\r\nspec:\r\n  plan: starter\r\n  admin_email: \"a---b@x.io\"\r\n\
                ---\n---   \n";
    let declared = parse("m.yaml", text).unwrap();
    assert_eq!(declared.len(), 1, "empty documents are skipped");
    assert_eq!(declared[0].line, 5);
    let folded = "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  plan: starter\n  \
                  admin_email: >-\n    ----@x.io\n";
    let Object::Tenant(acme) = &parse("m.yaml", folded).unwrap()[0].object else { panic!() };
    assert_eq!(acme.spec.admin_email.as_ref().unwrap().as_str(), "----@x.io");
    assert_eq!(parse("m.yaml", "").unwrap(), []);
}

#[test]
fn unknown_fields_are_named_where_they_are() {
    let text = ACME.replace("    max_in_flight: 100", "    max_in_flight: 100\n    colour: red");
    assert_eq!(
        errors(&text),
        ["m.yaml:9:5: unknown field `colour`, expected one of rate_limit, max_in_flight, \
          max_upstream_connections, limiter_fallback, cost_caps, backups"]
    );
    let text = ACME.replace("  auth: public", "  auth: public\n  public: true");
    assert_eq!(
        errors(&text),
        [
            "m.yaml:20:3: unknown field `public`, expected one of name, prefix, type, upstreams, protocol, \
          strip_prefix, methods, auth, roles, audience, timeouts, max_body_bytes, rate_limit, audit, \
          shared_upstream, models"
        ]
    );
    let text = ACME.replace("kind: Tenant\n", "kind: Tenant\nstatus: {}\n");
    assert_eq!(
        errors(&text),
        ["m.yaml:3:1: unknown field `status`, expected one of apiVersion, kind, metadata, spec"]
    );
    let text = ACME.replace("  name: status\n", "  name: status\n  namespace: x\n");
    assert_eq!(
        errors(&text),
        ["m.yaml:15:3: unknown field `namespace`, expected one of name, tenant"]
    );
    // A tenant's metadata has no tenant.
    let text = ACME.replace("  name: acme\n", "  name: acme\n  tenant: acme\n");
    assert_eq!(errors(&text), ["m.yaml:5:3: unknown field `tenant`, expected one of name"]);
    // An API's name is its metadata's.
    let text = ACME.replace("  prefix: /status", "  name: status\n  prefix: /status");
    assert_eq!(
        errors(&text),
        ["m.yaml:17:3: unknown field `name`: the name is the document's metadata.name"]
    );
}

#[test]
fn every_document_needs_api_version_kind_and_name() {
    let tenant = "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n  plan: starter\n";
    let cases = [
        (
            tenant.replace("apiVersion: bulkhead.dev/v1\n", "\n"),
            "m.yaml:2: this document has no apiVersion; begin it with `apiVersion: bulkhead.dev/v1`",
        ),
        (
            tenant.replace("bulkhead.dev/v1", "bulkhead.dev/v2"),
            "m.yaml:1:13: apiVersion \"bulkhead.dev/v2\" is not one this Bulkhead reads; use \
             bulkhead.dev/v1",
        ),
        (
            tenant.replace("kind: Tenant\n", ""),
            "m.yaml:1: this document has no kind; use `kind: Tenant`, `kind: Api`, `kind: App`, \
             `kind: Guardrail` or `kind: Tool`",
        ),
        (
            tenant.replace("kind: Tenant", "kind: Namespace"),
            "m.yaml:2:7: kind \"Namespace\" is not one Bulkhead knows; use Tenant, Api, App, \
             Guardrail or Tool",
        ),
        (
            tenant.replace("  name: acme\n", "  labels: {}\n"),
            "m.yaml:4:3: this Tenant has no metadata.name",
        ),
        (
            tenant.replace("metadata:\n  name: acme\n", ""),
            "m.yaml:1: this Tenant has no metadata.name",
        ),
        (
            "apiVersion: bulkhead.dev/v1\nkind: Api\nmetadata: {name: x}\nspec: {}\n".to_owned(),
            "m.yaml:3:11: this Api has no metadata.tenant; name the tenant it belongs to",
        ),
        (
            tenant.replace("  name: acme", "  name: Acme Corp"),
            "m.yaml:4:9: tenant name \"Acme Corp\" contains 'A'; tenant names are DNS labels: 3 \
             to 40 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
        ),
        (tenant.replace("spec:\n  plan: starter\n", ""), "m.yaml:1: this Tenant has no spec"),
        (
            tenant.replace("  plan: starter", "  plan: [starter]"),
            "m.yaml:6:9: expected string scalar",
        ),
        ("- a\n- b\n".to_owned(), "m.yaml:1:1: expected mapping start"),
        ("a: [\n".to_owned(), "m.yaml:1:4: unclosed bracket '['"),
    ];
    for (text, expected) in cases {
        assert_eq!(errors(&text), [expected], "{text}");
    }
}

#[test]
fn specs_are_validated_after_reading() {
    let text = ACME.replace("  upstreams: [\"http://127.0.0.1:9000\"]\n", "  upstreams: []\n");
    let text = text.replace("    max_in_flight: 100", "    max_in_flight: 0");
    assert_eq!(
        errors(&text),
        [
            "m.yaml:6:3: spec.limits.max_in_flight: must be 1 to 1000000 (to stop a tenant's \
             traffic, suspend it)",
            "m.yaml:17:3: spec.upstreams: an API needs 1 to 16 upstreams, not 0",
        ],
        "every document is checked"
    );
    let text = ACME.replace("  roles: [viewer]", "  roles: [viewer]\n  auth: public");
    assert_eq!(
        errors(&text),
        ["m.yaml:25:3: spec.roles: a public API takes no credential, so it cannot require roles; \
          remove `roles` or make `auth` required"]
    );
    let text = ACME.replace("  roles: [viewer]", "  roles: [viewer]\n  prefix: /other");
    assert_eq!(
        errors(&text),
        ["m.yaml:30:3: duplicate mapping key: prefix, set DuplicateKeyPolicy in Options if \
          acceptable"]
    );
}

#[test]
fn a_set_declares_each_object_once() {
    let mut declared = parse("a.yaml", ACME).unwrap();
    declared.extend(parse("b.yaml", &ACME[..ACME.find("---").unwrap()]).unwrap());
    let refused: Vec<String> =
        check_set(&declared).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(refused, ["b.yaml:1: tenant/acme is declared twice: at a.yaml:1 and here"]);
    assert_eq!(check_set(&declared[..3]), Ok(()));
}

#[test]
fn what_is_written_reads_back_the_same() {
    let declared = parse("acme.yaml", ACME).unwrap();
    let objects: Vec<Object> = declared.into_iter().map(|d| d.object).collect();
    let yaml = to_yaml(&objects).unwrap();
    let back: Vec<Object> =
        parse("out.yaml", &yaml).unwrap().into_iter().map(|d| d.object).collect();
    assert_eq!(back, objects, "{yaml}");
    assert!(
        yaml.starts_with(
            "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n"
        ),
        "{yaml}"
    );
    assert_eq!(yaml.matches("\n---\n").count(), 2, "{yaml}");

    // JSON is YAML: one object as `get -o json` prints it reads back too.
    let json = serde_json::to_string_pretty(&objects[2].document()).unwrap();
    assert_eq!(parse("orders.json", &json).unwrap()[0].object, objects[2]);

    // An existing tenant's manifest applies unchanged to it.
    let acme = tenant(TenantState::Active);
    let manifest = TenantManifest::of(&acme);
    let yaml = to_yaml(&[Object::Tenant(manifest.clone())]).unwrap();
    assert_eq!(
        yaml,
        "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n  isolation: pool\n  \
         limits:\n    max_in_flight: 100\n  plan: professional\n  region: local\n"
    );
    let Object::Tenant(read) = &parse("m.yaml", &yaml).unwrap()[0].object else { panic!() };
    assert_eq!(read, &manifest);
    assert_eq!(read.against(Some(&acme)), Ok(Action::Unchanged));
}

#[test]
fn tenants_change_only_their_plan_and_limits() {
    let declared = parse("acme.yaml", ACME).unwrap();
    let Object::Tenant(manifest) = &declared[0].object else { panic!() };
    let Action::Create(fields) = manifest.against(None).unwrap() else { panic!("created") };
    let fields: Vec<String> = fields.iter().map(ToString::to_string).collect();
    assert_eq!(fields, ["limits.max_in_flight: (none) -> 100", "plan: (none) -> \"professional\""]);

    let mut acme = tenant(TenantState::Active);
    assert_eq!(manifest.against(Some(&acme)), Ok(Action::Unchanged));
    acme.plan = PlanName::parse("starter").unwrap();
    acme.limits = TenantLimits {
        rate_limit: Some(Rate { requests_per_minute: 60, burst: 5 }),
        limiter_fallback: Some(LimiterFallback::Deny),
        ..TenantLimits::default()
    };
    let Ok(Action::Change(fields)) = manifest.against(Some(&acme)) else { panic!("changed") };
    let fields: Vec<String> = fields.iter().map(ToString::to_string).collect();
    assert_eq!(
        fields,
        [
            "limits.limiter_fallback: \"deny\" -> (none)",
            "limits.max_in_flight: (none) -> 100",
            "limits.rate_limit.burst: 5 -> (none)",
            "limits.rate_limit.requests_per_minute: 60 -> (none)",
            "plan: \"starter\" -> \"professional\"",
        ]
    );

    let acme = tenant(TenantState::Suspended);
    let mut silo = manifest.clone();
    silo.spec.isolation = Some(Isolation::Silo);
    let refused = silo.against(Some(&acme)).unwrap_err();
    assert_eq!(refused.field, Some("isolation"));
    assert_eq!(
        refused.message,
        "spec.isolation is silo but tenant \"acme\" has pool: isolation is fixed when a tenant is \
         created and cannot change (to move a tenant, create a new one and move its data)"
    );
    let mut elsewhere = manifest.clone();
    elsewhere.spec.region = Some(RegionName::parse("eu").unwrap());
    assert_eq!(elsewhere.against(Some(&acme)).unwrap_err().field, Some("region"));
    let mut admin = manifest.clone();
    admin.spec.admin_email = Some(AdminEmail::parse("ops@acme.example").unwrap());
    let refused = admin.against(Some(&acme)).unwrap_err();
    assert_eq!(refused.field, Some("admin_email"));
    assert!(
        refused
            .message
            .starts_with("spec.admin_email is ops@acme.example but tenant \"acme\" has none")
    );
    // Repeating the fixed fields is fine.
    let mut same = manifest.clone();
    same.spec.isolation = Some(Isolation::Pool);
    same.spec.region = Some(RegionName::default());
    assert_eq!(same.against(Some(&acme)), Ok(Action::Unchanged));

    for (state, expected) in [
        (TenantState::Deleted, "a deleted tenant named \"acme\" still holds the name"),
        (TenantState::Offboarding, "tenant \"acme\" is being deleted"),
        (TenantState::Failed, "tenant \"acme\" failed provisioning"),
    ] {
        let refused = manifest.against(Some(&tenant(state))).unwrap_err();
        assert_eq!(refused.field, None);
        assert!(refused.message.starts_with(expected), "{}", refused.message);
    }
}

#[test]
fn apis_are_compared_whole() {
    let declared = parse("acme.yaml", ACME).unwrap();
    let Object::Api(orders) = &declared[2].object else { panic!() };
    assert_eq!(orders.against(Some(&orders.spec)), Action::Unchanged);
    let mut current = orders.spec.clone();
    current.strip_prefix = true;
    current.methods.clear();
    current.timeouts.idle_ms = 5;
    let Action::Change(fields) = orders.against(Some(&current)) else { panic!("changed") };
    let fields: Vec<String> = fields.iter().map(ToString::to_string).collect();
    assert_eq!(
        fields,
        [
            "methods: (none) -> [\"GET\",\"POST\"]",
            "strip_prefix: true -> false",
            "timeouts.idle_ms: 5 -> 60000",
        ]
    );
    let Action::Create(fields) = orders.against(None) else { panic!("created") };
    assert!(fields.iter().all(|c| c.from.is_none() && c.field != "name"), "{fields:?}");
    assert_eq!(Action::Create(fields).done(), "created");
    assert_eq!(
        changes(&json!({"a": {"b": 1}}), &json!({"a": {"b": 1, "c": [1]}})),
        [Change { field: "a.c".into(), from: None, to: Some(json!([1])) }]
    );
}

#[test]
fn an_app_document_reads_back_as_it_prints() {
    let text = "apiVersion: bulkhead.dev/v1\nkind: App\nmetadata:\n  name: web\n  tenant: acme\nspec:\n  version: 1.2.0\n  command: [/app/web, --port, \"0\"]\n  workers: 2\n  secrets:\n  - path: app/token\n  egress: [api.stripe.com]\n";
    let declared = parse("m.yaml", text).unwrap();
    let Object::App(app) = &declared[0].object else { panic!("{declared:?}") };
    assert_eq!((app.tenant.as_str(), app.spec.name.as_str(), app.spec.workers), ("acme", "web", 2));
    assert_eq!(declared[0].object.id(), "app/acme/web");
    let again = parse("again.yaml", &to_yaml(&[declared[0].object.clone()]).unwrap()).unwrap();
    assert_eq!(again[0].object, declared[0].object);
    assert_eq!(app.against(Some(&app.spec)), Action::Unchanged);
    let bad = text.replace("workers: 2", "workers: 99");
    assert_eq!(errors(&bad), ["m.yaml:7:3: spec.workers: 99 is not 1 to 16"]);
    let nameless = text.replace("  tenant: acme\n", "");
    assert!(
        errors(&nameless)[0].contains("this App has no metadata.tenant"),
        "{:?}",
        errors(&nameless)
    );
}

#[test]
fn guardrails_are_read_and_a_costly_pattern_is_refused_with_its_line() {
    let text = "apiVersion: bulkhead.dev/v1
kind: Guardrail
metadata:
  name: pii
  tenant: acme
spec:
  api: chat
  pii: {card: redact, email: reject}
  topics:
    - name: weapons
      keywords: [semtex]
      patterns: ['build\\s+a\\s+bomb']
  max_prompt_bytes: 65536
";
    let declared = parse("m.yaml", text).unwrap();
    let Object::Guardrail(guardrail) = &declared[0].object else { panic!("a guardrail") };
    assert_eq!((guardrail.tenant.as_str(), guardrail.spec.name.as_str()), ("acme", "pii"));
    assert_eq!(guardrail.spec.api.as_deref(), Some("chat"));
    assert_eq!(declared[0].object.id(), "guardrail/acme/pii");
    // What `get` prints is what `apply` reads back.
    let again = parse("m.yaml", &to_yaml(&[declared[0].object.clone()]).unwrap());
    assert_eq!(again.unwrap()[0].object, declared[0].object);
    let costly = text.replace("'build\\s+a\\s+bomb'", "'\\w{1000}\\w{1000}\\w{1000}'");
    let error = errors(&costly).join("\n");
    assert!(error.starts_with("m.yaml:7:3: spec.topics: topic weapons, pattern 1"), "{error}");
}
