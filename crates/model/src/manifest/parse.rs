//! From YAML text to declared objects, or to errors that name the file, the
//! line, the column and the field.
//!
//! Each document is read twice: once leniently, for `apiVersion`, `kind`
//! and `metadata` (so that a document without them says so), then strictly
//! as its kind, where every unknown field is an error at its own place.
//! Documents are cut apart at their `---` lines first, since YAML has one
//! type per stream; line numbers stay the file's.

use std::{collections::HashMap, fmt};

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, Visitor},
};
use serde_saphyr::{MessageFormatter, Spanned};

use super::{
    API_VERSION, ApiManifest, AppManifest, Declared, GuardrailManifest, Object, TenantManifest,
    TenantSpec, ToolManifest,
};
use crate::{ApiName, ApiSpec, AppName, AppSpec, GuardrailSpec, TenantName, ToolSpec};

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub source: String,
    pub line: u64,
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(f, "{}:{}:{column}: {}", self.source, self.line, self.message),
            None => write!(f, "{}:{}: {}", self.source, self.line, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// The objects `text` declares, `source` naming it in errors. Every
/// document is checked; any error refuses the whole text, with every error
/// found.
pub fn parse(source: &str, text: &str) -> Result<Vec<Declared>, Vec<ManifestError>> {
    let mut declared = Vec::new();
    let mut errors = Vec::new();
    for document in documents(text) {
        match read(source, &document) {
            Ok(Some(object)) => declared.push(object),
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() { Ok(declared) } else { Err(errors) }
}

/// Refuses a set of objects that declares one object twice.
pub fn check_set(declared: &[Declared]) -> Result<(), Vec<ManifestError>> {
    let mut first: HashMap<String, &Declared> = HashMap::new();
    let mut errors = Vec::new();
    for object in declared {
        let id = object.object.id();
        match first.get(&id) {
            Some(earlier) => errors.push(ManifestError {
                source: object.source.clone(),
                line: object.line,
                column: None,
                message: format!("{id} is declared twice: at {} and here", earlier.place()),
            }),
            None => {
                first.insert(id, object);
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// One document of a stream: its text, with as many line breaks before it
/// as the stream had, so that the parser's line numbers are the file's.
struct Document {
    text: String,
    /// Its first line with content; `None` for an empty document.
    first_line: Option<u64>,
}

/// Whether `line` is a document marker: `---` alone or followed by a space.
fn is_marker(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Cuts `text` at its `---` lines. In YAML such a line always ends a
/// document (a block scalar or quoted string cannot hold one), so this
/// never cuts inside a value.
fn documents(text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut documents = Vec::new();
    let mut current = Document { text: String::new(), first_line: None };
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index as u64 + 1;
        let content = line.trim_end_matches(['\n', '\r']);
        let content = if is_marker(content) {
            documents.push(std::mem::replace(
                &mut current,
                Document { text: "\n".repeat(index), first_line: None },
            ));
            // What follows the marker on its line (a comment, mostly) stays
            // in its column.
            current.text.push_str("   ");
            current.text.push_str(&line[3..]);
            &content[3..]
        } else {
            current.text.push_str(line);
            content
        };
        let trimmed = content.trim();
        if current.first_line.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            current.first_line = Some(number);
        }
    }
    documents.push(current);
    documents
}

/// What every document has, read leniently.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    metadata: Option<Spanned<Names>>,
    spec: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Names {
    name: Option<String>,
    tenant: Option<String>,
}

/// A document read strictly, as its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Typed<M, S> {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: M,
    spec: Spanned<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantMetadata {
    name: TenantName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiMetadata {
    name: ApiName,
    tenant: TenantName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// A guardrail's or a tool's: named by a label within its tenant.
struct GuardrailMetadata {
    name: String,
    tenant: TenantName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppMetadata {
    name: AppName,
    tenant: TenantName,
}

fn read(source: &str, document: &Document) -> Result<Option<Declared>, ManifestError> {
    let Some(line) = document.first_line else { return Ok(None) };
    let error_at = |location: Option<serde_saphyr::Location>, message: String| {
        let (line, column) = match location {
            Some(at) if at.line() > 0 => (at.line(), Some(at.column())),
            _ => (line, None),
        };
        ManifestError { source: source.to_owned(), line, column, message }
    };
    let yaml = |error: serde_saphyr::Error| {
        let error = error.without_snippet();
        let message = serde_saphyr::DefaultMessageFormatter.format_message(error);
        // The parser's message may quote the file: no control character
        // reaches a terminal.
        let message = message.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c });
        error_at(error.location(), message.collect())
    };
    let header: Header = serde_saphyr::from_str(&document.text).map_err(yaml)?;
    let Some(api_version) = header.api_version else {
        return Err(error_at(
            None,
            format!("this document has no apiVersion; begin it with `apiVersion: {API_VERSION}`"),
        ));
    };
    if api_version.value != API_VERSION {
        return Err(error_at(
            Some(api_version.referenced),
            format!(
                "apiVersion {:?} is not one this Bulkhead reads; use {API_VERSION}",
                api_version.value
            ),
        ));
    }
    let Some(kind) = header.kind else {
        return Err(error_at(
            None,
            "this document has no kind; use `kind: Tenant`, `kind: Api`, `kind: App`, `kind: \
             Guardrail` or `kind: Tool`"
                .into(),
        ));
    };
    let kind_name = kind.value.as_str();
    if !matches!(kind_name, "Tenant" | "Api" | "App" | "Guardrail" | "Tool") {
        return Err(error_at(
            Some(kind.referenced),
            format!(
                "kind {kind_name:?} is not one Bulkhead knows; use Tenant, Api, App, Guardrail or \
                 Tool"
            ),
        ));
    }
    let (names, names_at) = match header.metadata {
        Some(metadata) => (metadata.value, Some(metadata.referenced)),
        None => (Names { name: None, tenant: None }, None),
    };
    if names.name.is_none() {
        return Err(error_at(names_at, format!("this {kind_name} has no metadata.name")));
    }
    if header.spec.is_none() {
        return Err(error_at(None, format!("this {kind_name} has no spec")));
    }
    let object = if kind_name == "Tenant" {
        let typed: Typed<TenantMetadata, TenantSpec> =
            serde_saphyr::from_str(&document.text).map_err(yaml)?;
        let spec = typed.spec.value;
        spec.limits
            .validate()
            .map_err(|e| error_at(Some(typed.spec.referenced), format!("spec.{e}")))?;
        Object::Tenant(TenantManifest { name: typed.metadata.name, spec })
    } else if names.tenant.is_none() {
        return Err(error_at(
            names_at,
            format!("this {kind_name} has no metadata.tenant; name the tenant it belongs to"),
        ));
    } else if kind_name == "App" {
        let typed: Typed<AppMetadata, SpecFields<AppSpec>> =
            serde_saphyr::from_str(&document.text).map_err(yaml)?;
        let mut spec = typed.spec.value.0;
        spec.name = typed.metadata.name;
        let spec = spec
            .validate()
            .map_err(|e| error_at(Some(typed.spec.referenced), format!("spec.{e}")))?;
        Object::App(AppManifest { tenant: typed.metadata.tenant, spec })
    } else if kind_name == "Guardrail" {
        let typed: Typed<GuardrailMetadata, SpecFields<GuardrailSpec>> =
            serde_saphyr::from_str(&document.text).map_err(yaml)?;
        let mut spec = typed.spec.value.0;
        spec.name = typed.metadata.name;
        // Every pattern is compiled here, as the gateway compiles it: one
        // too costly is refused with the line, before anything is applied.
        spec.validate().map_err(|e| error_at(Some(typed.spec.referenced), format!("spec.{e}")))?;
        Object::Guardrail(GuardrailManifest { tenant: typed.metadata.tenant, spec })
    } else if kind_name == "Tool" {
        let typed: Typed<GuardrailMetadata, SpecFields<ToolSpec>> =
            serde_saphyr::from_str(&document.text).map_err(yaml)?;
        let mut spec = typed.spec.value.0;
        spec.name = typed.metadata.name;
        spec.validate().map_err(|e| error_at(Some(typed.spec.referenced), format!("spec.{e}")))?;
        Object::Tool(ToolManifest { tenant: typed.metadata.tenant, spec })
    } else {
        let typed: Typed<ApiMetadata, SpecFields<ApiSpec>> =
            serde_saphyr::from_str(&document.text).map_err(yaml)?;
        let mut spec = typed.spec.value.0;
        spec.name = typed.metadata.name;
        let spec = spec
            .validate()
            .map_err(|e| error_at(Some(typed.spec.referenced), format!("spec.{e}")))?;
        Object::Api(ApiManifest { tenant: typed.metadata.tenant, spec })
    };
    Ok(Some(Declared { source: source.to_owned(), line, object }))
}

/// A spec as a manifest writes it: the fields of [`ApiSpec`] or
/// [`AppSpec`] but `name`, which is the document's `metadata.name`.
struct SpecFields<T>(T);

/// Stands in for the name while the spec is read; replaced at once.
const NAME_FROM_METADATA: &str = "from-metadata";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SpecFields<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = SpecFields<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of the spec's fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SpecFields<T>, A::Error> {
                let fields = WithName { map, name: Some(NAME_FROM_METADATA) };
                T::deserialize(de::value::MapAccessDeserializer::new(fields)).map(SpecFields)
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// The spec's own fields after a `name` taken from elsewhere.
struct WithName<A> {
    map: A,
    /// The name, until it has been given.
    name: Option<&'static str>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithName<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.name.is_some() {
            return seed.deserialize("name".into_deserializer()).map(Some);
        }
        self.map.next_key_seed(NotName(seed))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.name.take() {
            Some(name) => seed.deserialize(name.into_deserializer()),
            None => self.map.next_value_seed(seed),
        }
    }
}

/// A key of the spec itself, read where it stands (so that an error about
/// it names its line), and never `name`.
struct NotName<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for NotName<K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key == "name" {
            return Err(de::Error::custom(
                "unknown field `name`: the name is the document's metadata.name",
            ));
        }
        self.0.deserialize(key.into_deserializer())
    }
}
