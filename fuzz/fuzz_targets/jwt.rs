//! JWT screening and verification (`portcullis::auth::jwt`): `screen`, then
//! `find_key` in a fixed key set, then `verify`, the path every bearer token and ID
//! token takes.
//!
//! Two kinds of input:
//! - raw token text: must never panic and never verify (the fuzzer holds no key);
//! - tokens the harness signs itself with the key set's Ed25519 or P-256 key, from a
//!   fuzzed header and fuzzed claims (or raw header/payload bytes), so the header
//!   screening and claim checks behind the signature get exercised too.
//!
//! Checks: no panics; `screen` refuses every algorithm outside the allowlist, `crit`,
//! and embedded keys/key URLs; a token that verifies has the expected issuer, one of
//! the expected audiences, a `sub`, an `exp` not in the past (beyond the leeway),
//! the required `typ`, and was signed with a key that fits its `alg`.
#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portcullis::auth::jwt::{find_key, screen, verify, Expect, TokenError, ALGORITHMS, LEEWAY_SECONDS};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Map, Value};

const ISSUER: &str = "https://idp.example.com";

struct Keys {
    ed: Ed25519KeyPair,
    ec: EcdsaKeyPair,
    set: JwkSet,
    rng: SystemRandom,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("ed25519 seed");
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("p256");
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("p256 pkcs8");
        let point = ec.public_key().as_ref();
        assert_eq!(point.len(), 65);
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        // Not a real RSA key: only there so RSA algorithms find a key of their type.
        let modulus: Vec<u8> = (0..256u32).map(|i| (i * 37 + 11) as u8 | 0x80).collect();
        let set = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "use": "sig",
             "x": b64(&point[1..33]), "y": b64(&point[33..])},
            {"kty": "RSA", "kid": "rsa", "n": b64(&modulus), "e": "AQAB"},
        ]});
        Keys {
            ed,
            ec,
            set: serde_json::from_value(set).expect("fixed JWKS"),
            rng,
        }
    })
}

const ALGS: &[&str] = &[
    "EdDSA", "ES256", "ES384", "RS256", "PS256", "HS256", "none", "None", "es256", "",
];
const KIDS: &[&str] = &["ed", "ec", "rsa", "unknown", ""];
const TYPS: &[&str] = &["JWT", "at+jwt", "application/at+JWT", "jwt", "JOSE"];

#[derive(Debug, Arbitrary)]
struct Header {
    alg: u8,
    kid: Option<u8>,
    typ: Option<u8>,
    crit: bool,
    /// 0: none, 1: jwk, 2: jku, 3: x5u, 4: x5c
    embedded: u8,
}

