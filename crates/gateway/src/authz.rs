//! Reads: the route's API and the principal. Adds: [`Permitted`], which
//! only this phase makes, so the proxy cannot be reached with a request
//! that skipped it.
//!
//! A token must name the API's audience (the tenant's application
//! audience unless the API sets its own) and must not name the control
//! API's: a token minted to manage the tenant is not one for its
//! applications. With roles set on the API, the caller must hold one of
//! them or a stronger one.

use bulkhead_model::Role;

use crate::{
    authn::{CredentialKind, Principal},
    error::{Code, Phase, Refusal},
    resolve::ResolvedTenant,
    route::Route,
    snapshot::Domain,
};

/// A request allowed through to the limits and the proxy.
#[derive(Debug)]
pub struct Permitted {
    pub tenant: ResolvedTenant,
    pub route: Route,
    pub principal: Option<Principal>,
}

pub fn authorize(
    domain: &Domain,
    tenant: ResolvedTenant,
    route: Route,
    principal: Option<Principal>,
) -> Result<Permitted, Refusal> {
    let spec = &route.api.spec;
    let Some(caller) = &principal else {
        if spec.auth == bulkhead_model::ApiAuth::Public {
            return Ok(Permitted { tenant, route, principal });
        }
        return Err(Refusal::new(Phase::Authz, Code::Unauthenticated, "no credential"));
    };
    if caller.kind != CredentialKind::ApiKey {
        // An external provider's token names the audience of the tenant's
        // trust, which authn checked; a realm token, the tenant's
        // application audience. An API with its own audience wants that.
        let required = match (spec.audience.as_deref(), caller.kind) {
            (Some(own), _) => Some(own),
            (None, CredentialKind::ExternalToken) => None,
            (None, _) => Some(&*tenant.0.app_audience),
        };
        if caller.audience.contains(&domain.control_audience) {
            return Err(Refusal::new(
                Phase::Authz,
                Code::Unauthenticated,
                "a control-API token is not an application token",
            ));
        }
        if let Some(required) = required
            && !caller.audience.iter().any(|a| a == required)
        {
            return Err(Refusal::new(
                Phase::Authz,
                Code::Unauthenticated,
                "token audience is not this API's",
            ));
        }
    }
    if !roles_allow(&spec.roles, &caller.roles) {
        return Err(Refusal::new(Phase::Authz, Code::Forbidden, "roles do not allow this API"));
    }
    Ok(Permitted { tenant, route, principal })
}

/// Whether `held` includes one of `required` or a stronger role; nothing
/// required allows any caller. Roles sort strongest first: holding any
/// role at least as strong as the weakest one required is enough.
pub fn roles_allow(required: &[Role], held: &[Role]) -> bool {
    let Some(weakest_allowed) = required.iter().max() else { return true };
    held.iter().min().is_some_and(|strongest_held| strongest_held <= weakest_allowed)
}
