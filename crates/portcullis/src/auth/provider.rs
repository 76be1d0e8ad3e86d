//! One OpenID provider: discovery, its key set (cached; refreshed at most once per
//! interval when a token names an unknown key, so rotation needs no restart), the
//! token endpoint (code exchange with PKCE, refresh), and the checks on ID tokens and
//! bearer tokens. A provider that cannot be reached fails closed: its routes answer
//! 503 and nothing is let through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use portcullis_config::settings::ProviderSettings;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::jwt::{self, Expect, TokenError};

/// How long a discovery document and key set are trusted before being fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A token with an unknown `kid` refreshes the key set at most this often.
const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 1 << 20;

/// Talking to the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// Network, TLS or HTTP failure reaching the provider.
    #[error("provider {provider} unreachable: {detail}")]
    Unreachable { provider: String, detail: String },
    /// The provider answered with something that is not valid (bad JSON, wrong issuer).
    #[error("provider {provider} answered badly: {detail}")]
    BadAnswer { provider: String, detail: String },
    /// The token endpoint refused a code or refresh token.
    #[error("provider {provider} refused the grant: {detail}")]
    Refused { provider: String, detail: String },
}

/// An HTTP client for providers: TLS verified against the Mozilla root store,
/// plain HTTP only for loopback issuers (checked when the config is read).
pub struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl IdpClient {
    pub fn new() -> Result<IdpClient, rustls::Error> {
        let tls = crate::tls::public_client_config()?;
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(IdpClient {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn call(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let res = tokio::time::timeout(HTTP_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let body = tokio::time::timeout(
            HTTP_TIMEOUT,
            Limited::new(res.into_body(), MAX_RESPONSE).collect(),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        Ok((status, body))
    }
}

/// The parts of the discovery document used here.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
    /// Unique per fetch (of any provider): what verified tokens remember.
    generation: u64,
}

/// Numbers key-set fetches.
static KEY_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Discovered {
    metadata: Metadata,
    fetched: Instant,
}

/// Tokens from the token endpoint.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub name: Option<String>,
    pub expires: i64,
    /// Other claims, as strings (for `portcullis.dev/require-claims`).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// Registered and protocol claims that are not kept as `extra`.
const PROTOCOL_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "nonce",
    "azp",
    "at_hash",
    "c_hash",
    "s_hash",
    "sid",
    "auth_time",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "client_id",
    "cnf",
];
/// At most this many extra claims, each at most this long, are kept (they ride in the
/// session cookie).
const MAX_EXTRA_CLAIMS: usize = 32;
const MAX_CLAIM_VALUE: usize = 256;

/// Strings, numbers and booleans as text; arrays of them flattened.
fn claim_values(v: &serde_json::Value) -> Vec<String> {
    let one = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        serde_json::Value::Array(a) => a.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

pub struct Provider {
    pub settings: ProviderSettings,
    client_secret: Option<String>,
    discovered: ArcSwapOption<Discovered>,
    keys: ArcSwapOption<Keys>,
    /// Serializes fetches, so a burst of requests makes one.
    fetch: Mutex<Option<Instant>>,
    /// Bearer tokens already verified, by SHA-256 of the token: an API client sends
    /// the same token on every request, and an ECDSA or RSA verification costs more
    /// than everything else the gateway does for a request.
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// A bearer token that passed every check with the key set `keys`.
struct Verified {
    /// Shared by every request that sends the token.
    identity: Arc<super::Identity>,
    /// The generation of the key set it was verified with: a new key set verifies it
    /// again, so a withdrawn key stops its tokens at once.
    keys: u64,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verified bearer tokens kept at most; past it, expired ones go, then all.
const VERIFIED_CAPACITY: usize = 10_000;

impl Provider {
    pub fn new(settings: ProviderSettings, client_secret: Option<String>) -> Provider {
        Provider {
            settings,
            client_secret,
            discovered: ArcSwapOption::empty(),
            keys: ArcSwapOption::empty(),
            fetch: Mutex::new(None),
            verified: std::sync::Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    fn unreachable(&self, detail: impl Into<String>) -> IdpError {
        IdpError::Unreachable {
            provider: self.settings.name.clone(),
            detail: detail.into(),
        }
    }

    fn bad(&self, detail: impl Into<String>) -> IdpError {
        IdpError::BadAnswer {
            provider: self.settings.name.clone(),
            detail: detail.into(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        client: &IdpClient,
        url: &str,
    ) -> Result<T, IdpError> {
        let req = Request::get(url)
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.bad(format!("bad URL {url}: {e}")))?;
        let (status, body) = client
            .call(req)
            .await
            .map_err(|e| self.unreachable(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(self.unreachable(format!("{url}: HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| self.bad(format!("{url}: {e}")))
    }

    /// The discovery document, fetched on first use and after an hour.
    pub async fn metadata(&self, client: &IdpClient) -> Result<Metadata, IdpError> {
        if let Some(d) = self.discovered.load_full() {
            if d.fetched.elapsed() < METADATA_TTL {
                return Ok(d.metadata.clone());
            }
        }
        let _guard = self.fetch.lock().await;
        if let Some(d) = self.discovered.load_full() {
            if d.fetched.elapsed() < METADATA_TTL {
                return Ok(d.metadata.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let metadata: Metadata = self.get_json(client, &url).await?;
        // The issuer in the document must be exactly the configured one (OpenID
        // Connect Discovery, section 4.3): otherwise tokens could come from anyone.
        if metadata.issuer != self.settings.issuer {
            return Err(self.bad(format!(
                "discovery says issuer {:?}, the config says {:?}",
                metadata.issuer, self.settings.issuer
            )));
        }
        tracing::info!(target: "portcullis::auth", provider = %self.settings.name, "provider discovered");
        self.discovered.store(Some(Arc::new(Discovered {
            metadata: metadata.clone(),
            fetched: Instant::now(),
        })));
        Ok(metadata)
    }

    /// The key set; `refresh` asks for a new one (rate limited) because a token named
    /// a key the cached set lacks.
    async fn key_set(&self, client: &IdpClient, refresh: bool) -> Result<Arc<Keys>, IdpError> {
        if let Some(k) = self.keys.load_full() {
            let stale = k.fetched.elapsed() > METADATA_TTL;
            let may_refresh = k.fetched.elapsed() > JWKS_REFRESH_INTERVAL;
            if !(stale || refresh && may_refresh) {
                return Ok(k);
            }
        }
        let metadata = self.metadata(client).await?;
        let mut last = self.fetch.lock().await;
        if let Some(k) = self.keys.load_full() {
            // Someone else refreshed while we waited.
            if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_INTERVAL) {
                return Ok(k);
            }
        }
        let set: JwkSet = self.get_json(client, &metadata.jwks_uri).await?;
        *last = Some(Instant::now());
        tracing::info!(target: "portcullis::auth", provider = %self.settings.name, keys = set.keys.len(), "key set fetched");
        let keys = Arc::new(Keys {
            set,
            fetched: Instant::now(),
            generation: KEY_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        self.keys.store(Some(keys.clone()));
        Ok(keys)
    }

    /// Verifies a JWT against the provider's keys, refreshing them once for an
    /// unknown key. Also says which key set (its generation) decided.
    async fn verify(
        &self,
        client: &IdpClient,
        token: &str,
        audiences: &[String],
        typ: Option<&str>,
    ) -> Result<(u64, Result<serde_json::Value, TokenError>), IdpError> {
        let (header, alg) = match jwt::screen(token) {
            Ok(x) => x,
            Err(e) => return Ok((0, Err(e))),
        };
        let expect = Expect {
            issuer: &self.settings.issuer,
            audiences,
            typ,
        };
        let keys = self.key_set(client, false).await?;
        let (generation, key) = match jwt::find_key(&keys.set, &header, alg) {
            Ok(k) => (keys.generation, k.clone()),
            Err(TokenError::UnknownKey(_)) => {
                let keys = self.key_set(client, true).await?;
                match jwt::find_key(&keys.set, &header, alg) {
                    Ok(k) => (keys.generation, k.clone()),
                    Err(e) => return Ok((keys.generation, Err(e))),
                }
            }
            Err(e) => return Ok((keys.generation, Err(e))),
        };
        Ok((generation, jwt::verify(token, &header, alg, &key, &expect)))
    }

    /// A bearer token: issuer, audience (the client id or a configured audience),
    /// expiry, and `typ` when configured.
    pub async fn verify_bearer(
        &self,
        client: &IdpClient,
        token: &str,
    ) -> Result<Result<Arc<super::Identity>, TokenError>, IdpError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        let now = super::now();
        let leeway = jwt::LEEWAY_SECONDS as i64;
        // A key set due for its periodic refetch is not trusted for cache hits: the
        // refetch is how a withdrawn key is noticed, and verifying again triggers it.
        let current_keys = self
            .keys
            .load()
            .as_ref()
            .filter(|k| k.fetched.elapsed() <= METADATA_TTL)
            .map_or(0, |k| k.generation);
        if let Some(hit) = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            // The time checks are the only ones whose answer changes; the rest held.
            let fresh = hit.exp.is_none_or(|exp| now <= exp + leeway)
                && hit.nbf.is_none_or(|nbf| nbf <= now + leeway);
            if hit.keys == current_keys && current_keys != 0 && fresh {
                return Ok(Ok(hit.identity.clone()));
            }
        }
        let mut audiences = self.settings.audiences.clone();
        audiences.push(self.settings.client_id.clone());
        let (generation, verified) = self
            .verify(
                client,
                token,
                &audiences,
                self.settings.access_token_type.as_deref(),
            )
            .await?;
        let claims = match verified {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let result = Arc::new(super::identity(
            self.name(),
            self.claims(&claims),
            super::AuthMethod::Bearer,
        ));
        // Once per token (and again after a key set change), not once per request: the
        // audit log records every request's decision.
        tracing::info!(target: "portcullis::auth", event = "token_accepted", provider = %self.name(), subject = %result.subject);
        // Remembered with the key set that verified it: hits need that set to be the
        // current one.
        let verified = Verified {
            identity: result.clone(),
            keys: generation,
            exp: claims["exp"].as_i64(),
            nbf: claims["nbf"].as_i64(),
        };
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CAPACITY {
            cache.retain(|_, v| v.exp.is_some_and(|exp| now <= exp + leeway));
            // Mostly live tokens: start over rather than scan again on the next insert.
            if cache.len() >= VERIFIED_CAPACITY * 3 / 4 {
                cache.clear();
            }
        }
        cache.insert(id, verified);
        Ok(Ok(result))
    }

    /// An ID token from the token endpoint (OpenID Connect Core 3.1.3.7).
    pub async fn verify_id_token(
        &self,
        client: &IdpClient,
        token: &str,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<Result<Claims, TokenError>, IdpError> {
        let audiences = vec![self.settings.client_id.clone()];
        let claims = match self.verify(client, token, &audiences, None).await?.1 {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let aud_count = match &claims["aud"] {
            serde_json::Value::Array(a) => a.len(),
            _ => 1,
        };
        match claims["azp"].as_str() {
            Some(azp) if azp != self.settings.client_id => {
                return Ok(Err(TokenError::Claims("azp is not our client id".into())))
            }
            None if aud_count > 1 => {
                return Ok(Err(TokenError::Claims("several audiences and no azp".into())))
            }
            _ => {}
        }
        match claims["iat"].as_i64() {
            Some(iat) if iat <= now + jwt::LEEWAY_SECONDS as i64 => {}
            _ => return Ok(Err(TokenError::Claims("iat missing or in the future".into()))),
        }
        if let Some(expected) = nonce {
            if claims["nonce"].as_str() != Some(expected) {
                return Ok(Err(TokenError::Claims(
                    "nonce does not match the login attempt".into(),
                )));
            }
        }
        Ok(Ok(self.claims(&claims)))
    }

    fn claims(&self, c: &serde_json::Value) -> Claims {
        let groups = match &c[&self.settings.groups_claim] {
            serde_json::Value::Array(a) => a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
            serde_json::Value::String(s) => s
                .split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        Claims {
            subject: c["sub"].as_str().unwrap_or_default().to_string(),
            email: c["email"].as_str().map(str::to_string),
            email_verified: c["email_verified"].as_bool().unwrap_or(false),
            groups,
            name: c["name"]
                .as_str()
                .or(c["preferred_username"].as_str())
                .map(str::to_string),
            expires: c["exp"].as_i64().unwrap_or(0),
            extra: c
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !PROTOCOL_CLAIMS.contains(&k.as_str()) && **k != self.settings.groups_claim)
                .map(|(k, v)| (k.clone(), claim_values(v)))
                .filter(|(_, v)| !v.is_empty() && v.iter().all(|x| x.len() <= MAX_CLAIM_VALUE))
                .take(MAX_EXTRA_CLAIMS)
                .collect(),
        }
    }

    /// Calls the token endpoint with client authentication.
    pub async fn token(&self, client: &IdpClient, form: &[(&str, &str)]) -> Result<TokenResponse, IdpError> {
        let metadata = self.metadata(client).await?;
        let basic = metadata.token_endpoint_auth_methods_supported.is_empty()
            || metadata
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_basic");
        let mut pairs: Vec<(&str, &str)> = form.to_vec();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&metadata.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        match &self.client_secret {
            Some(secret) if basic => {
                let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let credentials = format!("{}:{}", enc(&self.settings.client_id), enc(secret));
                use base64::Engine;
                let value = base64::engine::general_purpose::STANDARD.encode(credentials);
                req = req.header("authorization", format!("Basic {value}"));
            }
            Some(secret) => {
                pairs.push(("client_id", &self.settings.client_id));
                pairs.push(("client_secret", secret));
            }
            None => pairs.push(("client_id", &self.settings.client_id)),
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.bad(e.to_string()))?;
        let (status, body) = client.call(req).await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let detail = format!(
                "HTTP {status}: {} {}",
                error["error"].as_str().unwrap_or(""),
                error["error_description"].as_str().unwrap_or("")
            );
            return Err(if status.is_client_error() {
                IdpError::Refused {
                    provider: self.settings.name.clone(),
                    detail,
                }
            } else {
                self.unreachable(detail)
            });
        }
        serde_json::from_slice(&body).map_err(|e| self.bad(format!("token response: {e}")))
    }
}
