//! ingress-nginx's `custom-headers` annotation: a ConfigMap in the Ingress's namespace
//! whose `data` entries are response headers set on every proxied response of the
//! Ingress's routes, replacing the backend's (nginx's `more_set_headers`).
//! ingress-nginx templated names and values into its configuration and trusted only
//! names listed in its global `global-allowed-response-headers`; Portcullis has no
//! such list, so each entry is parsed into a typed header here and the names that
//! would break HTTP framing or the gateway's own cookies are refused.

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::ConfigMap;

/// A `custom-headers` annotation once its ConfigMap is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomHeaders {
    /// The namespace as written in the annotation, if it was.
    pub namespace: Option<String>,
    /// The ConfigMap's name, which must be in the Ingress's namespace.
    pub config_map: String,
    /// Set on every proxied response, in the ConfigMap's key order; filled in by the
    /// compiler (empty until then).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Names a ConfigMap may not set, with why. Hop-by-hop and framing headers describe
/// one connection or one body: a fixed value would corrupt the response or let a
/// client desynchronise the connection. `Set-Cookie` is refused because replacing the
/// backend's cookies would break its logins and a fixed cookie on every response
/// could overwrite the gateway's session and affinity cookies; set cookies in the
/// backend instead.
const REFUSED: &[(&str, &str)] = &[
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("proxy-connection", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
    ("transfer-encoding", "describes the body's framing"),
    ("content-length", "describes the body's framing"),
    ("content-encoding", "describes the body's encoding"),
    (
        "set-cookie",
        "would replace the backend's cookies and could overwrite the gateway's session and affinity cookies; set cookies in the backend",
    ),
];

impl CustomHeaders {
    /// Parses the annotation's `NAMESPACE/NAME` or `NAME`. The namespace is checked
    /// against the Ingress's by [`Self::config_map_name`], when the Ingress is compiled.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (namespace, name) = match value.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, value),
        };
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        };
        if !dns(name) || !namespace.is_none_or(dns) {
            return Err(format!(
                "{value:?} is not a ConfigMap name (NAMESPACE/NAME, in the Ingress's namespace)"
            ));
        }
        Ok(CustomHeaders {
            namespace: namespace.map(str::to_string),
            config_map: name.to_string(),
            headers: Vec::new(),
        })
    }

    /// The ConfigMap's name once its namespace, if written, is checked to be the
    /// Ingress's: a ConfigMap of another namespace is never read, as ingress-nginx
    /// refuses Secrets of other namespaces, so one team cannot set another's headers.
    pub fn config_map_name(&self, namespace: &str) -> Result<&str, String> {
        match &self.namespace {
            Some(ns) if ns != namespace => Err(format!(
                "ConfigMap {ns}/{} is not in the Ingress's namespace {namespace:?}: ConfigMaps of other namespaces are not used",
                self.config_map
            )),
            _ => Ok(&self.config_map),
        }
    }

    /// Reads the headers from the ConfigMap's `data`; every entry must be a header the
    /// gateway may set, otherwise the error names the entry. `binaryData` is refused:
    /// a header is text.
    pub fn load(&mut self, full_name: &str, config_map: &ConfigMap) -> Result<(), String> {
        if config_map.binary_data.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(format!(
                "ConfigMap {full_name} has binaryData: response headers must be in data"
            ));
        }
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (key, value) in config_map.data.iter().flatten() {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("ConfigMap {full_name}: {key:?} is not an HTTP header name"))?;
            if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name.as_str()) {
                return Err(format!(
                    "ConfigMap {full_name}: {key} may not be set by custom-headers: it {why}"
                ));
            }
            if headers.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "ConfigMap {full_name}: {key} is given twice (header names ignore case)"
                ));
            }
            // Trimmed as nginx trims around the value; `from_str` refuses control
            // characters (CR, LF: no header injection) but lets bytes above 0x7f
            // through, which clients read in differing charsets: refused too.
            let value = value.trim();
            if value.is_empty() {
                return Err(format!("ConfigMap {full_name}: {key} has an empty value"));
            }
            let ascii = value.is_ascii().then_some(value).ok_or(());
            let value = ascii.and_then(|v| HeaderValue::from_str(v).map_err(|_| ())).map_err(|_| {
                format!(
                    "ConfigMap {full_name}: the value of {key} is not a valid header value (visible ASCII, spaces and tabs only)"
                )
            })?;
            headers.push((name, value));
        }
        self.headers = headers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ConfigMap::default()
        }
    }

    fn load(data: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        let mut h = CustomHeaders::parse("hdrs")?;
        h.load("shop/hdrs", &config_map(data))?;
        Ok(h.headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect())
    }

    #[test]
    fn the_reference_is_a_configmap_of_the_ingress_namespace() {
        let same = CustomHeaders::parse("shop/hdrs").unwrap();
        assert_eq!(same.config_map_name("shop"), Ok("hdrs"));
        assert_eq!(
            CustomHeaders::parse("hdrs").unwrap().config_map_name("shop"),
            Ok("hdrs")
        );
        let other = CustomHeaders::parse("ingress-nginx/hdrs").unwrap();
        let e = other.config_map_name("shop").unwrap_err();
        assert!(
            e.contains("ingress-nginx/hdrs") && e.contains("not in the Ingress's namespace"),
            "{e}"
        );
        for bad in ["", "shop/", "/hdrs", "Hdrs", "a b", "shop/x/y", "$(x)"] {
            assert!(CustomHeaders::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn valid_entries_become_typed_headers() {
        let h = load(&[
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", " default-src 'self' "),
        ])
        .unwrap();
        assert_eq!(
            h,
            vec![
                (
                    "content-security-policy".to_string(),
                    "default-src 'self'".to_string()
                ),
                ("x-frame-options".to_string(), "DENY".to_string()),
            ]
        );
        assert_eq!(load(&[]), Ok(vec![]));
    }

    #[test]
    fn framing_hop_by_hop_and_cookies_are_refused() {
        for name in [
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Upgrade",
            "Set-Cookie",
            "TE",
        ] {
            let e = load(&[(name, "x")]).unwrap_err();
            assert!(e.contains(name) && e.contains("shop/hdrs"), "{e}");
        }
    }

    #[test]
    fn invalid_names_and_values_are_refused() {
        assert!(load(&[("X Bad", "1")])
            .unwrap_err()
            .contains("not an HTTP header name"));
        assert!(load(&[("X-A", "a\r\nSet-Cookie: x=1")])
            .unwrap_err()
            .contains("not a valid header value"));
        assert!(load(&[("X-A", "caf\u{e9}")]).is_err());
        assert!(load(&[("X-A", "  ")]).unwrap_err().contains("empty"));
        assert!(load(&[("X-A", "1"), ("x-a", "2")]).unwrap_err().contains("twice"));
        let mut h = CustomHeaders::parse("hdrs").unwrap();
        let binary = ConfigMap {
            binary_data: Some([("X-A".to_string(), k8s_openapi::ByteString(vec![1]))].into()),
            ..ConfigMap::default()
        };
        assert!(h.load("shop/hdrs", &binary).unwrap_err().contains("binaryData"));
    }
}
