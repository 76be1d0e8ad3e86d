//! Sealed cookies: sessions and login attempts, encrypted and authenticated with
//! AES-256-GCM under the configured session keys. The first key seals; every key opens,
//! so keys rotate without logging anyone out. Each kind of cookie has its own
//! associated data, so one can never be replayed as the other. Nothing is stored on the
//! server: any replica opens any cookie.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Name of the session cookie; larger sessions are split into `NAME.1`, `NAME.2`...
pub const SESSION_COOKIE: &str = "__Host-portcullis-session";
/// Name of the cookie that binds a login attempt (state, nonce, PKCE) to the browser.
pub const LOGIN_COOKIE: &str = "__Host-portcullis-login";
/// Browsers keep about 4 KiB per cookie; stay well below.
const CHUNK: usize = 3600;
/// At most this many chunks are read back.
const MAX_CHUNKS: usize = 8;
const VERSION: u8 = 1;

/// What a sealed cookie holds.
#[derive(Clone, Copy)]
pub enum Purpose {
    Session,
    Login,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"portcullis session v1",
            Purpose::Login => b"portcullis login v1",
        }
    }
}

/// A session key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Session keys are 32 bytes, base64-encoded.
    #[error("session key {index} is not 32 bytes of base64 ({detail})")]
    Invalid { index: usize, detail: String },
}

/// Seals and opens cookie values.
pub struct Sealer {
    keys: Vec<LessSafeKey>,
    random: SystemRandom,
}

impl Sealer {
    /// Keys as configured: base64 (standard or URL-safe) of 32 bytes each.
    pub fn new(keys: &[Vec<u8>]) -> Result<Sealer, KeyError> {
        let mut sealed = Vec::new();
        for (index, text) in keys.iter().enumerate() {
            let text = String::from_utf8_lossy(text);
            let text = text.trim();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|e| KeyError::Invalid {
                    index,
                    detail: e.to_string(),
                })?;
            let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| KeyError::Invalid {
                index,
                detail: format!("{} bytes", raw.len()),
            })?;
            sealed.push(LessSafeKey::new(key));
        }
        Ok(Sealer {
            keys: sealed,
            random: SystemRandom::new(),
        })
    }

    pub fn random_token(&self) -> String {
        let mut bytes = [0u8; 32];
        // The OS random source does not fail on supported platforms; an all-zero value
        // would still be unguessable by nobody, so refuse to continue instead.
        if self.random.fill(&mut bytes).is_err() {
            panic!("the operating system's random number generator failed");
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> Option<String> {
        let key = self.keys.first()?;
        let mut buf = serde_json::to_vec(value).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.aad()),
            &mut buf,
        )
        .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a sealed value with any configured key; `None` when it is forged,
    /// tampered, sealed for another purpose or by an unknown key.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, text: &str) -> Option<T> {
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        if raw.len() < 1 + NONCE_LEN + 16 || raw[0] != VERSION {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().ok()?;
        for key in &self.keys {
            let mut buf = raw[1 + NONCE_LEN..].to_vec();
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.aad()),
                &mut buf,
            ) {
                return serde_json::from_slice(plain).ok();
            }
        }
        None
    }
}

/// A signed-in user, as kept in the session cookie.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Provider name.
    pub p: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other claims of the ID token, for `require-claims`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, Vec<String>>,
    /// Absolute end of the session (Unix seconds), whatever refreshes happen.
    pub exp: i64,
    /// When the provider's tokens expire: past this, refresh (or sign in again).
    pub tokens_exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The host the session was issued for (cookies are host-only already; this
    /// refuses a cookie copied to another host).
    pub host: String,
}

/// A login in progress, bound to the browser that started it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginAttempt {
    pub provider: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Where to go after login: a path on this host, or an allowlisted URL.
    pub rd: String,
    pub host: String,
    pub exp: i64,
}

/// The values of the cookies named `name`, `name.1`, ... joined, from `Cookie` headers.
/// The first cookie of each name counts; reading stops at the first missing chunk. A
/// value that fits one cookie is borrowed from the headers, not copied.
pub fn read_chunked<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<Cow<'h, str>> {
    let mut chunks: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    for (k, v) in cookie_pairs(headers) {
        let Some(rest) = k.strip_prefix(name) else {
            continue;
        };
        // `name`, or `name.N` with N written as set_chunked writes it.
        let index = match rest.strip_prefix('.') {
            None if rest.is_empty() => 0,
            Some(n) if !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()) => {
                match n.parse::<usize>() {
                    Ok(i) if i < MAX_CHUNKS => i,
                    _ => continue,
                }
            }
            _ => continue,
        };
        chunks[index].get_or_insert(v);
    }
    let first = chunks[0]?;
    if chunks[1].is_none() {
        return Some(Cow::Borrowed(first));
    }
    let mut value = String::from(first);
    chunks[1..]
        .iter()
        .map_while(|c| *c)
        .for_each(|c| value.push_str(c));
    Some(Cow::Owned(value))
}

