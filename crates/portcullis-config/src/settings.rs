//! The gateway's global settings, read from the config file (YAML, camelCase keys as in
//! Kubernetes; an unknown key is an error, so a typo never silently leaves a default in
//! place). Everything per route lives in Ingress annotations instead.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::units::{ByteSize, TextDuration};

/// Everything in the config file. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    pub listen: Listen,
    /// The IngressClass name whose Ingresses this gateway serves. Default `portcullis`.
    pub ingress_class: String,
    pub tls: TlsSettings,
    /// Peers whose `X-Forwarded-For` is believed (load balancers in front of the gateway).
    /// Default: none, so the client address is always the socket peer.
    pub trusted_proxies: Vec<IpNet>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: Listen::default(),
            ingress_class: "portcullis".to_string(),
            tls: TlsSettings::default(),
            trusted_proxies: Vec::new(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
        }
    }
}

/// Listener addresses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Listen {
    /// Plain HTTP: redirects to HTTPS for hosts with TLS. Default `0.0.0.0:8080`.
    pub http: SocketAddr,
    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN). Default `0.0.0.0:8443`.
    pub https: SocketAddr,
    /// Health, readiness and metrics. Default `127.0.0.1:9180`, never public by default.
    pub admin: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            https: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9180)),
        }
    }
}

/// TLS versions the HTTPS listener accepts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// TLS settings of the HTTPS listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsSettings {
    pub min_version: TlsVersion,
    /// `namespace/name` of a `kubernetes.io/tls` Secret served when no Ingress
    /// certificate matches the SNI name. Default: a self-signed certificate generated at
    /// start (and logged as such).
    pub default_certificate: Option<String>,
    /// `max-age` of the `Strict-Transport-Security` header on HTTPS responses; `0`
    /// turns HSTS off. Default one year.
    pub hsts_max_age: TextDuration,
    /// Adds `includeSubDomains` to HSTS. Default false.
    pub hsts_include_subdomains: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            min_version: TlsVersion::Tls12,
            default_certificate: None,
            hsts_max_age: TextDuration(Duration::from_secs(365 * 24 * 3600)),
            hsts_include_subdomains: false,
        }
    }
}

/// Timeouts; each can be overridden per Ingress where an annotation says so.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a backend. Default 5s.
    pub connect: TextDuration,
    /// Waiting for a backend's response headers, and between two reads of its body.
    /// Default 60s (annotation `portcullis.dev/proxy-read-timeout`).
    pub read: TextDuration,
    /// How long an idle pooled backend connection is kept. Default 90s.
    pub upstream_idle: TextDuration,
    /// How long a client may take to send request headers, and to finish the TLS
    /// handshake. Default 10s.
    pub client_header: TextDuration,
    /// How long shutdown waits for in-flight requests to finish. Default 30s.
    pub shutdown_grace: TextDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let s = |n| TextDuration(Duration::from_secs(n));
        Timeouts {
            connect: s(5),
            read: s(60),
            upstream_idle: s(90),
            client_header: s(10),
            shutdown_grace: s(30),
        }
    }
}

/// Size limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body; `0` means unlimited. Default 64 MiB
    /// (annotation `portcullis.dev/max-body-size`).
    pub max_body_size: ByteSize,
    /// Largest request head (request line plus headers). Default 64 KiB.
    pub max_header_size: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: ByteSize(64 << 20),
            max_header_size: ByteSize(64 << 10),
        }
    }
}

/// The config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The YAML is not valid, or a field has the wrong type or an unknown name.
    #[error("config file: {field}: {message}")]
    Invalid { field: String, message: String },
    /// A value parsed but makes no sense (say, a default certificate without a namespace).
    #[error("config file: {field}: {message}")]
    Value { field: String, message: String },
}

impl Settings {
    /// Parses and validates the config file text.
    pub fn from_yaml(text: &str) -> Result<Settings, SettingsError> {
        let options = serde_saphyr::options! { strict_booleans: true };
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str_with_options(text, options).map_err(|e| SettingsError::Invalid {
                field: "(syntax)".into(),
                message: e.to_string().lines().next().unwrap_or_default().to_string(),
            })?
        };
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        let settings: Settings =
            serde_path_to_error::deserialize(value).map_err(|e| SettingsError::Invalid {
                field: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if let Some(name) = &self.tls.default_certificate {
            if crate::split_namespaced(name).is_none() {
                return Err(SettingsError::Value {
                    field: "tls.defaultCertificate".into(),
                    message: format!("{name:?} must be NAMESPACE/NAME of a kubernetes.io/tls Secret"),
                });
            }
        }
        if self.ingress_class.is_empty() {
            return Err(SettingsError::Value {
                field: "ingressClass".into(),
                message: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Settings::from_yaml("").ok(), Some(Settings::default()));
        assert_eq!(Settings::from_yaml("# nothing\n").ok(), Some(Settings::default()));
    }

    #[test]
    fn reads_the_documented_shape() {
        let s = Settings::from_yaml(
            "listen: {http: 127.0.0.1:80, https: 127.0.0.1:443}\ningressClass: edge\ntls: {minVersion: \"1.3\", defaultCertificate: portcullis/default-tls}\ntrustedProxies: [10.0.0.0/8]\ntimeouts: {read: 5s}\nlimits: {maxBodySize: 1m}\n",
        )
        .unwrap();
        assert_eq!(s.listen.https.port(), 443);
        assert_eq!(s.listen.admin, Listen::default().admin);
        assert_eq!(s.ingress_class, "edge");
        assert_eq!(s.tls.min_version, TlsVersion::Tls13);
        assert_eq!(s.timeouts.read.0, Duration::from_secs(5));
        assert_eq!(s.limits.max_body_size.0, 1 << 20);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let e = Settings::from_yaml("listen: {htps: 1.2.3.4:1}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") && e.contains("htps"), "{e}");
        let e = Settings::from_yaml("timeouts: {read: forever}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeouts.read"), "{e}");
        let e = Settings::from_yaml("tls: {defaultCertificate: nonamespace}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.defaultCertificate"), "{e}");
    }
}