#[derive(Debug, Arbitrary)]
enum Aud {
    Missing,
    One(bool),
    Many(Vec<bool>),
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Claims {
    /// 0: ours, 1: another, 2: missing, 3: a number
    iss: u8,
    aud: Aud,
    /// Seconds from now.
    exp: Option<i32>,
    nbf: Option<i32>,
    iat: Option<i32>,
    sub: Option<String>,
    extra: Vec<(String, String)>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(String),
    Signed { header: Header, claims: Claims, ec: bool, typ: Option<u8> },
    SignedBytes { header: Vec<u8>, payload: Vec<u8>, ec: bool },
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn header_json(h: &Header) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("alg".into(), ALGS[usize::from(h.alg) % ALGS.len()].into());
    if let Some(k) = h.kid {
        m.insert("kid".into(), KIDS[usize::from(k) % KIDS.len()].into());
    }
    if let Some(t) = h.typ {
        m.insert("typ".into(), TYPS[usize::from(t) % TYPS.len()].into());
    }
    if h.crit {
        m.insert("crit".into(), json!(["exp"]));
    }
    match h.embedded % 5 {
        1 => m.insert("jwk".into(), json!({"kty": "OKP"})),
        2 => m.insert("jku".into(), "https://evil.example/keys".into()),
        3 => m.insert("x5u".into(), "https://evil.example/cert".into()),
        4 => m.insert("x5c".into(), json!(["MIIB"])),
        _ => None,
    };
    Value::Object(m).to_string().into_bytes()
}

fn claims_json(c: &Claims) -> Vec<u8> {
    let now = now();
    let mut m = Map::new();
    for (k, v) in &c.extra {
        m.insert(k.clone(), v.clone().into());
    }
    match c.iss % 4 {
        0 => m.insert("iss".into(), ISSUER.into()),
        1 => m.insert("iss".into(), "https://evil.example.com".into()),
        3 => m.insert("iss".into(), 7.into()),
        _ => m.remove("iss"),
    };
    match &c.aud {
        Aud::Missing => m.remove("aud"),
        Aud::One(ours) => m.insert("aud".into(), if *ours { "gw" } else { "other" }.into()),
        Aud::Many(v) => m.insert(
            "aud".into(),
            v.iter().map(|ours| if *ours { "api" } else { "x" }).collect::<Vec<_>>().into(),
        ),
        Aud::Other(s) => m.insert("aud".into(), s.clone().into()),
    };
    for (name, offset) in [("exp", c.exp), ("nbf", c.nbf), ("iat", c.iat)] {
        match offset {
            Some(o) => m.insert(name.into(), (now + i64::from(o)).into()),
            None => m.remove(name),
        };
    }
    match &c.sub {
        Some(s) => m.insert("sub".into(), s.clone().into()),
        None => m.remove("sub"),
    };
    Value::Object(m).to_string().into_bytes()
}

fn sign(header: &[u8], payload: &[u8], ec: bool) -> String {
    let k = keys();
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let sig = if ec {
        k.ec.sign(&k.rng, input.as_bytes()).expect("sign").as_ref().to_vec()
    } else {
        k.ed.sign(input.as_bytes()).as_ref().to_vec()
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn check(token: &str, typ: Option<&str>, forged: bool) {
    let k = keys();
    let audiences = ["gw".to_string(), "api".to_string()];
    let expect = Expect { issuer: ISSUER, audiences: &audiences, typ };
    let (header, alg) = match screen(token) {
        Ok(ok) => ok,
        Err(TokenError::Algorithm(a)) => {
            assert!(!ALGORITHMS.iter().any(|x| format!("{x:?}") == a), "{a:?} refused");
            return;
        }
        Err(_) => return,
    };
    assert!(ALGORITHMS.contains(&alg));
    assert!(!matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
    let Ok(key) = find_key(&k.set, &header, alg) else {
        return;
    };
    if let Some(kid) = &header.kid {
        assert_eq!(key.common.key_id.as_deref(), Some(kid.as_str()));
    }
    let Ok(claims) = verify(token, &header, alg, key, &expect) else {
        return;
    };
    assert!(!forged, "a token the fuzzer made up verified: {token:?}");
    // What a verified token must say.
    let kid = key.common.key_id.as_deref();
    assert!(
        (alg == Algorithm::EdDSA && kid == Some("ed")) || (alg == Algorithm::ES256 && kid == Some("ec")),
        "{alg:?} verified with key {kid:?}"
    );
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER), "{claims}");
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(v)) => v.iter().any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    assert!(aud_ok, "{claims}");
    assert!(claims.get("sub").is_some(), "{claims}");
    let exp = claims.get("exp").and_then(Value::as_f64).expect("exp");
    assert!(exp + LEEWAY_SECONDS as f64 + 5.0 >= now() as f64, "expired token verified: {claims}");
    if let Some(t) = typ {
        let found = header.typ.as_deref().unwrap_or_default().to_ascii_lowercase();
        assert_eq!(
            found.trim_start_matches("application/"),
            t.to_ascii_lowercase().trim_start_matches("application/")
        );
    }
}

/// Inputs starting with `T:` are raw token text (so seeds can be written by hand);
/// anything else is read with `arbitrary`.
fn read(data: &[u8]) -> Option<Input> {
    match data.strip_prefix(b"T:") {
        Some(token) => Some(Input::Raw(String::from_utf8_lossy(token).into_owned())),
        None => Unstructured::new(data).arbitrary().ok(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = read(data) else {
        return;
    };
    match input {
        Input::Raw(token) => check(&token, None, true),
        Input::Signed { header, claims, ec, typ } => {
            let token = sign(&header_json(&header), &claims_json(&claims), ec);
            let typ = typ.map(|t| TYPS[usize::from(t) % TYPS.len()]);
            check(&token, typ, false);
        }
        Input::SignedBytes { header, payload, ec } => {
            check(&sign(&header, &payload, ec), None, false);
        }
    }
});
