//! Verification against every way a token can be wrong, and properties
//! over random claim combinations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bulkhead_identity::{
    Algorithm, ClaimMapping, ExternalClaims, KeySet, RealmClaims, Reason, Role, SigningKey, Trust,
    VerifiedCache, jws, verify,
};
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "data/rs256_provider.rs"]
mod rs256;
use rs256::rs256_provider;

const NOW: i64 = 1_800_000_000;

struct Realm {
    tenant: Uuid,
    issuer: String,
    key: SigningKey,
}

impl Realm {
    fn new(name: &str, alg: Algorithm) -> Self {
        Self {
            tenant: Uuid::new_v4(),
            issuer: format!("https://bulkhead.example/realms/{name}"),
            key: SigningKey::generate(alg).unwrap(),
        }
    }

    fn trust(&self) -> Trust {
        Trust {
            tenant_id: self.tenant,
            issuer: self.issuer.clone(),
            keys: KeySet::from([(self.key.kid().to_owned(), self.key.verifying_key().unwrap())]),
            algorithms: &Algorithm::REALM,
            audience: None,
            not_before: None,
            claims: ClaimMapping::Realm,
        }
    }

    fn claims(&self) -> RealmClaims {
        RealmClaims {
            iss: self.issuer.clone(),
            sub: "alice".into(),
            aud: vec!["api".into()],
            exp: NOW + 3_600,
            iat: NOW,
            nbf: NOW,
            jti: Uuid::new_v4().to_string(),
            tenant_id: self.tenant,
            roles: vec![Role::Admin],
            plan: "enterprise".into(),
            region: "local".into(),
        }
    }

    fn token(&self, claims: &RealmClaims) -> String {
        jws::encode(&self.key, claims).unwrap()
    }

