//! Password files for HTTP Basic authentication, as ingress-nginx reads them for
//! `nginx.ingress.kubernetes.io/auth-type: basic`: either one htpasswd file under the
//! Secret key `auth` (`auth-secret-type: auth-file`, the default) or one Secret key per
//! user whose value is that user's hash (`auth-secret-type: auth-map`). Only hashes
//! that are still defensible are accepted — bcrypt (`$2y$`, `$2a$`, `$2b$`), Apache
//! MD5 (`$apr1$`) and `{SHA}` for old files — and a file holding plaintext or DES
//! crypt(3) entries is refused as a whole, with the line at fault. Errors name the
//! line or key and the user, never the hash. Pure: the caller passes in the bytes.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use md5::{Digest, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The highest bcrypt cost accepted. Apache's `htpasswd -B -C` stops at 17 too; each
/// step doubles the work of every request, so a larger value is a mistake that would
/// turn each login attempt into seconds of CPU.
pub const MAX_BCRYPT_COST: u32 = 17;
/// The lowest cost the bcrypt algorithm defines.
const MIN_BCRYPT_COST: u32 = 4;

/// The alphabet of crypt(3)-style base64, shared by bcrypt, `$apr1$` and DES crypt.
const CRYPT_ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A parsed password file: user name to hash.
#[derive(Clone)]
pub struct Htpasswd {
    users: BTreeMap<String, Hash>,
    /// What an unknown user's password is checked against, so that "no such user"
    /// takes as long as "wrong password" and user names cannot be probed by timing.
    dummy: Hash,
}

/// One stored hash, validated when the file was read.
#[derive(Clone)]
enum Hash {
    /// The whole 60-character string, handed to the bcrypt crate as is.
    Bcrypt { hash: String, cost: u32 },
    /// `$apr1$SALT$DIGEST`: the salt and the 22-character encoded digest.
    Apr1 { salt: String, digest: String },
    /// `{SHA}` + base64 of the unsalted SHA-1 digest.
    Sha1([u8; 20]),
}

/// Where a problem is: a line of an htpasswd file or a key of an `auth-map` Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line number in the `auth` file.
    Line(usize),
    /// The Secret key (the user name) in an `auth-map` Secret.
    Key(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Key(k) => write!(f, "key {k:?}"),
        }
    }
}

/// Why a password file was refused. Never carries the hash or a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct HtpasswdError {
    pub at: Location,
    pub reason: Reason,
}

