//! Sealed session and login cookies (`portcullis::auth::session`).
//!
//! Checks:
//! - `Sealer::open` of arbitrary text never panics and never opens (a fuzzer cannot
//!   forge AES-GCM; anything it opens would be a bug);
//! - `cookies` / `read_chunked` of arbitrary `Cookie` headers never panic;
//! - `Sealer::new` of arbitrary key material never panics;
//! - round trip: a sealed `Session` opens to the same value, also with a rotated key
//!   list that holds the sealing key second; it does not open as a login cookie, nor
//!   after any single byte of it is changed; split into cookies by `set_chunked` and
//!   sent back, `read_chunked` joins exactly the sealed value again.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use portcullis::auth::session::{
    cookies, read_chunked, set_chunked, LoginAttempt, Purpose, Sealer, Session, SESSION_COOKIE,
};

struct Sealers {
    /// Seals with key A.
    a: Sealer,
    /// Seals with key B, opens with B and A (after a rotation).
    rotated: Sealer,
}

fn sealers() -> &'static Sealers {
    static SEALERS: OnceLock<Sealers> = OnceLock::new();
    SEALERS.get_or_init(|| {
        let a = STANDARD.encode([0xA5u8; 32]).into_bytes();
        let b = STANDARD.encode([0x5Au8; 32]).into_bytes();
        Sealers {
            a: Sealer::new(&[a.clone()]).expect("fixed key"),
            rotated: Sealer::new(&[b, a]).expect("fixed keys"),
        }
    })
}

#[derive(Debug, Arbitrary)]
struct FuzzSession {
    p: String,
    sub: String,
    email: Option<String>,
    email_verified: bool,
    groups: Vec<String>,
    name: Option<String>,
    claims: BTreeMap<String, Vec<String>>,
    exp: i64,
    tokens_exp: i64,
    refresh_token: Option<String>,
    host: String,
}

impl From<FuzzSession> for Session {
    fn from(f: FuzzSession) -> Session {
        Session {
            p: f.p,
            sub: f.sub,
            email: f.email,
            email_verified: f.email_verified,
            groups: f.groups,
            name: f.name,
            claims: f.claims,
            exp: f.exp,
            tokens_exp: f.tokens_exp,
            refresh_token: f.refresh_token,
            host: f.host,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// Arbitrary cookie text to open.
    Open(String),
    /// Arbitrary `Cookie` header values.
    Headers(Vec<Vec<u8>>),
    /// Arbitrary session keys.
    Keys(Vec<Vec<u8>>),
    /// Seal, then open, tamper, chunk.
    RoundTrip(FuzzSession, u16, u8),
}

/// `O:<text>` opens text, `C:<line>\n<line>...` sends each line as a `Cookie`
/// header (so seeds can be written by hand); anything else is read with `arbitrary`.
fn read(data: &[u8]) -> Option<Input> {
    if let Some(text) = data.strip_prefix(b"O:") {
        return Some(Input::Open(String::from_utf8_lossy(text).into_owned()));
    }
    if let Some(lines) = data.strip_prefix(b"C:") {
        return Some(Input::Headers(lines.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect()));
    }
    Unstructured::new(data).arbitrary().ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = read(data) else {
        return;
    };
    let s = sealers();
    match input {
        Input::Open(text) => {
            for sealer in [&s.a, &s.rotated] {
                assert!(sealer.open::<Session>(Purpose::Session, &text).is_none(), "{text:?} opened");
                assert!(sealer.open::<LoginAttempt>(Purpose::Login, &text).is_none(), "{text:?} opened");
                assert!(sealer.open::<serde_json::Value>(Purpose::Session, &text).is_none(), "{text:?} opened");
            }
        }
        Input::Headers(values) => {
            let mut headers = HeaderMap::new();
            for v in values {
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    headers.append(COOKIE, v);
                }
            }
            let _ = cookies(&headers);
            if let Some(v) = read_chunked(&headers, SESSION_COOKIE) {
                let _ = s.a.open::<Session>(Purpose::Session, &v);
            }
        }
        Input::Keys(keys) => {
            if let Ok(sealer) = Sealer::new(&keys) {
                let _ = sealer.seal(Purpose::Login, &"x");
                let _ = sealer.open::<String>(Purpose::Login, "AQ");
            }
        }
        Input::RoundTrip(session, at, flip) => {
            let session: Session = session.into();
            let sealed = s.a.seal(Purpose::Session, &session).expect("seal");
            assert_eq!(s.a.open::<Session>(Purpose::Session, &sealed).as_ref(), Some(&session));
            assert_eq!(s.rotated.open::<Session>(Purpose::Session, &sealed).as_ref(), Some(&session));
            assert!(s.a.open::<Session>(Purpose::Login, &sealed).is_none(), "purpose not bound");

            // Change one byte of the sealed data.
            let mut raw = URL_SAFE_NO_PAD.decode(&sealed).expect("sealed is base64url");
            let i = usize::from(at) % raw.len();
            raw[i] ^= flip.max(1);
            let tampered = URL_SAFE_NO_PAD.encode(&raw);
            assert!(
                s.rotated.open::<Session>(Purpose::Session, &tampered).is_none(),
                "byte {i} changed and the cookie still opens"
            );

            // Through Set-Cookie and back; the empty chunks are deletions a browser
            // does not send back.
            if sealed.len() <= 8 * 3600 {
                let pairs: Vec<String> = set_chunked(SESSION_COOKIE, &sealed, 3600)
                    .into_iter()
                    .filter_map(|c| c.split("; ").next().map(str::to_string))
                    .filter(|kv| !kv.ends_with('='))
                    .collect();
                let mut headers = HeaderMap::new();
                headers.append(COOKIE, HeaderValue::from_str("theme=dark").unwrap());
                headers.append(COOKIE, HeaderValue::from_str(&pairs.join("; ")).expect("header"));
                assert_eq!(read_chunked(&headers, SESSION_COOKIE).as_deref(), Some(sealed.as_str()));
            }
        }
    }
});