    /// A token with any header and payload, signed by this realm's key.
    fn raw(&self, header: &Value, payload: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn header(&self) -> Value {
        json!({ "alg": self.key.alg().as_str(), "kid": self.key.kid(), "typ": "JWT" })
    }
}

fn reason(token: &str, trust: &Trust) -> Reason {
    let rejected = verify(token, trust, NOW).unwrap_err();
    assert_eq!(rejected.to_string(), "invalid token", "one message for every failure");
    rejected.reason
}

#[test]
fn a_good_token_verifies_with_both_algorithms() {
    for alg in [Algorithm::EdDSA, Algorithm::ES256] {
        let acme = Realm::new("acme", alg);
        let verified = verify(&acme.token(&acme.claims()), &acme.trust(), NOW).unwrap();
        assert_eq!(verified.tenant_id, acme.tenant);
        assert_eq!(verified.subject, "alice");
        assert_eq!(verified.roles, [Role::Admin]);
        assert_eq!(verified.kid, acme.key.kid());
    }
}

#[test]
fn every_bad_token_is_refused_for_its_own_reason() {
    let acme = Realm::new("acme", Algorithm::EdDSA);
    let globex = Realm::new("globex", Algorithm::EdDSA);
    let trust = acme.trust();
    let claims = acme.claims();

    let expired = RealmClaims { exp: NOW - 3_600, ..claims.clone() };
    assert_eq!(reason(&acme.token(&expired), &trust), Reason::Expired);
    let early = RealmClaims { nbf: NOW + 3_600, ..claims.clone() };
    assert_eq!(reason(&acme.token(&early), &trust), Reason::NotYetValid);
    let wrong_iss = RealmClaims { iss: globex.issuer.clone(), ..claims.clone() };
    assert_eq!(reason(&acme.token(&wrong_iss), &trust), Reason::Issuer);
    let wrong_tenant = RealmClaims { tenant_id: globex.tenant, ..claims.clone() };
    assert_eq!(reason(&acme.token(&wrong_tenant), &trust), Reason::Tenant);

    // A perfectly valid token of another tenant's realm.
    let foreign = globex.token(&globex.claims());
    assert!(matches!(reason(&foreign, &trust), Reason::UnknownKid(_)));
    // Another tenant's key, under a kid that names it, with our claims.
    let forged = globex.token(&claims);
    assert!(matches!(reason(&forged, &trust), Reason::UnknownKid(_)));
    // Another tenant's key, claiming our kid.
    let mut header = acme.header();
    header["kid"] = json!(acme.key.kid());
    let body = serde_json::to_string(&claims).unwrap();
    let claimed_kid = globex.raw(&header, &body);
    assert_eq!(reason(&claimed_kid, &trust), Reason::Signature);

    // alg none, and HS256 keyed with the public key.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": acme.key.kid()}).to_string()),
        URL_SAFE_NO_PAD.encode(&body)
    );
    assert_eq!(reason(&none, &trust), Reason::Algorithm("none".into()));
    let public = URL_SAFE_NO_PAD.decode(acme.key.public_jwk().unwrap().x).unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": acme.key.kid()}).to_string()),
        URL_SAFE_NO_PAD.encode(&body)
    );
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&public).unwrap();
    mac.update(input.as_bytes());
    let hs256 = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    assert_eq!(reason(&hs256, &trust), Reason::Algorithm("HS256".into()));

    let mut unknown_kid = acme.header();
    unknown_kid["kid"] = json!("no-such-key");
    assert!(matches!(reason(&acme.raw(&unknown_kid, &body), &trust), Reason::UnknownKid(_)));
    let mut no_kid = acme.header();
    no_kid.as_object_mut().unwrap().remove("kid");
    assert_eq!(reason(&acme.raw(&no_kid, &body), &trust), Reason::NoKid);

    // Tampered payload: a signature over other claims.
    let good = acme.token(&claims);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let promoted = RealmClaims { roles: vec![Role::Owner], ..claims.clone() };
    let tampered = format!(
        "{head}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(serde_json::to_string(&promoted).unwrap())
    );
    assert_eq!(reason(&tampered, &trust), Reason::Signature);

    // Truncated, in every way.
    for cut in [1, 10, good.len() / 2, good.len() - 1] {
        let truncated = good.get(..good.len() - cut).unwrap();
        let r = reason(truncated, &trust);
        assert!(matches!(r, Reason::Malformed(_) | Reason::Signature), "cut {cut}: {r:?}");
    }
    // Oversized.
    let huge = RealmClaims { sub: "x".repeat(10_000), ..claims.clone() };
    assert!(matches!(
        reason(&acme.token(&huge), &trust),
        Reason::Malformed(jws::Malformed::TooLarge)
    ));
    // Duplicate claims: which `tenant_id` would an application read?
    let duplicated = body.replacen(
        "\"tenant_id\"",
        &format!("\"tenant_id\":\"{}\",\"tenant_id\"", globex.tenant),
        1,
    );
    assert_eq!(
        reason(&acme.raw(&acme.header(), &duplicated), &trust),
        Reason::Malformed(jws::Malformed::DuplicateMember)
    );
    // Critical extensions are not understood, so not accepted.
    let mut critical = acme.header();
    critical["crit"] = json!(["exp"]);
    assert_eq!(
        reason(&acme.raw(&critical, &body), &trust),
        Reason::Malformed(jws::Malformed::Critical)
    );
    // ... at any depth.
    let nested = body.replacen("{", "{\"ext\":{\"a\":1,\"a\":2},", 1);
    assert_eq!(
        reason(&acme.raw(&acme.header(), &nested), &trust),
        Reason::Malformed(jws::Malformed::DuplicateMember)
    );
    // Nested deeper than the parser follows: said as such, in the claims
    // and in the header alike.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let deep_claims = body.replacen("{", &format!("{{\"ext\":{deep},"), 1);
    assert_eq!(
        reason(&acme.raw(&acme.header(), &deep_claims), &trust),
        Reason::Malformed(jws::Malformed::TooDeep)
    );
    let mut deep_header = acme.header();
    deep_header["ext"] = json!(0);
    let header_text = deep_header.to_string().replace("\"ext\":0", &format!("\"ext\":{deep}"));
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header_text),
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    assert_eq!(reason(&token, &trust), Reason::Malformed(jws::Malformed::TooDeep));
    // A role Bulkhead does not know.
    let odd_roles = body.replace("[\"admin\"]", "[\"root\"]");
    assert_eq!(reason(&acme.raw(&acme.header(), &odd_roles), &trust), Reason::Claim("roles"));
    // A JWS that says it is something else than a JWT.
    let mut typed = acme.header();
    typed["typ"] = json!("dpop+jwt");
    assert_eq!(reason(&acme.raw(&typed, &body), &trust), Reason::Type);
    typed["typ"] = json!("at+JWT");
    assert!(verify(&acme.raw(&typed, &body), &trust, NOW).is_ok());
    // Times at the ends of the range are compared, not overflowed (a debug
    // build would panic on `i64::MAX + leeway`).
    for (claim, value) in [("exp", "1e300"), ("nbf", "-1e300"), ("exp", "9223372036854775807")] {
        let mut odd: Value = serde_json::from_str(&body).unwrap();
        odd[claim] = serde_json::from_str(value).unwrap();
        let odd = acme.raw(&acme.header(), &odd.to_string());
        assert!(verify(&odd, &trust, NOW).is_ok(), "{claim}={value}");
    }
}

