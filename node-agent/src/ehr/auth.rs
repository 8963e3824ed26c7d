//! Authentication of EHR calls as CDS Hooks 2.0 specifies it: `Authorization: Bearer <JWT>`,
//! signed by a configured issuer's key (asymmetric algorithms only: ES256, ES384, RS256, RS384,
//! RS512, PS256, PS384, PS512, EdDSA), with `iss` one of the configured issuers, `aud` the URL
//! of the endpoint called, `exp` at most five minutes ahead, `iat` not in the future, and a
//! `jti` not seen before (replays are refused). The FHIR read API takes the same tokens with
//! `aud` = `{base_url}/fhir`.
//!
//! With `[ehr] client_ca`, mutual TLS is the other way in: a call without an Authorization
//! header whose connection presented a client certificate verified against that CA, with a
//! name listed in `tls_clients`, is that client's. The web server's layer passes the verified
//! names in [`crate::web::TLS_CLIENT_HEADER`], removing any such header a caller sent.
//!
//! A refusal is logged with its reason and the issuer it claimed (never the token, never a
//! patient detail) and answered 401.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::EhrError;
use super::config::{IssuerConfig, TlsClientConfig};
use super::recent::Recent;

/// Leeway for clock differences between the EHR and this agent, seconds.
const LEEWAY_SECONDS: u64 = 60;
/// Longest a token may live (CDS Hooks: "no more than 5 minutes in the future").
const MAX_LIFETIME_SECONDS: u64 = 300;

const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// One issuer's keys.
struct Issuer {
    id: String,
    iss: String,
    /// Keys without `kid` (PEM files), tried in turn.
    keys: Vec<DecodingKey>,
    /// Keys of the JWK Set by `kid`.
    by_kid: HashMap<String, DecodingKey>,
}

/// The configured issuers and the `jti`s already used.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    seen: Recent<String, ()>,
    /// EHR systems allowed in by client certificate: (certificate name, id).
    tls_clients: Vec<(String, String)>,
}

/// Who called, once authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The issuer's short id from the configuration.
    pub issuer: String,
    /// The `fhirUser` or `sub` claim, if any (used for the requester when it fits).
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    iat: u64,
    jti: String,
    #[serde(default, rename = "fhirUser")]
    fhir_user: Option<String>,
}

