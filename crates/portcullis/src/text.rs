//! Text written by hand on the request path: addresses, timestamps and JSON. The
//! general machinery (`Display` on addresses, jiff's printer, serde's derived
//! serializers) costs hundreds to thousands of instructions per value, and the access
//! and audit logs write a dozen values for every request.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use serde::Serialize;

/// An address, or address and port, as text on the stack. `Display` for the std
/// address types goes through the formatting machinery (it supports padding), about
/// 1,500 instructions for an IPv4 address, which is what requests carry; IPv6, rarer,
/// still goes through `Display`.
pub struct AddrText {
    // At most "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535", 58 bytes.
    text: [u8; 64],
    len: usize,
}

impl AddrText {
    pub fn ip(ip: IpAddr) -> AddrText {
        match ip {
            IpAddr::V4(v4) => AddrText::ipv4(v4),
            IpAddr::V6(v6) => AddrText::display(&v6),
        }
    }

    /// `ip:port`, or `[ip]:port` for IPv6.
    pub fn socket(addr: SocketAddr) -> AddrText {
        match addr {
            SocketAddr::V4(a) => {
                let mut t = AddrText::ipv4(*a.ip());
                t.push(b':');
                t.decimal(a.port());
                t
            }
            SocketAddr::V6(a) => AddrText::display(&a),
        }
    }

    fn ipv4(ip: Ipv4Addr) -> AddrText {
        let mut t = AddrText {
            text: [0; 64],
            len: 0,
        };
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                t.push(b'.');
            }
            t.decimal(octet.into());
        }
        t
    }

    fn display(value: &dyn std::fmt::Display) -> AddrText {
        let mut t = AddrText {
            text: [0; 64],
            len: 0,
        };
        let mut rest = &mut t.text[..];
        // Always fits (see the longest above).
        let _ = write!(rest, "{value}");
        t.len = 64 - rest.len();
        t
    }

    pub fn as_str(&self) -> &str {
        // Digits, hex digits and punctuation only.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }

    fn push(&mut self, b: u8) {
        self.text[self.len] = b;
        self.len += 1;
    }

    fn decimal(&mut self, n: u16) {
        let mut digits = [0u8; 5];
        let mut start = digits.len();
        let mut n = n;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[start..] {
            self.push(d);
        }
    }
}

/// A JSON object written member by member. Names are the schema's own, plain ASCII
/// written as they are; values are escaped exactly as serde_json escapes them.
pub struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> JsonObject<'a> {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        json_string(self.out, value);
    }

    /// A string value known to need no escaping (digits and punctuation).
    pub fn plain(&mut self, name: &str, value: &[u8]) {
        self.name(name);
        self.out.push(b'"');
        self.out.extend_from_slice(value);
        self.out.push(b'"');
    }

    /// A number or a boolean, as serde_json writes it (shortest round-trip floats).
    pub fn json<T: Serialize>(&mut self, name: &str, value: &T) {
        self.name(name);
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    pub fn strings(&mut self, name: &str, values: &[String]) {
        self.name(name);
        self.out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            json_string(self.out, v);
        }
        self.out.push(b']');
    }

    pub fn object(&mut self, name: &str, members: impl FnOnce(&mut JsonObject<'_>)) {
        self.name(name);
        let mut inner = JsonObject::new(self.out);
        members(&mut inner);
        inner.end();
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// A JSON string: copied as it is when nothing in it needs escaping (the usual case),
/// otherwise escaped by serde_json.
pub fn json_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    // A fold without an early exit, which the compiler turns into wide compares.
    let needs_escaping = bytes
        .iter()
        .fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escaping {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// RFC 3339 in UTC, written by hand: every request is stamped (jiff's printer cost
/// about 1,200 instructions). `millis` is the audit log's `2026-11-27T04:15:06.123Z`,
/// `micros` the logs' `2026-11-27T04:15:06.123456Z` (tracing's format).
pub struct Rfc3339 {
    text: [u8; 27],
    len: usize,
}

impl Rfc3339 {
    pub fn millis(time: SystemTime) -> Rfc3339 {
        Rfc3339::new(time, 3)
    }

    pub fn micros(time: SystemTime) -> Rfc3339 {
        Rfc3339::new(time, 6)
    }

    fn new(time: SystemTime, digits: usize) -> Rfc3339 {
        // Before 1970 only with a broken clock; after 9999 never.
        let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs().min(253_402_300_799);
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, of_day / 3600);
        put(14, 2, of_day / 60 % 60);
        put(17, 2, of_day % 60);
        let fraction = u64::from(since.subsec_micros()) / 10u64.pow(6 - digits as u32);
        put(20, digits, fraction);
        text[20 + digits] = b'Z';
        Rfc3339 {
            text,
            len: 21 + digits,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Digits and ASCII punctuation only.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Year, month, day of a day counted from 1970-01-01 (the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March, so that February's leap day comes last.
    let m = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * m + 2) / 5 + 1;
    let month = if m < 10 { m + 3 } else { m - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A Rust `Debug` string (quoted, escaped), as tracing writes `&str` fields: copied as
/// it is when it is printable ASCII without quotes or backslashes.
pub fn debug_string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let needs_escaping = bytes.iter().fold(false, |any, &b| {
        any | !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')
    });
    if !needs_escaping {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{value:?}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The hand-written timestamps agree with jiff's, over leap days, century years
    /// and the edges of days and years.
    #[test]
    fn timestamps_agree_with_jiff() {
        let mut seconds: Vec<u64> = vec![
            0,
            951_782_400,     // 2000-02-29
            4_107_542_400,   // 2100-02-28 (2100 is no leap year)
            4_107_628_800,   // 2100-03-01
            1_798_761_599,   // 2026-12-31T23:59:59
            253_402_207_199, // near jiff's largest timestamp
        ];
        // Every 9,999,991 s (about 116 days, and an odd time of day) up to 2500.
        seconds.extend((0..1_600u64).map(|i| i * 9_999_991));
        for (i, secs) in seconds.into_iter().enumerate() {
            let millis = (i as u64 * 37) % 1000;
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
            let jiff = jiff::Timestamp::try_from(time).expect("in range");
            let expected = jiff.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(Rfc3339::millis(time).as_str(), expected, "{secs}.{millis:03}");
            let time = time + Duration::from_micros(417);
            let jiff = jiff::Timestamp::try_from(time).expect("in range");
            let expected = jiff.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            assert_eq!(Rfc3339::micros(time).as_str(), expected, "{secs}.{millis:03}417");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0:0",
            "10.1.22.3:80",
            "255.255.255.255:65535",
            "[::1]:8443",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
            "[::ffff:10.0.0.1]:443",
        ] {
            let addr: SocketAddr = text.parse().expect("address");
            assert_eq!(AddrText::socket(addr).as_str(), text);
            assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
            assert_eq!(AddrText::ip(addr.ip()).as_str(), addr.ip().to_string());
        }
    }

    /// Strings come out as serde_json and `Debug` write them, escaped or not.
    #[test]
    fn strings_are_escaped_as_serde_json_and_debug_escape_them() {
        for s in [
            "",
            "plain",
            "a \"quote\"",
            "back\\slash",
            "tab\tnew\nline",
            "\u{1}\u{7f}",
            "caf\u{e9} \u{200b}",
        ] {
            let mut json = Vec::new();
            json_string(&mut json, s);
            assert_eq!(json, serde_json::to_vec(s).expect("serializes"), "{s:?}");
            let mut debug = Vec::new();
            debug_string(&mut debug, s);
            assert_eq!(String::from_utf8(debug).expect("UTF-8"), format!("{s:?}"));
        }
    }
}
