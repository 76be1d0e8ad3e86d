//! JWT checks shared by ID tokens and bearer tokens. Before any signature work the raw
//! header is read: only asymmetric algorithms from a fixed allowlist (never `none`,
//! never HMAC, so a public key can never be used as an HMAC secret), no `crit`
//! extensions (none are understood), and no key material or key URLs in the token
//! (`jwk`, `jku`, `x5u`, `x5c`): keys come only from the provider's JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Allowed signature algorithms.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: u64 = 30;

/// Why a token was refused. The text goes to logs and `WWW-Authenticate`; it never
/// contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWS compact token")]
    Malformed,
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(String),
    #[error("unsupported critical header extension")]
    Critical,
    #[error("embedded keys and key URLs (jwk, jku, x5u, x5c) are not accepted")]
    EmbeddedKey,
    #[error("no key {0:?} in the provider's key set")]
    UnknownKey(String),
    #[error("signature does not verify")]
    Signature,
    #[error("token type {found:?} is not {expected:?}")]
    Type { found: String, expected: String },
    #[error("{0}")]
    Claims(String),
}

/// The parts of the header looked at before verification.
#[derive(Debug, Deserialize)]
pub struct RawHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
    #[serde(default)]
    jwk: Option<serde_json::Value>,
    #[serde(default)]
    jku: Option<serde_json::Value>,
    #[serde(default)]
    x5u: Option<serde_json::Value>,
    #[serde(default)]
    x5c: Option<serde_json::Value>,
}

/// Reads and screens the header of a token.
pub fn screen(token: &str) -> Result<(RawHeader, Algorithm), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let raw = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: RawHeader = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
    let alg = ALGORITHMS
        .iter()
        .copied()
        .find(|a| format!("{a:?}") == header.alg)
        .ok_or_else(|| TokenError::Algorithm(header.alg.clone()))?;
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    if header.jwk.is_some() || header.jku.is_some() || header.x5u.is_some() || header.x5c.is_some() {
        return Err(TokenError::EmbeddedKey);
    }
    Ok((header, alg))
}

/// Whether a JWK can verify `alg`: the key type must fit, and a key that names its
/// algorithm must name this one.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(key_alg) = jwk.common.key_algorithm {
        if format!("{key_alg:?}") != format!("{alg:?}") {
            return false;
        }
    }
    matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    )
}

/// Finds the key for a token in a key set: by `kid`, or the only fitting key when the
/// token names none.
pub fn find_key<'a>(keys: &'a JwkSet, header: &RawHeader, alg: Algorithm) -> Result<&'a Jwk, TokenError> {
    let fitting = keys.keys.iter().filter(|k| key_fits(k, alg));
    match &header.kid {
        Some(kid) => fitting
            .into_iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
            .ok_or_else(|| TokenError::UnknownKey(kid.clone())),
        None => {
            let all: Vec<&Jwk> = fitting.collect();
            match all.as_slice() {
                [only] => Ok(only),
                _ => Err(TokenError::UnknownKey(String::new())),
            }
        }
    }
}

/// What a token must say about itself.
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// Any one of these must be in `aud`.
    pub audiences: &'a [String],
    /// Required `typ` header, compared without an `application/` prefix.
    pub typ: Option<&'a str>,
}

/// Verifies signature and registered claims; returns the claims.
pub fn verify(
    token: &str,
    header: &RawHeader,
    alg: Algorithm,
    key: &Jwk,
    expect: &Expect<'_>,
) -> Result<serde_json::Value, TokenError> {
    if let Some(expected) = expect.typ {
        let found = header.typ.as_deref().unwrap_or_default();
        let bare = |t: &str| {
            t.to_ascii_lowercase()
                .trim_start_matches("application/")
                .to_string()
        };
        if bare(found) != bare(expected) {
            return Err(TokenError::Type {
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    let key = DecodingKey::from_jwk(key).map_err(|_| TokenError::Signature)?;
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_issuer(&[expect.issuer]);
    validation.set_audience(expect.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Claims("token expired".into()),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                TokenError::Claims("token not valid yet (nbf)".into())
            }
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => TokenError::Claims("wrong issuer".into()),
            jsonwebtoken::errors::ErrorKind::InvalidAudience => TokenError::Claims("wrong audience".into()),
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => {
                TokenError::Claims(format!("missing claim {c}"))
            }
            other => TokenError::Claims(format!("{other:?}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn headers_are_screened_before_any_key_is_used() {
        let t = |h: serde_json::Value| format!("{}.{}.sig", b64(&h), b64(&serde_json::json!({})));
        assert_eq!(
            screen(&t(serde_json::json!({"alg": "none"}))).err(),
            Some(TokenError::Algorithm("none".into()))
        );
        assert_eq!(
            screen(&t(serde_json::json!({"alg": "HS256"}))).err(),
            Some(TokenError::Algorithm("HS256".into()))
        );
        assert_eq!(
            screen(&t(serde_json::json!({"alg": "ES256", "crit": ["exp"]}))).err(),
            Some(TokenError::Critical)
        );
        assert_eq!(
            screen(&t(
                serde_json::json!({"alg": "RS256", "jku": "https://evil/keys"})
            ))
            .err(),
            Some(TokenError::EmbeddedKey)
        );
        assert_eq!(
            screen(&t(serde_json::json!({"alg": "RS256", "jwk": {"kty": "RSA"}}))).err(),
            Some(TokenError::EmbeddedKey)
        );
        assert!(screen(&t(serde_json::json!({"alg": "ES256", "kid": "k"}))).is_ok());
        assert_eq!(screen("a.b").err(), Some(TokenError::Malformed));
        assert_eq!(screen("!!.b.c").err(), Some(TokenError::Malformed));
    }
}