fn valid_issuer_id(id: &str) -> bool {
    (1..=24).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Authenticator {
    /// Loads every issuer's keys; a missing or unreadable key file is an error at start.
    pub fn load(issuers: &[IssuerConfig], tls_clients: &[TlsClientConfig]) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(tls_clients.len());
        for c in tls_clients {
            if !valid_issuer_id(&c.id) {
                return Err(format!(
                    "[[ehr.tls_clients]] id {:?}: use 1 to 24 characters of A-Z a-z 0-9 . _ -",
                    c.id
                ));
            }
            if c.name.is_empty() || c.name.contains(',') {
                return Err(format!(
                    "[[ehr.tls_clients]] {}: name must be the certificate's DNS name or URI",
                    c.id
                ));
            }
            clients.push((c.name.clone(), c.id.clone()));
        }
        let mut out = Vec::with_capacity(issuers.len());
        for i in issuers {
            if !valid_issuer_id(&i.id) {
                return Err(format!(
                    "[[ehr.issuers]] id {:?}: use 1 to 24 characters of A-Z a-z 0-9 . _ -",
                    i.id
                ));
            }
            let mut keys = Vec::new();
            for path in &i.public_keys {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("issuer {}: cannot read {}: {e}", i.id, path.display()))?;
                let key = DecodingKey::from_ec_pem(&pem)
                    .or_else(|_| DecodingKey::from_rsa_pem(&pem))
                    .or_else(|_| DecodingKey::from_ed_pem(&pem))
                    .map_err(|e| {
                        format!(
                            "issuer {}: {} is not a PEM public key (EC, RSA or Ed25519): {e}",
                            i.id,
                            path.display()
                        )
                    })?;
                keys.push(key);
            }
            let mut by_kid = HashMap::new();
            if let Some(path) = &i.jwks_file {
                let text = std::fs::read(path)
                    .map_err(|e| format!("issuer {}: cannot read {}: {e}", i.id, path.display()))?;
                let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                    format!("issuer {}: {} is not a JWK Set: {e}", i.id, path.display())
                })?;
                for jwk in &set.keys {
                    let kid = jwk.common.key_id.clone().ok_or_else(|| {
                        format!("issuer {}: a key of {} has no kid", i.id, path.display())
                    })?;
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                        format!("issuer {}: key {kid} of {}: {e}", i.id, path.display())
                    })?;
                    by_kid.insert(kid, key);
                }
            }
            if keys.is_empty() && by_kid.is_empty() {
                return Err(format!(
                    "issuer {}: give public_keys or jwks_file (its JWT signing keys)",
                    i.id
                ));
            }
            out.push(Issuer {
                id: i.id.clone(),
                iss: i.iss.clone(),
                keys,
                by_kid,
            });
        }
        Ok(Self {
            issuers: out,
            seen: Recent::new(
                Duration::from_secs(MAX_LIFETIME_SECONDS + 2 * LEEWAY_SECONDS),
                1_000_000,
            ),
            tls_clients: clients,
        })
    }

    /// Checks the bearer token of a call to `audience` (the endpoint's URL).
    pub fn check(&self, headers: &HeaderMap, audience: &[String]) -> Result<Caller, EhrError> {
        let refuse = |why: &str, iss: Option<&str>| {
            tracing::warn!(
                reason = why,
                issuer = iss.unwrap_or("?"),
                "EHR call refused: authentication"
            );
            EhrError::Unauthenticated(why.to_owned())
        };
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return self.by_certificate(headers).ok_or_else(|| {
                refuse(
                    "no Authorization header (and no client certificate of a configured TLS client)",
                    None,
                )
            });
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| refuse("the Authorization header is not a Bearer token", None))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse("the token is not a signed JWT", None))?;
        // The claimed issuer picks the keys; the signature check below proves it.
        let claimed: Claims = jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
            .map(|d| d.claims)
            .map_err(|_| refuse("the token's claims are missing iss, exp, iat or jti", None))?;
        let Some(issuer) = self.issuers.iter().find(|i| i.iss == claimed.iss) else {
            return Err(refuse("the issuer is not configured", None));
        };
        let iss = Some(issuer.id.as_str());
        // One algorithm, the header's, once it is one of ours (the key's family must match it).
        let mut validation = Validation::new(header.alg);
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refuse(
                "the token's algorithm is not an asymmetric one",
                iss,
            ));
        }
        validation.leeway = LEEWAY_SECONDS;
        validation.set_audience(audience);
        validation.set_issuer(&[&issuer.iss]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) if issuer.by_kid.contains_key(kid) => {
                issuer.by_kid.get(kid).into_iter().collect()
            }
            _ => issuer.keys.iter().collect(),
        };
        let mut last = None;
        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(d) => {
                    claims = Some(d.claims);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(claims) = claims else {
            use jsonwebtoken::errors::ErrorKind as K;
            let why = match last.as_ref().map(|e| e.kind()) {
                Some(K::ExpiredSignature) => "the token has expired",
                Some(K::InvalidAudience) => "the token's aud is not the URL of the endpoint called",
                Some(K::InvalidIssuer) => "the token's iss does not match",
                Some(K::ImmatureSignature) => "the token is not valid yet",
                Some(K::MissingRequiredClaim(_)) => "the token lacks a required claim",
                _ => "the token's signature does not verify with the issuer's keys",
            };
            return Err(refuse(why, iss));
        };
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat > now + LEEWAY_SECONDS {
            return Err(refuse("the token's iat is in the future", iss));
        }
        if claims.exp > now + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS {
            return Err(refuse("the token's exp is more than 5 minutes ahead", iss));
        }
        if claims.jti.is_empty() || claims.jti.len() > 256 {
            return Err(refuse("the token's jti is empty or too long", iss));
        }
        let jti_key = format!("{}\u{0}{}", issuer.id, claims.jti);
        if !self.seen.insert_new(jti_key, ()) {
            return Err(refuse("the token's jti was already used (replay)", iss));
        }
        Ok(Caller {
            issuer: issuer.id.clone(),
            user: claims.fhir_user.or(claims.sub),
        })
    }
}