/// What is wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The line is not valid UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The line has no `:` between user and hash.
    #[error("expected user:hash")]
    NoSeparator,
    /// The user name is empty or holds control characters.
    #[error("the user name is empty or contains control characters")]
    BadUser,
    /// The hash field is empty.
    #[error("user {user:?} has an empty hash")]
    EmptyHash { user: String },
    /// The same user appears twice; which password wins would depend on the reader.
    #[error("user {user:?} appears again (first at {first})")]
    Duplicate { user: String, first: Location },
    /// A scheme that is recognised but refused, with why and what to use instead.
    #[error("user {user:?}: {why}")]
    Refused { user: String, why: &'static str },
    /// A supported scheme whose hash is cut short or holds characters it cannot hold.
    #[error("user {user:?}: {why}")]
    Malformed { user: String, why: &'static str },
}

impl Htpasswd {
    /// Parses an htpasswd file (`auth-secret-type: auth-file`, Secret key `auth`).
    ///
    /// Blank lines and lines starting with `#` are skipped; `\r\n` line ends are
    /// accepted. As in nginx, anything after a second `:` on a line is a comment.
    pub fn parse(file: &[u8]) -> Result<Htpasswd, HtpasswdError> {
        let mut entries = Vec::new();
        for (index, raw) in file.split(|b| *b == b'\n').enumerate() {
            let at = Location::Line(index + 1);
            let Ok(line) = std::str::from_utf8(raw) else {
                return Err(HtpasswdError {
                    at,
                    reason: Reason::NotUtf8,
                });
            };
            let line = line.trim_end();
            if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':') else {
                return Err(HtpasswdError {
                    at,
                    reason: Reason::NoSeparator,
                });
            };
            // nginx reads `user:hash:comment`; no accepted hash contains a colon.
            let hash = rest.split(':').next().unwrap_or_default();
            entries.push((at, user.to_string(), hash.to_string()));
        }
        Self::build(entries)
    }

    /// Parses an `auth-map` Secret: each key is a user, each value that user's hash.
    /// Surrounding whitespace in a value (a trailing newline from `kubectl create
    /// secret --from-file`) is ignored.
    pub fn from_map<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Htpasswd, HtpasswdError> {
        let mut parsed = Vec::new();
        for (user, value) in entries {
            let at = Location::Key(user.to_string());
            let Ok(hash) = std::str::from_utf8(value) else {
                return Err(HtpasswdError {
                    at,
                    reason: Reason::NotUtf8,
                });
            };
            parsed.push((at, user.to_string(), hash.trim().to_string()));
        }
        Self::build(parsed)
    }

    fn build(entries: Vec<(Location, String, String)>) -> Result<Htpasswd, HtpasswdError> {
        let mut users = BTreeMap::new();
        let mut seen: BTreeMap<String, Location> = BTreeMap::new();
        for (at, user, hash) in entries {
            if user.is_empty() || user.chars().any(char::is_control) {
                return Err(HtpasswdError {
                    at,
                    reason: Reason::BadUser,
                });
            }
            if let Some(first) = seen.get(&user) {
                return Err(HtpasswdError {
                    at,
                    reason: Reason::Duplicate {
                        user,
                        first: first.clone(),
                    },
                });
            }
            let parsed = Hash::parse(&user, &hash).map_err(|reason| HtpasswdError {
                at: at.clone(),
                reason,
            })?;
            seen.insert(user.clone(), at);
            users.insert(user, parsed);
        }
        let dummy = Hash::dummy_for(users.values());
        Ok(Htpasswd { users, dummy })
    }

    /// Whether `password` is `user`'s password. An unknown user costs the same work
    /// as a known one (a check against a dummy hash of the file's costliest scheme),
    /// and every comparison of digests is constant-time.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                // Spend the same effort, then refuse whatever the dummy said.
                let _ = self.dummy.verify(password);
                false
            }
        }
    }

    /// The user names, sorted.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// An empty file is valid and lets nobody in.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// No users: lets nobody in.
impl Default for Htpasswd {
    fn default() -> Self {
        let users = BTreeMap::new();
        let dummy = Hash::dummy_for(users.values());
        Htpasswd { users, dummy }
    }
}

/// Lists users and schemes only: hashes stay out of logs and debug output.
impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.users.iter().map(|(u, h)| (u, h.scheme())))
            .finish()
    }
}

