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
    /// OpenID Connect providers and session keys; absent means no route may ask for
    /// authentication.
    pub oidc: Option<OidcSettings>,
    pub audit_log: AuditSettings,
    pub rate_limits: RateLimitSettings,
}

/// Where rate limits are counted.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// `redis://HOST:PORT[/DB]` (no TLS yet): count limits in Redis, shared by every replica.
    /// Default: none, each replica counts on its own. When Redis cannot be reached the
    /// gateway counts locally until it can (and says so in logs and metrics).
    pub redis: Option<String>,
}

/// The audit log: one JSON line per access decision and per configuration change.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Default true.
    pub enabled: bool,
    /// `-` (the default) is stdout; otherwise a file, appended to and reopened on SIGHUP.
    pub path: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            enabled: true,
            path: "-".to_string(),
        }
    }
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
            oidc: None,
            audit_log: AuditSettings::default(),
            rate_limits: RateLimitSettings::default(),
        }
    }
}

/// Where a secret value comes from. Secrets never sit in the config file itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// `{env: NAME}`: an environment variable of the gateway process.
    Env { env: String },
    /// `{file: PATH}`: a file (trailing newline removed), e.g. a mounted Secret.
    File { file: std::path::PathBuf },
    /// `{secret: NAMESPACE/NAME, key: KEY}`: a key of a Secret among the manifests.
    Secret { secret: String, key: String },
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env { env } => write!(f, "environment variable {env}"),
            SecretSource::File { file } => write!(f, "file {}", file.display()),
            SecretSource::Secret { secret, key } => write!(f, "key {key} of Secret {secret}"),
        }
    }
}

/// OpenID Connect: the providers routes can name, and the keys that seal sessions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSettings {
    pub providers: Vec<ProviderSettings>,
    /// 32 random bytes each, base64. The first seals new sessions; all of them open
    /// existing ones, so a key can rotate without logging everyone out. Required.
    pub session_keys: Vec<SecretSource>,
    /// Absolute session lifetime, whatever refreshes happen. Default 12h.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: TextDuration,
    /// Hosts (besides the request's own) that the post-login redirect may go to.
    #[serde(default)]
    pub redirect_allowlist: Vec<String>,
    /// PKCS#8 PEM of the EC P-256 key that signs identity assertions; replicas must
    /// share it. Default: a key generated at start.
    #[serde(default)]
    pub assertion_key: Option<SecretSource>,
}

fn default_session_lifetime() -> TextDuration {
    TextDuration(Duration::from_secs(12 * 3600))
}

/// One OpenID provider.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderSettings {
    /// What `portcullis.dev/auth-provider` names.
    pub name: String,
    /// The issuer URL; `https://`, or `http://` for loopback addresses only (tests).
    pub issuer: String,
    pub client_id: String,
    /// Needed for browser login with a confidential client.
    #[serde(default)]
    pub client_secret: Option<SecretSource>,
    /// Default `[openid, email, profile]`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// `aud` values accepted on bearer tokens besides the client id.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The claim holding group names. Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// When set (e.g. `at+jwt`), bearer tokens must carry this `typ` header.
    #[serde(default)]
    pub access_token_type: Option<String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_groups_claim() -> String {
    "groups".to_string()
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
    /// Which listeners expect a PROXY protocol (v1 or v2) header on every connection,
    /// from a load balancer in `trustedProxies`. Default: none.
    pub proxy_protocol: ProxyProtocol,
    /// The HTTPS port clients see, for redirects (e.g. 443 when a load balancer maps
    /// 443 to the listener's 8443). Default: the HTTPS listener's port.
    pub https_redirect_port: Option<u16>,
}

