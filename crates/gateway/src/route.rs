//! Reads: the resolved tenant's APIs and the request's canonical path and
//! method. Adds: the [`Route`], the API with the longest prefix that
//! matches the path on a segment boundary (`/echo` never serves
//! `/echoes`), and the path the upstream receives.

use std::sync::Arc;

use http::{HeaderValue, Method, header};

use crate::{
    error::{Code, Phase, Refusal},
    resolve::ResolvedTenant,
    snapshot::ApiEntry,
};

/// The API a request is for.
#[derive(Debug, Clone)]
pub struct Route {
    pub api: Arc<ApiEntry>,
    /// Path and query as the upstream receives them.
    pub upstream_target: String,
}

pub fn find(
    tenant: &ResolvedTenant,
    path: &str,
    query: Option<&str>,
    method: &Method,
) -> Result<Route, Refusal> {
    let api = tenant
        .0
        .apis
        .iter()
        .find(|api| api.spec.prefix.matches(path))
        .ok_or_else(|| Refusal::new(Phase::Route, Code::RouteNotFound, "no API matches"))?;
    if !api.spec.allows_method(method.as_str()) {
        let allow = HeaderValue::from_str(&api.spec.methods.join(", "))
            .unwrap_or(HeaderValue::from_static(""));
        return Err(Refusal::new(Phase::Route, Code::MethodNotAllowed, "method not allowed")
            .with_header(header::ALLOW, allow));
    }
    let mut target = if api.spec.strip_prefix && api.spec.prefix.as_str() != "/" {
        match &path[api.spec.prefix.as_str().len()..] {
            "" => "/".to_owned(),
            rest => rest.to_owned(),
        }
    } else {
        path.to_owned()
    };
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    Ok(Route { api: Arc::clone(api), upstream_target: target })
}