impl Hash {
    fn parse(user: &str, hash: &str) -> Result<Hash, Reason> {
        let refused = |why| Reason::Refused {
            user: user.to_string(),
            why,
        };
        let malformed = |why| Reason::Malformed {
            user: user.to_string(),
            why,
        };
        if hash.is_empty() {
            return Err(Reason::EmptyHash {
                user: user.to_string(),
            });
        }
        if let Some(body) = ["$2y$", "$2a$", "$2b$"].iter().find_map(|p| hash.strip_prefix(p)) {
            return parse_bcrypt(hash, body).map_err(malformed);
        }
        if hash.starts_with("$2x$") {
            return Err(refused(
                "bcrypt $2x$ marks hashes made by a known-broken implementation; regenerate the entry with `htpasswd -B` (bcrypt)",
            ));
        }
        if let Some(body) = hash.strip_prefix("$apr1$") {
            return parse_apr1(body).map_err(malformed);
        }
        if let Some(encoded) = hash.strip_prefix("{SHA}") {
            let digest = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d).ok())
                .ok_or_else(|| malformed("a {SHA} hash is the base64 of 20 bytes (28 characters)"))?;
            return Ok(Hash::Sha1(digest));
        }
        if hash.starts_with("$1$") || hash.starts_with("$5$") || hash.starts_with("$6$") {
            return Err(refused(
                "glibc crypt(3) hashes ($1$, $5$, $6$) are not supported; regenerate the entry with `htpasswd -B` (bcrypt)",
            ));
        }
        if hash.starts_with("{SSHA}") || hash.starts_with("{PLAIN}") || hash.starts_with('$') {
            return Err(refused(
                "this hash scheme is not supported; regenerate the entry with `htpasswd -B` (bcrypt)",
            ));
        }
        if hash.len() == 13 && hash.bytes().all(|b| CRYPT_ALPHABET.contains(&b)) {
            return Err(refused(
                "DES crypt(3) is refused: it uses only the first 8 characters of a password and falls to brute force; regenerate the entry with `htpasswd -B` (bcrypt)",
            ));
        }
        Err(refused(
            "not a recognised hash; plaintext passwords are refused; regenerate the entry with `htpasswd -B` (bcrypt)",
        ))
    }

    fn scheme(&self) -> &'static str {
        match self {
            Hash::Bcrypt { .. } => "bcrypt",
            Hash::Apr1 { .. } => "apr1",
            Hash::Sha1(_) => "sha1",
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            // The crate compares digests with `subtle`; an error (which validation
            // at parse time rules out) is a refusal.
            Hash::Bcrypt { hash, .. } => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::Apr1 { salt, digest } => {
                let computed = apr1_digest(password, salt.as_bytes());
                computed.as_bytes().ct_eq(digest.as_bytes()).into()
            }
            Hash::Sha1(expected) => {
                let computed = Sha1::digest(password);
                computed.as_slice().ct_eq(expected).into()
            }
        }
    }

    /// A hash that matches no password and costs what the file's costliest entry
    /// costs: bcrypt at the highest cost present, else `$apr1$`, else SHA-1.
    fn dummy_for<'a>(hashes: impl Iterator<Item = &'a Hash>) -> Hash {
        let mut max_cost = None;
        let mut apr1 = false;
        for h in hashes {
            match h {
                Hash::Bcrypt { cost, .. } => max_cost = Some(max_cost.map_or(*cost, |m: u32| m.max(*cost))),
                Hash::Apr1 { .. } => apr1 = true,
                Hash::Sha1(_) => {}
            }
        }
        match max_cost {
            Some(cost) => Hash::Bcrypt {
                // Any well-formed salt and digest will do: only the work matters.
                hash: format!("$2y${cost:02}${}", ".".repeat(53)),
                cost,
            },
            None if apr1 => Hash::Apr1 {
                salt: "portcull".into(),
                digest: "//////////////////////".into(),
            },
            None => Hash::Sha1([0; 20]),
        }
    }
}

/// Checks a bcrypt hash completely, so that the crate never sees one it could
/// reject (or mis-slice) while serving requests.
fn parse_bcrypt(hash: &str, body: &str) -> Result<Hash, &'static str> {
    // body is `CC$` + 22 salt characters + 31 digest characters.
    if !hash.is_ascii() || hash.len() != 60 {
        return Err("a bcrypt hash is 60 characters (is it cut short?)");
    }
    let (cost, rest) = body.split_at(2);
    let cost: u32 = match cost.parse() {
        Ok(c) if cost.bytes().all(|b| b.is_ascii_digit()) => c,
        _ => return Err("the bcrypt cost is not two digits"),
    };
    if !(MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) {
        return Err("the bcrypt cost must be between 4 and 17");
    }
    let Some(salt_and_digest) = rest.strip_prefix('$') else {
        return Err("expected $ after the bcrypt cost");
    };
    // The crate decodes strictly at every check; decoding here moves any failure
    // from request time to load time.
    let bcrypt64 = base64::engine::GeneralPurpose::new(
        &base64::alphabet::BCRYPT,
        base64::engine::general_purpose::NO_PAD,
    );
    let (salt, digest) = salt_and_digest.split_at(22);
    let salt_ok = bcrypt64.decode(salt).is_ok_and(|s| s.len() == 16);
    let digest_ok = bcrypt64.decode(digest).is_ok_and(|d| d.len() == 23);
    if !salt_ok || !digest_ok {
        return Err("the bcrypt salt or digest is not valid bcrypt base64");
    }
    Ok(Hash::Bcrypt {
        hash: hash.to_string(),
        cost,
    })
}