/// Listeners that take the PROXY protocol.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyProtocol {
    pub http: bool,
    pub https: bool,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            https: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9180)),
            proxy_protocol: ProxyProtocol::default(),
            https_redirect_port: None,
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
    /// How long a client may pause in the middle of a request body. Default 60s.
    pub client_body: TextDuration,
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
            client_body: s(60),
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
    /// Longest request target (path and query). Default 8 KiB, as ingress-nginx's
    /// `large-client-header-buffers`.
    pub max_uri_size: ByteSize,
    /// Open connections one client address may hold at once (the address after the
    /// PROXY protocol, if any); `0` means unlimited. Default 1024.
    pub max_connections_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: ByteSize(64 << 20),
            max_header_size: ByteSize(64 << 10),
            max_uri_size: ByteSize(8 << 10),
            max_connections_per_client: 1024,
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
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        let pp = self.listen.proxy_protocol;
        if (pp.http || pp.https) && self.trusted_proxies.is_empty() {
            return Err(SettingsError::Value {
                field: "listen.proxyProtocol".into(),
                message: "needs trustedProxies: PROXY protocol headers are believed only from those peers"
                    .into(),
            });
        }
        if let Some(url) = &self.rate_limits.redis {
            if !url.starts_with("redis://") {
                return Err(SettingsError::Value {
                    field: "rateLimits.redis".into(),
                    message: format!("{url:?} must be a redis:// URL (TLS to Redis is not supported yet)"),
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

impl OidcSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field: String, message: String| Err(SettingsError::Value { field, message });
        if self.session_keys.is_empty() {
            return bad(
                "oidc.sessionKeys".into(),
                "at least one key is required: 32 random bytes, base64 (e.g. `openssl rand -base64 32`)"
                    .into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let field = |f: &str| format!("oidc.providers[{i}].{f}");
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return bad(
                    field("name"),
                    format!("{:?} must be non-empty and unique", p.name),
                );
            }
            if let Err(m) = check_issuer(&p.issuer) {
                return bad(field("issuer"), m);
            }
            if p.client_id.is_empty() {
                return bad(field("clientId"), "must not be empty".into());
            }
            if !p.scopes.iter().any(|s| s == "openid") {
                return bad(field("scopes"), "must include openid".into());
            }
        }
        for source in &self.session_keys {
            if let SecretSource::Secret { secret, .. } = source {
                if crate::split_namespaced(secret).is_none() {
                    return bad(
                        "oidc.sessionKeys".into(),
                        format!("{secret:?} must be NAMESPACE/NAME"),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderSettings> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// An issuer must be https, except on loopback addresses (for tests and local IdPs).
fn check_issuer(issuer: &str) -> Result<(), String> {
    let uri: http::Uri = issuer
        .parse()
        .map_err(|e| format!("{issuer:?} is not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http")
            if host == "localhost"
                || host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{issuer:?} must be an https:// URL (http:// only for loopback addresses)"
        )),
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
    fn oidc_providers() {
        let s = Settings::from_yaml(
            "oidc:\n  providers:\n  - name: corp\n    issuer: https://idp.example.com\n    clientId: portcullis\n    clientSecret: {env: OIDC_CLIENT_SECRET}\n    audiences: [urn:api]\n  sessionKeys: [{file: /run/key}, {secret: portcullis/session, key: k}]\n",
        )
        .unwrap();
        let oidc = s.oidc.unwrap();
        let p = oidc.provider("corp").unwrap();
        assert_eq!(
            p.client_secret,
            Some(SecretSource::Env {
                env: "OIDC_CLIENT_SECRET".into()
            })
        );
        assert_eq!(p.scopes, ["openid", "email", "profile"]);
        assert_eq!(p.groups_claim, "groups");
        assert_eq!(oidc.session_keys.len(), 2);
        for (yaml, field) in [
            ("oidc: {providers: [{name: a, issuer: 'http://idp.example.com', clientId: c}], sessionKeys: [{env: K}]}", "issuer"),
            ("oidc: {providers: [{name: a, issuer: 'https://i', clientId: c}], sessionKeys: []}", "sessionKeys"),
            ("oidc: {providers: [{name: a, issuer: 'https://i', clientId: c, scopes: [email]}], sessionKeys: [{env: K}]}", "scopes"),
        ] {
            let e = Settings::from_yaml(yaml).unwrap_err().to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        assert!(Settings::from_yaml("oidc: {providers: [{name: a, issuer: 'http://127.0.0.1:5556', clientId: c}], sessionKeys: [{env: K}]}").is_ok());
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