impl Authenticator {
    /// The caller named by the verified client certificate the web server passed on, if it
    /// is one of `tls_clients`.
    fn by_certificate(&self, headers: &HeaderMap) -> Option<Caller> {
        let names = headers.get(crate::web::TLS_CLIENT_HEADER)?.to_str().ok()?;
        let (_, id) = self
            .tls_clients
            .iter()
            .find(|(name, _)| names.split(',').any(|n| n == name))?;
        Some(Caller {
            issuer: id.clone(),
            user: None,
        })
    }
}

/// The requester stated to the hub for a call: `ehr:<issuer>`, then `:<user>` when the user id
/// (e.g. `Practitioner/123`, written `Practitioner.123`) fits the hub's charset and length.
pub fn requester(issuer: &str, user: Option<&str>) -> String {
    let base = format!("ehr:{issuer}");
    let Some(user) = user else {
        return base;
    };
    let full = format!("{base}:{}", user.replace('/', "."));
    if huren_core::logentry::check_requester(&full).is_ok() {
        full
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS client with a bad id or a name that could not be one certificate name is
    /// refused at start, naming the entry; a certificate name is matched whole, never as a
    /// part of another, and a header without a listed name lets no one in.
    #[test]
    fn tls_clients_are_checked_at_start_and_matched_whole() {
        use super::super::config::TlsClientConfig;
        let client = |id: &str, name: &str| TlsClientConfig {
            id: id.into(),
            name: name.into(),
        };
        for bad in [client("", "his.example"), client("his tls", "his.example")] {
            let err = Authenticator::load(&[], &[bad]).err().unwrap_or_default();
            assert!(err.contains("[[ehr.tls_clients]] id"), "{err}");
        }
        for bad in [client("his", ""), client("his", "a.example,b.example")] {
            let err = Authenticator::load(&[], &[bad]).err().unwrap_or_default();
            assert!(err.contains("name must be"), "{err}");
        }
        let auth = Authenticator::load(&[], &[client("his", "his.example")])
            .unwrap_or_else(|e| panic!("{e}"));
        let with = |names: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                crate::web::TLS_CLIENT_HEADER,
                names.parse().unwrap_or_else(|e| panic!("{e}")),
            );
            h
        };
        assert!(auth.check(&with("his.example"), &[]).is_ok());
        assert!(auth.check(&with("x.test,his.example"), &[]).is_ok());
        assert!(auth.check(&with("his.example.evil"), &[]).is_err());
        assert!(auth.check(&with("evil.his.example"), &[]).is_err());
        assert!(auth.check(&HeaderMap::new(), &[]).is_err());
    }

    #[test]
    fn requester_keeps_the_charset() {
        assert_eq!(requester("his1", None), "ehr:his1");
        assert_eq!(
            requester("his1", Some("Practitioner/123")),
            "ehr:his1:Practitioner.123"
        );
        // A name, spaces or a URL that is too long is left out, never sent.
        assert_eq!(requester("his1", Some("张 医生")), "ehr:his1");
        assert_eq!(requester("his1", Some(&"x".repeat(80))), "ehr:his1");
    }

    #[test]
    fn issuer_ids_are_checked() {
        assert!(valid_issuer_id("his-1.a_b"));
        assert!(!valid_issuer_id(""));
        assert!(!valid_issuer_id("his 1"));
        assert!(!valid_issuer_id(&"a".repeat(25)));
    }
}