fn parse_apr1(body: &str) -> Result<Hash, &'static str> {
    let Some((salt, digest)) = body.split_once('$') else {
        return Err("an $apr1$ hash is $apr1$SALT$DIGEST");
    };
    // Apache writes 8 salt characters and reads at most 8.
    if salt.is_empty() || salt.len() > 8 || !salt.bytes().all(|b| CRYPT_ALPHABET.contains(&b)) {
        return Err("the $apr1$ salt must be 1 to 8 characters of ./0-9A-Za-z");
    }
    if digest.len() != 22 || !digest.bytes().all(|b| CRYPT_ALPHABET.contains(&b)) {
        return Err("the $apr1$ digest is 22 characters of ./0-9A-Za-z (is it cut short?)");
    }
    Ok(Hash::Apr1 {
        salt: salt.to_string(),
        digest: digest.to_string(),
    })
}

/// Apache's MD5 crypt (`apr_md5_encode` in apr-util, which is Poul-Henning Kamp's
/// FreeBSD md5crypt with the magic `$apr1$`): 1000 rounds of MD5 over password and
/// salt, then crypt base64 of the 16 digest bytes in its peculiar order. Returns the
/// 22-character digest part of the hash.
fn apr1_digest(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(MAGIC)
        .chain_update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    // The historical quirk: for each bit of the length, a zero byte or the first
    // byte of the password.
    let mut bits = password.len();
    while bits != 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut ctx = Md5::new();
        if round % 2 == 1 {
            ctx.update(password);
        } else {
            ctx.update(digest);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        if round % 2 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(password);
        }
        digest = ctx.finalize();
    }
    let d = digest;
    let mut out = String::with_capacity(22);
    let mut put = |value: u32, chars: usize| {
        let mut v = value;
        for _ in 0..chars {
            out.push(char::from(CRYPT_ALPHABET[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]),
            4,
        );
    }
    put(u32::from(d[11]), 2);
    out
}

