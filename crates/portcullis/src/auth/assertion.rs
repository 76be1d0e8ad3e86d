//! Identity assertions: a 60-second ES256 JWT, signed by the gateway, that tells a
//! backend who called (`X-Portcullis-Assertion`), so a backend can check the caller
//! itself instead of trusting a plain header. The public keys are served at
//! `/.portcullis/jwks.json` on every host. Replicas must share the key
//! (`oidc.assertionKey`); without one, each process generates its own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::json;

use super::Identity;

/// Lifetime of an assertion, in seconds.
pub const LIFETIME: i64 = 60;
/// `iss` of every assertion.
pub const ISSUER: &str = "portcullis";

pub struct Signer {
    key: EncodingKey,
    kid: String,
    jwks: String,
}

impl Signer {
    /// A key for this process only.
    pub fn generate() -> Result<Signer, String> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| "cannot generate an assertion key".to_string())?;
        Signer::from_pkcs8(pkcs8.as_ref())
    }

    /// A shared key: PKCS#8 PEM of an EC P-256 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Signer, String> {
        match PrivateKeyDer::from_pem_slice(pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => Signer::from_pkcs8(der.secret_pkcs8_der()),
            _ => Err("not a PKCS#8 PEM private key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)".into()),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<Signer, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
            .map_err(|e| format!("not an EC P-256 key: {e}"))?;
        let point = pair.public_key().as_ref();
        // Uncompressed point: 0x04 || x || y.
        if point.len() != 65 {
            return Err("unexpected public key encoding".into());
        }
        let (x, y) = (&point[1..33], &point[33..]);
        let digest = ring::digest::digest(&ring::digest::SHA256, point);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string();
        Ok(Signer {
            key: EncodingKey::from_ec_der(der),
            kid,
            jwks,
        })
    }

    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// An assertion of `identity` for the backend `audience` (`namespace/service`).
    pub fn sign(&self, identity: &Identity, audience: &str, now: i64) -> Option<String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let mut claims = json!({
            "iss": ISSUER,
            "aud": audience,
            "sub": identity.subject,
            "iat": now,
            "exp": now + LIFETIME,
            "idp": identity.provider,
            "amr": [identity.method.as_str()],
        });
        if let (Some(email), true) = (&identity.email, identity.email_verified) {
            claims["email"] = json!(email);
        }
        if !identity.groups.is_empty() {
            claims["groups"] = json!(identity.groups);
        }
        jsonwebtoken::encode(&header, &claims, &self.key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    #[test]
    fn assertions_verify_with_the_published_key() {
        let signer = Signer::generate().unwrap();
        let identity = Identity {
            provider: "corp".into(),
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            groups: vec!["dev".into()],
            name: None,
            claims: Default::default(),
            method: AuthMethod::Session,
            upstream_headers: Default::default(),
        };
        let token = signer.sign(&identity, "shop/cart", 1_900_000_000).unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(signer.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["shop/cart"]);
        v.set_issuer(&[ISSUER]);
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["groups"][0], "dev");
        assert_eq!(claims["exp"], 1_900_000_060);
        assert!(Signer::from_pem(b"not a key").is_err());
    }
}
