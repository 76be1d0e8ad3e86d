//! Cross-origin resource sharing as ingress-nginx's `enable-cors` annotations define
//! it: the gateway answers preflight requests itself (204) and adds the CORS headers
//! to every response for an allowed origin. Origins, methods and headers are parsed
//! and validated here; ingress-nginx templated them into its configuration.

use std::fmt;

/// ingress-nginx's defaults.
pub const DEFAULT_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
pub const DEFAULT_HEADERS: &str =
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
pub const DEFAULT_MAX_AGE: u64 = 1_728_000;

/// The CORS policy of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: Origins,
    pub methods: String,
    pub headers: String,
    pub credentials: bool,
    pub expose_headers: Option<String>,
    pub max_age: u64,
}

/// Which origins are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `*`: every origin, answered with `Access-Control-Allow-Origin: *`.
    Any,
    List(Vec<OriginPattern>),
}

/// `https://app.example.com`, `http://localhost:3000` or `https://*.example.com`
/// (one or more labels in place of the `*`, as ingress-nginx matches it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// Lower-case; without the `*.` of a wildcard.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl OriginPattern {
    fn parse(text: &str) -> Result<OriginPattern, String> {
        let bad = || {
            format!("{text:?} is not an origin like https://app.example.com, https://*.example.com or http://localhost:8080")
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(h) => (true, h),
            None => (false, host),
        };
        let valid_label = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || !host.split('.').all(valid_label) {
            return Err(bad());
        }
        Ok(OriginPattern {
            scheme,
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }

    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(&self.scheme) {
            return false;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, Some(p)),
                Err(_) => return false,
            },
            None => (rest, None),
        };
        if port != self.port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        if self.wildcard {
            host.strip_suffix(&self.host)
                .and_then(|prefix| prefix.strip_suffix('.'))
                .is_some_and(|labels| {
                    !labels.is_empty()
                        && labels.split('.').all(|l| {
                            !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                })
        } else {
            host == self.host
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{}://{star}{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The raw annotation values (`None` where unset).
#[derive(Debug, Default, Clone, Copy)]
pub struct CorsAnnotations<'a> {
    pub allow_origin: Option<&'a str>,
    pub allow_methods: Option<&'a str>,
    pub allow_headers: Option<&'a str>,
    pub allow_credentials: Option<&'a str>,
    pub expose_headers: Option<&'a str>,
    pub max_age: Option<&'a str>,
}

/// An error names the annotation (without prefix) and says what is wrong.
pub type CorsError = (&'static str, String);

impl Cors {
    pub fn parse(a: CorsAnnotations) -> Result<Cors, CorsError> {
        let origins = match a.allow_origin.map(str::trim) {
            None | Some("*") | Some("") => Origins::Any,
            Some(list) => {
                let mut patterns = Vec::new();
                for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    if entry == "*" {
                        return Ok(Cors {
                            origins: Origins::Any,
                            ..Cors::parse(CorsAnnotations {
                                allow_origin: None,
                                ..a
                            })?
                        });
                    }
                    patterns.push(OriginPattern::parse(entry).map_err(|e| ("cors-allow-origin", e))?);
                }
                Origins::List(patterns)
            }
        };
        let methods = token_list(a.allow_methods, DEFAULT_METHODS, |c| c.is_ascii_alphabetic())
            .map_err(|e| ("cors-allow-methods", e))?;
        let headers = token_list(a.allow_headers, DEFAULT_HEADERS, is_header_char)
            .map_err(|e| ("cors-allow-headers", e))?;
        let expose_headers = match a.expose_headers {
            None => None,
            Some(v) => Some(
                token_list(Some(v), "", |c| is_header_char(c) || c == '*')
                    .map_err(|e| ("cors-expose-headers", e))?,
            )
            .filter(|v| !v.is_empty()),
        };
        let credentials = match a.allow_credentials.map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => {
                return Err((
                    "cors-allow-credentials",
                    format!("{v:?} is not \"true\" or \"false\""),
                ))
            }
        };
        let max_age = match a.max_age.map(str::trim) {
            None => DEFAULT_MAX_AGE,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| ("cors-max-age", format!("{v:?} is not a whole number of seconds")))?,
        };
        Ok(Cors {
            origins,
            methods,
            headers,
            credentials,
            expose_headers,
            max_age,
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or `None`
    /// when the request gets no CORS headers.
    pub fn allow_origin<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        match &self.origins {
            Origins::Any => Some("*"),
            Origins::List(patterns) => origin.filter(|o| patterns.iter().any(|p| p.matches(o))),
        }
    }

    /// The headers for a response to an allowed origin (ingress-nginx sets them on
    /// preflight answers and on proxied responses alike).
    pub fn headers(&self, allow_origin: &str) -> Vec<(&'static str, String)> {
        let mut h = vec![("access-control-allow-origin", allow_origin.to_string())];
        if self.credentials {
            h.push(("access-control-allow-credentials", "true".to_string()));
        }
        h.push(("access-control-allow-methods", self.methods.clone()));
        h.push(("access-control-allow-headers", self.headers.clone()));
        if let Some(e) = &self.expose_headers {
            h.push(("access-control-expose-headers", e.clone()));
        }
        h.push(("access-control-max-age", self.max_age.to_string()));
        h
    }
}

fn is_header_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// A comma-separated list of tokens, normalized to `a, b, c`-style spacing as written.
fn token_list(
    value: Option<&str>,
    default: &str,
    token_char: impl Fn(char) -> bool,
) -> Result<String, String> {
    let Some(v) = value else {
        return Ok(default.to_string());
    };
    let entries: Vec<&str> = v.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if let Some(bad) = entries.iter().find(|e| !e.chars().all(&token_char)) {
        return Err(format!("{bad:?} is not a valid entry of a comma-separated list"));
    }
    Ok(entries.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origin: &str) -> Cors {
        Cors::parse(CorsAnnotations {
            allow_origin: Some(origin),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn defaults_are_ingress_nginx_defaults() {
        let c = Cors::parse(CorsAnnotations::default()).unwrap();
        assert_eq!(c.origins, Origins::Any);
        assert_eq!(c.methods, DEFAULT_METHODS);
        assert!(c.credentials);
        assert_eq!(c.max_age, 1_728_000);
        assert_eq!(c.allow_origin(None), Some("*"));
    }

    #[test]
    fn listed_origins_are_echoed_only_when_they_match() {
        let c = cors("https://app.example.com, http://localhost:3000, https://*.example.org");
        assert_eq!(
            c.allow_origin(Some("https://app.example.com")),
            Some("https://app.example.com")
        );
        assert_eq!(
            c.allow_origin(Some("http://localhost:3000")),
            Some("http://localhost:3000")
        );
        assert_eq!(
            c.allow_origin(Some("https://a.b.example.org")),
            Some("https://a.b.example.org")
        );
        for no in [
            "https://example.org",
            "http://app.example.com",
            "https://app.example.com.evil.net",
            "https://evilexample.org",
            "http://localhost:3001",
            "null",
        ] {
            assert_eq!(c.allow_origin(Some(no)), None, "{no}");
        }
        assert_eq!(c.allow_origin(None), None);
    }

    #[test]
    fn invalid_values_name_their_annotation() {
        assert_eq!(
            Cors::parse(CorsAnnotations {
                allow_origin: Some("https://a.com/path"),
                ..Default::default()
            })
            .unwrap_err()
            .0,
            "cors-allow-origin"
        );
        assert_eq!(
            Cors::parse(CorsAnnotations {
                allow_methods: Some("GET; add_header x y"),
                ..Default::default()
            })
            .unwrap_err()
            .0,
            "cors-allow-methods"
        );
        assert_eq!(
            Cors::parse(CorsAnnotations {
                allow_headers: Some("X-A\r\nX-B"),
                ..Default::default()
            })
            .unwrap_err()
            .0,
            "cors-allow-headers"
        );
        assert_eq!(
            Cors::parse(CorsAnnotations {
                max_age: Some("-1"),
                ..Default::default()
            })
            .unwrap_err()
            .0,
            "cors-max-age"
        );
    }

    #[test]
    fn a_star_in_a_list_allows_every_origin() {
        assert_eq!(cors("https://a.com, *").origins, Origins::Any);
    }
}