#[test]
fn revoking_a_realms_tokens_refuses_those_issued_until_then() {
    let acme = Realm::new("acme", Algorithm::EdDSA);
    let cache = VerifiedCache::new(16);
    let mut trust = acme.trust();
    let old = acme.token(&acme.claims());
    cache.verify(&old, &trust, NOW).unwrap();
    trust.not_before = Some(NOW);
    assert_eq!(cache.verify(&old, &trust, NOW).unwrap_err().reason, Reason::Revoked);
    let newer = acme.token(&RealmClaims { iat: NOW + 1, ..acme.claims() });
    assert!(cache.verify(&newer, &trust, NOW + 1).is_ok());
    let mut no_iat: Value = serde_json::to_value(acme.claims()).unwrap();
    no_iat.as_object_mut().unwrap().remove("iat");
    let no_iat = acme.raw(&acme.header(), &no_iat.to_string());
    assert_eq!(reason(&no_iat, &trust), Reason::Revoked);
}

#[test]
fn audience_and_algorithm_policy() {
    let acme = Realm::new("acme", Algorithm::ES256);
    let mut trust = acme.trust();
    trust.audience = Some("api".into());
    assert!(verify(&acme.token(&acme.claims()), &trust, NOW).is_ok());
    trust.audience = Some("billing".into());
    assert_eq!(reason(&acme.token(&acme.claims()), &trust), Reason::Audience);
    let mut eddsa_only = acme.trust();
    eddsa_only.algorithms = &[Algorithm::EdDSA];
    assert_eq!(reason(&acme.token(&acme.claims()), &eddsa_only), Reason::Algorithm("ES256".into()));
}

#[test]
fn external_tokens_map_their_claims_and_never_name_the_tenant() {
    let idp = Realm::new("idp", Algorithm::ES256);
    let mut trust = idp.trust();
    trust.claims = ClaimMapping::External(Box::new(ExternalClaims {
        subject: "email".into(),
        roles: "realm_access.roles".into(),
        role_map: HashMap::from([("data-team".into(), Role::Analyst)]),
    }));
    let payload = json!({
        "iss": idp.issuer, "email": "bob@acme.example", "exp": NOW + 60,
        "realm_access": { "roles": ["data-team", "admin", "offline_access"] },
    })
    .to_string();
    let verified = verify(&idp.raw(&idp.header(), &payload), &trust, NOW).unwrap();
    assert_eq!(verified.tenant_id, idp.tenant, "the tenant is the trust's own");
    assert_eq!(verified.subject, "bob@acme.example");
    assert_eq!(verified.roles, [Role::Analyst], "an unmapped `admin` grants nothing");

    // A string claim is one value, never split: `scope: "openid data-team"`
    // does not grant what `data-team` would.
    let scoped = json!({
        "iss": idp.issuer, "email": "bob@acme.example", "exp": NOW + 60,
        "realm_access": { "roles": "openid data-team" },
    })
    .to_string();
    let verified = verify(&idp.raw(&idp.header(), &scoped), &trust, NOW).unwrap();
    assert!(verified.roles.is_empty());
    // An empty subject is no subject.
    let anonymous = json!({ "iss": idp.issuer, "email": "", "exp": NOW + 60 }).to_string();
    assert_eq!(reason(&idp.raw(&idp.header(), &anonymous), &trust), Reason::Claim("subject"));
}

#[test]
fn an_rs256_provider_token_verifies_only_where_rsa_is_allowed() {
    let (token, trust) = rs256_provider();
    let verified = verify(&token, &trust, NOW).unwrap();
    assert_eq!(
        (verified.subject.as_str(), verified.roles.as_slice()),
        ("alice", &[Role::Admin][..])
    );
    assert_eq!(verified.kid, "rsa-1");

    // A realm's allow-list has no RS256.
    let realm_policy = Trust { algorithms: &Algorithm::REALM, ..trust.clone() };
    assert_eq!(reason(&token, &realm_policy), Reason::Algorithm("RS256".into()));
    // A payload changed under the RSA signature.
    let (head, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let claims = json!({ "iss": "https://idp.example/", "aud": "api", "sub": "mallory",
                         "roles": ["admin"], "exp": NOW + 60 });
    let tampered = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    assert_eq!(reason(&tampered, &trust), Reason::Signature);
    // The RSA key's kid under an ES256 or EdDSA header: never tried as RSA.
    for alg in ["ES256", "EdDSA"] {
        let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "kid": "rsa-1" }).to_string());
        let (_, after_head) = token.split_once('.').unwrap();
        let relabelled = format!("{header}.{after_head}");
        assert_eq!(reason(&relabelled, &trust), Reason::KeyAlgorithm, "{alg}");
    }
    // An EC key's kid under an RS256 header.
    let ec = Realm::new("idp", Algorithm::ES256);
    let mut mixed = trust.clone();
    mixed.keys.insert("ec".into(), ec.key.verifying_key().unwrap());
    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "RS256", "kid": "ec" }).to_string());
    let (_, after_head) = token.split_once('.').unwrap();
    assert_eq!(reason(&format!("{header}.{after_head}"), &mixed), Reason::KeyAlgorithm);
}