/// Splits the credentials of an `Authorization: Basic ...` header value (RFC 7617):
/// base64 of `user:password`, split at the first colon. `None` for any other scheme
/// or a value that does not decode; the user must be UTF-8, the password may be any
/// bytes.
pub fn basic_credentials(authorization: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(authorization).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with Apache htpasswd 2.4 (apache2-utils, Debian 12):
    //   htpasswd -nbB -C 5 alice 'correct horse'
    const ALICE_BCRYPT: &str = "$2y$05$gM42lr3zztrgpV0P6BHlv.iZGtgF/NMMd2NYG09aUrUvhNS.EFjMW";
    //   htpasswd -nbB -C 4 bob 's3cr3t!'
    const BOB_BCRYPT: &str = "$2y$04$ZCPFsZamuCby72B4uxNNoe8hY4di6kX7ALHTKeBhM2q8rgLxtX9Xe";
    //   htpasswd -nbB -C 4 helen 'ünïcødé'
    const HELEN_BCRYPT: &str = "$2y$04$oMCudN1iKmO/l6zPVQV.rOgSrS46VJW0.53t.hkwyomtDHpn.MFt2";
    //   htpasswd -nbm carol 'p@ss word'
    const CAROL_APR1: &str = "$apr1$Epf7gp3Y$vF95d1ApmWu2g4r/be.sQ1";
    //   htpasswd -nbm erin ''
    const ERIN_APR1_EMPTY: &str = "$apr1$Rtufnj4y$JR/gA247KY8jUPMfgTZpV.";
    //   htpasswd -nbm ivan 'a-much-longer-password-exceeding-the-usual-length-1234567890'
    const IVAN_APR1_LONG: &str = "$apr1$Z/xbNQnn$VWt/5IMOwqnq6xs8ClqkJ0";
    const IVAN_PASSWORD: &[u8] = b"a-much-longer-password-exceeding-the-usual-length-1234567890";
    //   htpasswd -nbs dave 'hunter2'
    const DAVE_SHA: &str = "{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=";
    //   htpasswd -nbd frank 'crypt1'   (DES crypt, refused)
    const FRANK_DES: &str = "EohfDi0Dy6npQ";

    fn file(lines: &[(&str, &str)]) -> Vec<u8> {
        lines
            .iter()
            .map(|(u, h)| format!("{u}:{h}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn err(text: &str) -> HtpasswdError {
        match Htpasswd::parse(text.as_bytes()) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bcrypt_entries_from_apache_htpasswd_verify() {
        let h = Htpasswd::parse(&file(&[
            ("alice", ALICE_BCRYPT),
            ("bob", BOB_BCRYPT),
            ("helen", HELEN_BCRYPT),
        ]))
        .unwrap();
        assert!(h.verify("alice", b"correct horse"));
        assert!(h.verify("bob", b"s3cr3t!"));
        assert!(h.verify("helen", "ünïcødé".as_bytes()));
        assert!(!h.verify("alice", b"correct horse "));
        assert!(!h.verify("alice", b"Correct horse"));
        assert!(!h.verify("alice", b""));
        assert!(!h.verify("bob", b"correct horse"));
    }

    #[test]
    fn bcrypt_2a_and_2b_prefixes_are_the_same_algorithm_for_these_passwords() {
        // $2a$, $2b$ and $2y$ differ only in how old implementations handled
        // non-ASCII and very long passwords; for an ASCII password the digest is the
        // same, so swapping the prefix of a real $2y$ hash yields a valid vector.
        for prefix in ["$2a$", "$2b$"] {
            let hash = format!("{prefix}{}", &ALICE_BCRYPT[4..]);
            let h = Htpasswd::parse(&file(&[("alice", &hash)])).unwrap();
            assert!(h.verify("alice", b"correct horse"), "{prefix}");
            assert!(!h.verify("alice", b"wrong"), "{prefix}");
        }
    }

    #[test]
    fn apr1_entries_from_apache_htpasswd_verify() {
        let h = Htpasswd::parse(&file(&[
            ("carol", CAROL_APR1),
            ("erin", ERIN_APR1_EMPTY),
            ("ivan", IVAN_APR1_LONG),
        ]))
        .unwrap();
        assert!(h.verify("carol", b"p@ss word"));
        assert!(!h.verify("carol", b"p@ss word2"));
        assert!(!h.verify("carol", b"p@ssword"));
        assert!(h.verify("erin", b""));
        assert!(!h.verify("erin", b" "));
        assert!(h.verify("ivan", IVAN_PASSWORD));
        assert!(!h.verify("ivan", &IVAN_PASSWORD[..IVAN_PASSWORD.len() - 1]));
    }

    #[test]
    fn apr1_digest_matches_apache_byte_for_byte() {
        assert_eq!(apr1_digest(b"p@ss word", b"Epf7gp3Y"), "vF95d1ApmWu2g4r/be.sQ1");
        assert_eq!(apr1_digest(b"", b"Rtufnj4y"), "JR/gA247KY8jUPMfgTZpV.");
    }

    #[test]
    fn sha_entries_from_apache_htpasswd_verify() {
        let h = Htpasswd::parse(&file(&[("dave", DAVE_SHA)])).unwrap();
        assert!(h.verify("dave", b"hunter2"));
        assert!(!h.verify("dave", b"hunter3"));
        assert!(!h.verify("dave", b""));
    }

    #[test]
    fn unknown_users_are_refused_even_with_a_known_users_password() {
        let h = Htpasswd::parse(&file(&[("alice", ALICE_BCRYPT), ("carol", CAROL_APR1)])).unwrap();
        assert!(!h.verify("mallory", b"correct horse"));
        assert!(!h.verify("Alice", b"correct horse"));
        assert!(!h.verify("", b""));
        assert!(!h.verify("alice", b"p@ss word"));
    }

    #[test]
    fn unknown_users_cost_a_check_of_the_costliest_scheme_in_the_file() {
        let h = Htpasswd::parse(&file(&[
            ("bob", BOB_BCRYPT),
            ("alice", ALICE_BCRYPT),
            ("dave", DAVE_SHA),
        ]))
        .unwrap();
        match &h.dummy {
            Hash::Bcrypt { hash, cost } => {
                assert_eq!(*cost, 5);
                // The dummy must be a hash the crate accepts, or it would cost nothing.
                assert!(parse_bcrypt(hash, &hash[4..]).is_ok());
                assert_eq!(bcrypt::verify(b"x", hash).ok(), Some(false));
            }
            _ => panic!("expected a bcrypt dummy"),
        }
        let h = Htpasswd::parse(&file(&[("carol", CAROL_APR1), ("dave", DAVE_SHA)])).unwrap();
        assert_eq!(h.dummy.scheme(), "apr1");
        assert!(parse_apr1("portcull$//////////////////////").is_ok());
        let h = Htpasswd::parse(&file(&[("dave", DAVE_SHA)])).unwrap();
        assert_eq!(h.dummy.scheme(), "sha1");
    }

    #[test]
    fn comments_blank_lines_crlf_and_nginx_comment_field_are_accepted() {
        let text = format!(
            "# team accounts\r\n\r\n   \nalice:{ALICE_BCRYPT}\r\n  # indented comment\ncarol:{CAROL_APR1}:ops on-call\n"
        );
        let h = Htpasswd::parse(text.as_bytes()).unwrap();
        assert_eq!(h.users().collect::<Vec<_>>(), ["alice", "carol"]);
        assert!(h.verify("alice", b"correct horse"));
        assert!(h.verify("carol", b"p@ss word"));
    }

    #[test]
    fn an_empty_file_is_valid_and_lets_nobody_in() {
        let h = Htpasswd::parse(b"\n# nobody yet\n").unwrap();
        assert!(h.is_empty());
        assert!(!h.verify("anyone", b""));
    }

    #[test]
    fn plaintext_and_des_entries_are_refused_naming_the_line() {
        let e = err(&format!("alice:{ALICE_BCRYPT}\ngina:plain\n"));
        assert_eq!(e.at, Location::Line(2));
        assert!(
            matches!(&e.reason, Reason::Refused { user, why } if user == "gina" && why.contains("plaintext"))
        );
        let e = err(&format!("# c\nfrank:{FRANK_DES}\n"));
        assert_eq!(e.at, Location::Line(2));
        assert!(e.to_string().contains("DES"), "{e}");
        for refused in [
            "{PLAIN}x",
            "{SSHA}abcd",
            "$1$salt$hash",
            "$6$salt$hash",
            "$2x$05$abc",
        ] {
            let e = err(&format!("u:{refused}"));
            assert!(matches!(e.reason, Reason::Refused { .. }), "{refused}: {e}");
        }
    }

    #[test]
    fn malformed_lines_are_refused_naming_the_line() {
        assert_eq!(
            err("# header\n\nnocolon\n"),
            HtpasswdError {
                at: Location::Line(3),
                reason: Reason::NoSeparator
            }
        );
        assert_eq!(err(&format!(":{ALICE_BCRYPT}")).reason, Reason::BadUser);
        assert_eq!(err("alice:\n").reason, Reason::EmptyHash { user: "alice".into() });
        let e = Htpasswd::parse(b"ok:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\n\xff\xfe:x\n").unwrap_err();
        assert_eq!(e.at, Location::Line(2));
        assert_eq!(e.reason, Reason::NotUtf8);
    }

    #[test]
    fn duplicate_users_are_refused() {
        let e = err(&format!(
            "alice:{ALICE_BCRYPT}\nbob:{BOB_BCRYPT}\nalice:{CAROL_APR1}\n"
        ));
        assert_eq!(e.at, Location::Line(3));
        assert_eq!(
            e.reason,
            Reason::Duplicate {
                user: "alice".into(),
                first: Location::Line(1)
            }
        );
    }

    #[test]
    fn truncated_and_corrupted_hashes_are_refused() {
        let cases = [
            &ALICE_BCRYPT[..59],
            &ALICE_BCRYPT[..30],
            "$2y$",
            &CAROL_APR1[..CAROL_APR1.len() - 1],
            "$apr1$Epf7gp3Y",
            "$apr1$$vF95d1ApmWu2g4r/be.sQ1",
            "$apr1$toolongsalt$vF95d1ApmWu2g4r/be.sQ1",
            &DAVE_SHA[..DAVE_SHA.len() - 2],
            "{SHA}not base64!",
            "{SHA}",
        ];
        for hash in cases {
            let e = err(&format!("u:{hash}\n"));
            assert!(matches!(e.reason, Reason::Malformed { .. }), "{hash}: {e}");
        }
        // A character outside the alphabet, and costs bcrypt cannot or should not use.
        let bad_char = format!("{}!{}", &ALICE_BCRYPT[..30], &ALICE_BCRYPT[31..]);
        let cost_3 = ALICE_BCRYPT.replacen("$05$", "$03$", 1);
        let cost_18 = ALICE_BCRYPT.replacen("$05$", "$18$", 1);
        let cost_text = ALICE_BCRYPT.replacen("$05$", "$+5$", 1);
        for hash in [bad_char, cost_3, cost_18, cost_text] {
            let e = err(&format!("u:{hash}\n"));
            assert!(matches!(e.reason, Reason::Malformed { .. }), "{hash}: {e}");
        }
    }

    #[test]
    fn errors_never_echo_the_hash() {
        let inputs = [
            format!("alice:{}", &ALICE_BCRYPT[..59]),
            format!("carol:{}", &CAROL_APR1[..30]),
            "gina:hunter2-in-plaintext".to_string(),
            format!("frank:{FRANK_DES}"),
            format!("dave:{}", &DAVE_SHA[..20]),
        ];
        for input in inputs {
            let e = err(&input);
            let hash = input.split_once(':').unwrap().1;
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains(hash), "{shown}");
            }
        }
        let h = Htpasswd::parse(&file(&[("alice", ALICE_BCRYPT)])).unwrap();
        assert!(!format!("{h:?}").contains(&ALICE_BCRYPT[7..]));
    }

    #[test]
    fn auth_map_secrets_have_one_key_per_user() {
        let map: BTreeMap<String, Vec<u8>> = [
            ("alice".to_string(), format!("{ALICE_BCRYPT}\n").into_bytes()),
            ("carol".to_string(), CAROL_APR1.as_bytes().to_vec()),
            ("dave".to_string(), DAVE_SHA.as_bytes().to_vec()),
        ]
        .into();
        let h = Htpasswd::from_map(map.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert!(h.verify("alice", b"correct horse"));
        assert!(h.verify("carol", b"p@ss word"));
        assert!(h.verify("dave", b"hunter2"));
        assert!(!h.verify("dave", b"correct horse"));
        assert_eq!(h.len(), 3);

        let e = Htpasswd::from_map([("gina", &b"plain"[..])]).unwrap_err();
        assert_eq!(e.at, Location::Key("gina".into()));
        assert!(e.to_string().starts_with("key \"gina\": user \"gina\""), "{e}");
        assert!(!e.to_string().contains("plain\""));
    }

    #[test]
    fn basic_credentials_are_split_at_the_first_colon() {
        use base64::engine::general_purpose::STANDARD;
        let header = format!("Basic {}", STANDARD.encode("alice:pa:ss"));
        assert_eq!(
            basic_credentials(header.as_bytes()),
            Some(("alice".to_string(), b"pa:ss".to_vec()))
        );
        let header = format!("basic  {}", STANDARD.encode("erin:"));
        assert_eq!(
            basic_credentials(header.as_bytes()),
            Some(("erin".into(), vec![]))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        let no_colon = format!("Basic {}", STANDARD.encode("alice"));
        assert_eq!(basic_credentials(no_colon.as_bytes()), None);
    }
}