/// All cookies of a request as (name, value), in order, borrowed from the headers.
/// A `Cookie` field that is not visible ASCII is skipped whole: browsers never send one.
pub fn cookie_pairs(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// `Set-Cookie` values that store `value` under `name` (split into chunks when
/// large) and expire chunks a previous, larger value left behind.
pub fn set_chunked(name: &str, value: &str, max_age: i64) -> Vec<String> {
    let mut out = Vec::new();
    let chunks: Vec<&str> = value
        .as_bytes()
        .chunks(CHUNK)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let cookie_name = if i == 0 {
            name.to_string()
        } else {
            format!("{name}.{i}")
        };
        out.push(cookie(&cookie_name, chunk, max_age));
    }
    for i in chunks.len().max(1)..MAX_CHUNKS {
        out.push(cookie(&format!("{name}.{i}"), "", 0));
    }
    out
}

/// `Set-Cookie` values that delete `name` and its chunks.
pub fn clear_chunked(name: &str) -> Vec<String> {
    let mut out = vec![cookie(name, "", 0)];
    for i in 1..MAX_CHUNKS {
        out.push(cookie(&format!("{name}.{i}"), "", 0));
    }
    out
}

/// A host-only cookie: `__Host-` names require Secure, Path=/ and no Domain.
pub fn cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode([byte; 32])
            .into_bytes()
    }

    #[test]
    fn seal_open_and_rotation() {
        let old = Sealer::new(&[key(1)]).unwrap();
        let sealed = old.seal(Purpose::Session, &"alice").unwrap();
        assert_eq!(
            old.open::<String>(Purpose::Session, &sealed).as_deref(),
            Some("alice")
        );
        // A new first key still opens what the old one sealed.
        let rotated = Sealer::new(&[key(2), key(1)]).unwrap();
        assert_eq!(
            rotated.open::<String>(Purpose::Session, &sealed).as_deref(),
            Some("alice")
        );
        // A gateway without the old key does not.
        let foreign = Sealer::new(&[key(2)]).unwrap();
        assert_eq!(foreign.open::<String>(Purpose::Session, &sealed), None);
        // Sealed for logins, never opens as a session.
        let login = old.seal(Purpose::Login, &"alice").unwrap();
        assert_eq!(old.open::<String>(Purpose::Session, &login), None);
    }

    #[test]
    fn tampering_is_detected() {
        let s = Sealer::new(&[key(1)]).unwrap();
        let sealed = s.seal(Purpose::Session, &"alice").unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(
            s.open::<String>(Purpose::Session, &URL_SAFE_NO_PAD.encode(&raw)),
            None
        );
        assert_eq!(s.open::<String>(Purpose::Session, "garbage"), None);
        assert_eq!(s.open::<String>(Purpose::Session, ""), None);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Sealer::new(&[b"short".to_vec()]).is_err());
        assert!(Sealer::new(&[base64::engine::general_purpose::STANDARD
            .encode([0u8; 16])
            .into_bytes()])
        .is_err());
    }

    #[test]
    fn chunked_cookies_are_read_in_order_and_stop_at_a_gap() {
        let read = |cookies: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for c in cookies {
                headers.append(http::header::COOKIE, c.parse().unwrap());
            }
            read_chunked(&headers, "s").map(|v| (v.to_string(), matches!(v, Cow::Borrowed(_))))
        };
        // One cookie: borrowed from the header, not copied.
        assert_eq!(read(&["a=1; s=one; b=2"]), Some(("one".into(), true)));
        // Chunks in any order and across headers; the first of each name counts.
        assert_eq!(
            read(&["s.2=c; s=a", "s.1=b; s=x; s.1=y"]),
            Some(("abc".into(), false))
        );
        // A missing chunk ends the value; names that only start with `s` are others.
        assert_eq!(
            read(&["s=a; s.2=c; s.x=1; sx=2; s.=3; s.01=4; s.+1=5; s.8=6"]),
            Some(("a".into(), true))
        );
        assert_eq!(read(&["s.1=b"]), None);
        assert_eq!(read(&[]), None);
    }

    #[test]
    fn large_values_are_chunked_and_read_back() {
        let value = "v".repeat(8000);
        let set = set_chunked(SESSION_COOKIE, &value, 60);
        assert!(
            set[0].starts_with("__Host-portcullis-session=")
                && set[0].contains("Secure; HttpOnly; SameSite=Lax")
        );
        let header = set
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap())
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, header.parse().unwrap());
        assert_eq!(
            read_chunked(&headers, SESSION_COOKIE).as_deref(),
            Some(value.as_str())
        );
    }
}