#[test]
fn the_cache_answers_repeats_and_forgets_removed_keys() {
    let acme = Realm::new("acme", Algorithm::EdDSA);
    let cache = VerifiedCache::new(2);
    let mut trust = acme.trust();
    let token = acme.token(&acme.claims());
    let first = cache.verify(&token, &trust, NOW).unwrap();
    assert_eq!(cache.verify(&token, &trust, NOW).unwrap(), first);
    // Past its exp, a cached token is verified again, and refused.
    assert_eq!(cache.verify(&token, &trust, NOW + 7_200).unwrap_err().reason, Reason::Expired);
    // Its kid now naming another key (a provider reusing kids): the
    // cached answer does not carry over.
    let other = SigningKey::generate(Algorithm::EdDSA).unwrap();
    trust.keys.insert(acme.key.kid().to_owned(), other.verifying_key().unwrap());
    assert_eq!(cache.verify(&token, &trust, NOW).unwrap_err().reason, Reason::Signature);
    // Its key no longer trusted: refused too.
    trust.keys = KeySet::default();
    let kid = acme.key.kid().to_owned();
    assert_eq!(cache.verify(&token, &trust, NOW).unwrap_err().reason, Reason::UnknownKid(kid));
    // Another tenant's trust never hits this tenant's entry, even one that
    // trusts the very same key (a provider shared by two tenants): its
    // issuer and tenant are checked afresh, and refuse.
    let trust = acme.trust();
    cache.verify(&token, &trust, NOW).unwrap();
    let globex = Realm::new("globex", Algorithm::EdDSA);
    let same_key =
        Trust { tenant_id: globex.tenant, issuer: globex.issuer.clone(), ..trust.clone() };
    assert_eq!(cache.verify(&token, &same_key, NOW).unwrap_err().reason, Reason::Issuer);
    let same_issuer = Trust { tenant_id: globex.tenant, ..trust.clone() };
    assert_eq!(cache.verify(&token, &same_issuer, NOW).unwrap_err().reason, Reason::Tenant);
    // A token cached for one audience is checked again for another.
    let control = Trust { audience: Some("control".into()), ..trust };
    assert_eq!(cache.verify(&token, &control, NOW).unwrap_err().reason, Reason::Audience);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Over random combinations, a token verifies exactly when every claim
    /// is right.
    #[test]
    fn verifies_exactly_when_every_claim_is_right(
        exp_offset in -7_200i64..7_200,
        nbf_offset in -7_200i64..7_200,
        right_issuer in any::<bool>(),
        right_tenant in any::<bool>(),
        aud_included in any::<bool>(),
        audience_required in any::<bool>(),
        roles in proptest::collection::vec(0usize..4, 0..4),
        es256 in any::<bool>(),
    ) {
        let acme = Realm::new("acme", if es256 { Algorithm::ES256 } else { Algorithm::EdDSA });
        let mut trust = acme.trust();
        if audience_required {
            trust.audience = Some("api".into());
        }
        let claims = RealmClaims {
            iss: if right_issuer { acme.issuer.clone() } else { "https://evil.example".into() },
            tenant_id: if right_tenant { acme.tenant } else { Uuid::new_v4() },
            exp: NOW + exp_offset,
            nbf: NOW + nbf_offset,
            aud: if aud_included { vec!["api".into()] } else { vec!["other".into()] },
            roles: roles.iter().map(|i| Role::ALL[*i]).collect(),
            ..acme.claims()
        };
        let expected = right_issuer
            && right_tenant
            && NOW + exp_offset + 30 > NOW
            && NOW + nbf_offset - 30 <= NOW
            && (!audience_required || aud_included);
        let result = verify(&acme.token(&claims), &trust, NOW);
        prop_assert_eq!(result.is_ok(), expected, "{:?}", result);
        if let Ok(verified) = result {
            prop_assert_eq!(verified.roles, claims.roles);
        }
    }
}
