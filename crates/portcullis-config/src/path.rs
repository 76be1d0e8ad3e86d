//! Request path normalization. Every request gets exactly one normalized path, used for
//! routing, for authorization and in the request sent upstream, so that no two parts
//! of the gateway (or the gateway and a backend) can read the same request differently.
//!
//! The rules, after RFC 3986 section 6: percent-encoded unreserved characters are
//! decoded, other percent-encodings are kept with upper-case hex, `//` collapses to `/`,
//! and `.` and `..` segments are resolved. Anything a backend could read two ways is
//! refused instead: an encoded slash or backslash, a raw backslash, NUL (raw or
//! encoded), broken percent-encoding, and `..` that climbs above the root.

use std::borrow::Cow;

/// Why a path was refused (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (only origin-form paths are routed).
    #[error("the path does not start with /")]
    NotAbsolute,
    /// `%2F` or `%5C`: a backend may decode it into a separator the gateway never saw.
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    /// A raw `\`, which some backends treat as `/`.
    #[error("the path contains a backslash")]
    Backslash,
    /// NUL, raw or as `%00`.
    #[error("the path contains NUL")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("the path has malformed percent-encoding")]
    BadEncoding,
    /// `..` would leave the root.
    #[error("the path climbs above the root with ..")]
    AboveRoot,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes the path part of a request target (without the query).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes)? {
        return Ok(Cow::Borrowed(raw));
    }
    // Pass 1: percent-decoding of unreserved characters, refusals.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (hi, lo) = match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => (hi, lo),
                _ => return Err(PathError::BadEncoding),
            };
            let v = hi << 4 | lo;
            match v {
                0 => return Err(PathError::Nul),
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                v if is_unreserved(v) => decoded.push(v as char),
                v => push_encoded(&mut decoded, v),
            }
            i += 3;
        } else if b.is_ascii() {
            decoded.push(char::from(b));
            i += 1;
        } else {
            // Raw UTF-8 (which the http crate lets through) becomes the percent-encoded
            // form browsers send, so `/café` and `/caf%C3%A9` are one path.
            push_encoded(&mut decoded, b);
            i += 1;
        }
    }
    // Pass 2: segments.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in &out {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// `%XX` with upper-case hex.
fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 15)]));
}

/// Checks for refused bytes and tells whether the slow path is needed.
fn needs_work(bytes: &[u8]) -> Result<bool, PathError> {
    let mut work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'%' => work = true,
            b'/' if i > 0 && bytes[i - 1] == b'/' => work = true,
            b'.' if bytes[i - 1] == b'/' => work = true,
            b if !b.is_ascii() => work = true,
            _ => {}
        }
    }
    Ok(work)
}

/// The form of a normalized path that routing and authorization match on: each
/// segment's `;parameters` (RFC 3986 section 3.3) removed, then normalized again.
///
/// Servlet containers and others drop path parameters before routing, so
/// `/admin;x` is `/admin` to them and `/public/..;/admin` is `/admin`. Matching on
/// this form means a backend can never be reached through a path it reads as a
/// route the gateway would have decided differently. The request still goes upstream
/// with its parameters.
pub fn without_parameters(normalized: &str) -> Result<Cow<'_, str>, PathError> {
    if !normalized.contains(';') {
        return Ok(Cow::Borrowed(normalized));
    }
    let mut stripped = String::with_capacity(normalized.len());
    for segment in normalized.split('/').skip(1) {
        stripped.push('/');
        stripped.push_str(segment.split_once(';').map_or(segment, |(name, _)| name));
    }
    Ok(Cow::Owned(normalize(&stripped)?.into_owned()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn raw_non_ascii_is_percent_encoded() {
        assert_eq!(normalize("/café").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/日本/./x").unwrap(), "/%E6%97%A5%E6%9C%AC/x");
    }

    #[test]
    fn path_parameters_are_dropped_for_matching() {
        for (path, matched) in [
            ("/admin", "/admin"),
            ("/admin;x", "/admin"),
            ("/admin;x=1/users", "/admin/users"),
            ("/app;jsessionid=AB12/page", "/app/page"),
            ("/public/..;/admin", "/admin"),
            ("/a/;x/b", "/a/b"),
            ("/;x", "/"),
            ("/a%3Bb", "/a%3Bb"),
        ] {
            assert_eq!(without_parameters(path).unwrap(), matched, "{path}");
        }
        assert_eq!(without_parameters("/..;/x"), Err(PathError::AboveRoot));
    }
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c-d_e~f",
            "/a;b=c",
            "/a/.hidden",
            "/a/b..c",
        ] {
            assert_eq!(n(p).as_deref(), Ok(p), "{p}");
        }
        assert!(matches!(normalize("/a/b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_and_double_slashes() {
        assert_eq!(n("/a/./b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a/../b").as_deref(), Ok("/b"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(n("//a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/a/..").as_deref(), Ok("/"));
        assert_eq!(n("/.").as_deref(), Ok("/"));
    }

    #[test]
    fn unreserved_percent_encodings_are_decoded() {
        assert_eq!(n("/%61%62c").as_deref(), Ok("/abc"));
        assert_eq!(n("/a/%2e%2e/b").as_deref(), Ok("/b"));
        assert_eq!(n("/a/%2E/b").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(n("/a%3fb").as_deref(), Ok("/a%3Fb"));
        // Encoded percent stays encoded: the backend decodes it once, to a literal "%2F".
        assert_eq!(n("/a%252Fb").as_deref(), Ok("/a%252Fb"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00b"), Err(PathError::Nul));
        assert_eq!(n("/a\0b"), Err(PathError::Nul));
        assert_eq!(n("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(n("/a%2"), Err(PathError::BadEncoding));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/etc/passwd"), Err(PathError::AboveRoot));
    }

    #[test]
    fn normalization_is_idempotent() {
        for p in ["/a/./b/../c//d/", "/%7euser/%41", "/x/%2e/y%20z", "/a/b/..", "//"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }
}
