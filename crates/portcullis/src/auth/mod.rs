//! Authentication: who is calling, per route. Bearer tokens are checked against the
//! route's provider; browsers carry a sealed session cookie obtained through the
//! authorization code flow with PKCE, `state` and `nonce`. Everything fails closed: a
//! provider that cannot be reached means 503, never a request let through.
//!
//! The gateway's own endpoints, on every host:
//! `/.portcullis/start?rd=PATH`, `/.portcullis/callback`, `/.portcullis/sign-out`.

pub mod assertion;
pub mod external;
pub mod jwt;
pub mod provider;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use portcullis_config::settings::{SecretSource, Settings};
use portcullis_config::snapshot::AuthMode;
use portcullis_config::Snapshot;
use ring::digest;

use crate::proxy::{self, Body};
use provider::{Claims, IdpClient, IdpError, Provider};
use session::{LoginAttempt, Purpose, Sealer, Session, LOGIN_COOKIE, SESSION_COOKIE};

/// The gateway's own endpoints (HTTPS only).
pub const ENDPOINTS: &[&str] = &[
    "/.portcullis/start",
    "/.portcullis/callback",
    "/.portcullis/sign-out",
    JWKS_PATH,
];
/// Public keys of identity assertions, served on plain HTTP and HTTPS alike.
pub const JWKS_PATH: &str = "/.portcullis/jwks.json";

/// Requests that arrive with the same expired session within this window share one
/// refresh.
const REFRESH_REUSE: std::time::Duration = std::time::Duration::from_secs(30);

/// Refreshes in flight (or just done), by SHA-256 of the refresh token.
type Flights = HashMap<Vec<u8>, (std::time::Instant, Arc<tokio::sync::OnceCell<Option<Session>>>)>;

/// Sessions already opened, by their cookie: a browser sends the same cookie with every
/// request, and opening it (AES-GCM, then JSON) costs more than the rest of the session
/// check. Only cookies that opened with a session key get in, so the size is bounded by
/// real sessions, and by these limits.
///
/// Kept under a seeded foldhash of the cookie's text (SipHash of it cost more than the
/// rest of the lookup); the text itself is compared in constant time, so a forged cookie
/// that lands in the same bucket learns nothing of another user's by timing.
#[derive(Default)]
struct OpenedSessions {
    seed: foldhash::fast::RandomState,
    by_hash: HashMap<u64, Vec<Arc<Opened>>>,
    count: usize,
}
const OPENED_CAPACITY: usize = 4096;
/// Larger (chunked) cookies are opened on every request rather than kept.
const OPENED_MAX_COOKIE: usize = 4096;

/// A session opened from its cookie, and the identity it stands for, shared by every
/// request that carries the cookie.
struct Opened {
    cookie: Box<str>,
    session: Session,
    identity: Arc<Identity>,
}

impl OpenedSessions {
    fn hash(&self, cookie: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.seed, cookie)
    }

    fn get(&self, cookie: &str) -> Option<&Arc<Opened>> {
        self.by_hash
            .get(&self.hash(cookie))?
            .iter()
            .find(|o| same(o.cookie.as_bytes(), cookie.as_bytes()))
    }

    /// Keeps `opened`; when full, drops the sessions that ended by `now`, or all.
    fn insert(&mut self, opened: Arc<Opened>, now: i64) {
        if self.count >= OPENED_CAPACITY {
            self.by_hash.retain(|_, list| {
                list.retain(|o| o.session.exp > now);
                !list.is_empty()
            });
            self.count = self.by_hash.values().map(Vec::len).sum();
            // Mostly live sessions: start over rather than scan again on the next insert.
            if self.count >= OPENED_CAPACITY * 3 / 4 {
                self.by_hash.clear();
                self.count = 0;
            }
        }
        let hash = self.hash(&opened.cookie);
        let list = self.by_hash.entry(hash).or_default();
        if !list
            .iter()
            .any(|o| same(o.cookie.as_bytes(), opened.cookie.as_bytes()))
        {
            list.push(opened);
            self.count += 1;
        }
    }
}

/// A login attempt must finish within this many seconds.
const LOGIN_TTL: i64 = 600;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Session,
    Bearer,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Session => "session",
            AuthMethod::Bearer => "bearer",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub name: Option<String>,
    /// Other claims, for `require-claims`.
    pub claims: std::collections::BTreeMap<String, Vec<String>>,
    pub method: AuthMethod,
    pub upstream_headers: crate::proxy::UpstreamHeaders,
}

impl Identity {
    fn of_session(s: &Session) -> Identity {
        Identity {
            provider: s.p.clone(),
            subject: s.sub.clone(),
            email: s.email.clone(),
            email_verified: s.email_verified,
            groups: s.groups.clone(),
            name: s.name.clone(),
            claims: s.claims.clone(),
            method: AuthMethod::Session,
            upstream_headers: Default::default(),
        }
    }

    /// What authorization looks at.
    pub fn subject(&self) -> portcullis_config::policy::Subject {
        let mut claims = self.claims.clone();
        claims.insert("sub".into(), vec![self.subject.clone()]);
        portcullis_config::policy::Subject {
            email: self.email.clone(),
            email_verified: self.email_verified,
            groups: self.groups.clone(),
            claims,
        }
    }
}

/// The outcome of authenticating a request.
pub enum Decision {
    /// Go on, as this identity; `set_cookies` carry a refreshed session.
    Allow {
        identity: Arc<Identity>,
        set_cookies: Vec<String>,
    },
    /// Answer with this (401, a redirect to login, 503) and stop. `code` is a stable
    /// label for metrics and the audit log (`no_session`, `no_credentials`,
    /// `bad_token`, `provider_unavailable`); `reason` the details, for logs.
    Respond {
        response: Response<Body>,
        code: &'static str,
        reason: String,
    },
}

/// Configuration problems found when building the authenticator.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what} from {source_}: {detail}")]
    Secret {
        what: String,
        source_: String,
        detail: String,
    },
    #[error(transparent)]
    Key(#[from] session::KeyError),
    #[error("oidc.assertionKey: {0}")]
    AssertionKey(String),
    #[error("cannot build the provider HTTP client: {0}")]
    Tls(#[from] rustls::Error),
}

/// The request facts authentication looks at.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// Host without port, lower case.
    pub host: &'a str,
    /// Host as the client wrote it (with port), for URLs sent back to it.
    pub authority: &'a str,
    /// Normalized path and query: where to return after login.
    pub target: &'a str,
    pub upgrade: bool,
}

pub struct Auth {
    providers: HashMap<String, Arc<Provider>>,
    sealer: Option<Sealer>,
    client: IdpClient,
    session_lifetime: i64,
    redirect_allowlist: Vec<String>,
    signer: assertion::Signer,
    refreshes: std::sync::Mutex<Flights>,
    opened: std::sync::Mutex<OpenedSessions>,
    /// The first of `oidc.sessionKeys`, which every replica shares: sticky-session
    /// cookies derive their key from it so that any replica recognises them.
    sticky_secret: Option<Vec<u8>>,
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn resolve(what: &str, source: &SecretSource, snapshot: &Snapshot) -> Result<Vec<u8>, SetupError> {
    let fail = |detail: String| SetupError::Secret {
        what: what.to_string(),
        source_: source.to_string(),
        detail,
    };
    match source {
        SecretSource::Env { env } => std::env::var(env)
            .map(|v| v.into_bytes())
            .map_err(|_| fail("not set".into())),
        SecretSource::File { file } => std::fs::read(file)
            .map(|mut v| {
                while v.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    v.pop();
                }
                v
            })
            .map_err(|e| fail(e.to_string())),
        SecretSource::Secret { secret, key } => snapshot
            .referenced_secrets
            .get(&(secret.clone(), key.clone()))
            .cloned()
            .ok_or_else(|| fail("not found among the manifests".into())),
    }
}

impl Auth {
    /// Reads the providers and session keys of the config file, resolving secrets.
    pub fn new(settings: &Settings, snapshot: &Snapshot) -> Result<Auth, SetupError> {
        let client = IdpClient::new()?;
        let signer = match settings.oidc.as_ref().and_then(|o| o.assertion_key.as_ref()) {
            Some(source) => assertion::Signer::from_pem(&resolve("oidc.assertionKey", source, snapshot)?),
            None => assertion::Signer::generate(),
        }
        .map_err(SetupError::AssertionKey)?;
        let Some(oidc) = &settings.oidc else {
            return Ok(Auth {
                providers: HashMap::new(),
                sealer: None,
                client,
                session_lifetime: 0,
                redirect_allowlist: Vec::new(),
                signer,
                refreshes: Default::default(),
                opened: Default::default(),
                sticky_secret: None,
            });
        };
        let mut keys = Vec::new();
        for source in &oidc.session_keys {
            keys.push(resolve("oidc.sessionKeys", source, snapshot)?);
        }
        let mut providers = HashMap::new();
        for p in &oidc.providers {
            let secret = match &p.client_secret {
                Some(source) => Some(
                    String::from_utf8(resolve(
                        &format!("client secret of provider {}", p.name),
                        source,
                        snapshot,
                    )?)
                    .map_err(|_| SetupError::Secret {
                        what: format!("client secret of provider {}", p.name),
                        source_: source.to_string(),
                        detail: "not UTF-8".into(),
                    })?,
                ),
                None => None,
            };
            providers.insert(p.name.clone(), Arc::new(Provider::new(p.clone(), secret)));
        }
        Ok(Auth {
            providers,
            sealer: Some(Sealer::new(&keys)?),
            client,
            session_lifetime: oidc.session_lifetime.0.as_secs() as i64,
            redirect_allowlist: oidc.redirect_allowlist.clone(),
            signer,
            refreshes: Default::default(),
            opened: Default::default(),
            sticky_secret: keys.first().cloned(),
        })
    }

    /// Secret material shared by every replica, for [`crate::sticky::StickyKey`].
    pub fn sticky_secret(&self) -> Option<&[u8]> {
        self.sticky_secret.as_deref()
    }

    /// An identity assertion for a backend (`namespace/service`).
    pub fn assertion(&self, identity: &Identity, audience: &str) -> Option<String> {
        self.signer.sign(identity, audience, now())
    }

    /// The JSON Web Key Set of identity assertions.
    pub fn jwks(&self) -> Response<Body> {
        let mut r = Response::new(proxy::full(self.signer.jwks().to_string()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        r
    }

    /// Fetches every provider's metadata once, so an unreachable provider is reported
    /// at start (its routes answer 503 until it is back; the gateway serves the rest).
    pub async fn warm_up(&self) {
        for p in self.providers.values() {
            if let Err(e) = p.metadata(&self.client).await {
                tracing::error!(target: "portcullis::auth", provider = %p.name(), error = %e, "provider unavailable: routes that use it answer 503 until it is reachable");
            }
        }
    }

    /// Decides whether a request on a route with `mode` may pass.
    pub async fn authenticate(&self, mode: &AuthMode, req: &RequestFacts<'_>) -> Decision {
        let Some(name) = mode.provider() else {
            return Decision::Respond {
                response: plain(StatusCode::INTERNAL_SERVER_ERROR, "route has no provider"),
                code: "provider_unavailable",
                reason: "no provider".into(),
            };
        };
        let Some(provider) = self.providers.get(name) else {
            return unavailable(&format!("provider {name} is not configured"));
        };
        if let Some(value) = req.headers.get(header::AUTHORIZATION) {
            let text = value.to_str().unwrap_or_default();
            if let Some(token) = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
            {
                return self.bearer(provider, token.trim()).await;
            }
            if matches!(mode, AuthMode::Jwt { .. }) {
                return challenge("invalid_request", "only Bearer tokens are accepted");
            }
        }
        if matches!(mode, AuthMode::Jwt { .. }) {
            return challenge("", "a Bearer token is required");
        }
        let now = now();
        match self.session(provider, req, now).await {
            Ok(Some((identity, set_cookies))) => Decision::Allow {
                identity,
                set_cookies,
            },
            Ok(None) if wants_api_answer(req) => challenge("", "sign in first, or send a Bearer token"),
            Ok(None) => self.begin_login(provider, req, req.target.to_string(), now).await,
            Err(e) => unavailable(&e.to_string()),
        }
    }

    async fn bearer(&self, provider: &Provider, token: &str) -> Decision {
        match provider.verify_bearer(&self.client, token).await {
            Ok(Ok(identity)) => Decision::Allow {
                identity,
                set_cookies: Vec::new(),
            },
            Ok(Err(e)) => {
                tracing::info!(target: "portcullis::auth", event = "token_refused", provider = %provider.name(), reason = %e);
                challenge("invalid_token", &e.to_string())
            }
            Err(e) => unavailable(&e.to_string()),
        }
    }

    /// The session from the cookie, refreshed when its tokens have expired.
    /// `Ok(None)`: no usable session (absent, forged, expired, refused refresh).
    async fn session(
        &self,
        provider: &Provider,
        req: &RequestFacts<'_>,
        now: i64,
    ) -> Result<Option<(Arc<Identity>, Vec<String>)>, IdpError> {
        let Some(sealer) = &self.sealer else {
            return Ok(None);
        };
        let Some(raw) = session::read_chunked(req.headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let Some(opened) = self.open_session(sealer, &raw, now) else {
            tracing::info!(target: "portcullis::auth", event = "session_refused", reason = "cookie does not open with any session key");
            return Ok(None);
        };
        let s = &opened.session;
        if s.p != provider.name() || s.host != req.host || s.exp <= now {
            tracing::info!(target: "portcullis::auth", event = "session_refused", subject = %s.sub, reason = "other provider, other host or past its lifetime");
            return Ok(None);
        }
        if s.tokens_exp > now {
            return Ok(Some((opened.identity.clone(), Vec::new())));
        }
        let Some(refresh_token) = s.refresh_token.clone() else {
            tracing::info!(target: "portcullis::auth", event = "session_expired", subject = %s.sub);
            return Ok(None);
        };
        // A page load sends many requests at once; they share one refresh, so the
        // provider sees each refresh token used once (reuse would revoke the grant).
        let key = digest::digest(&digest::SHA256, refresh_token.as_bytes())
            .as_ref()
            .to_vec();
        let cell = {
            let mut flights = self.refreshes.lock().unwrap_or_else(|e| e.into_inner());
            flights.retain(|_, (started, _)| started.elapsed() < REFRESH_REUSE);
            flights
                .entry(key)
                .or_insert_with(|| (std::time::Instant::now(), Arc::new(tokio::sync::OnceCell::new())))
                .1
                .clone()
        };
        let refreshed = cell
            .get_or_try_init(|| self.refresh(provider, s.clone(), refresh_token, now))
            .await?
            .clone();
        Ok(refreshed.map(|s| {
            let cookies = self.session_cookies(&s, now);
            (Arc::new(Identity::of_session(&s)), cookies)
        }))
    }

    /// The session sealed in a cookie's text, from [`Opened`] when this cookie was
    /// opened before. Every check that depends on the request or the time is the
    /// caller's, on each request.
    fn open_session(&self, sealer: &Sealer, raw: &str, now: i64) -> Option<Arc<Opened>> {
        let lock = || self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = lock().get(raw) {
            return Some(s.clone());
        }
        let session = sealer.open::<Session>(Purpose::Session, raw)?;
        let s = Arc::new(Opened {
            cookie: raw.into(),
            identity: Arc::new(Identity::of_session(&session)),
            session,
        });
        if raw.len() <= OPENED_MAX_COOKIE && s.session.exp > now {
            lock().insert(s.clone(), now);
        }
        Some(s)
    }

    /// Renews a session's tokens with its refresh token. `Ok(None)`: refused.
    async fn refresh(
        &self,
        provider: &Provider,
        mut s: Session,
        refresh_token: String,
        now: i64,
    ) -> Result<Option<Session>, IdpError> {
        let tokens = match provider
            .token(
                &self.client,
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token)],
            )
            .await
        {
            Ok(t) => t,
            Err(IdpError::Refused { detail, .. }) => {
                tracing::info!(target: "portcullis::auth", event = "refresh_refused", subject = %s.sub, reason = %detail);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if let Some(id_token) = &tokens.id_token {
            match provider
                .verify_id_token(&self.client, id_token, None, now)
                .await?
            {
                Ok(claims) if claims.subject == s.sub => {
                    s.email = claims.email;
                    s.email_verified = claims.email_verified;
                    s.groups = claims.groups;
                    s.name = claims.name;
                    s.claims = claims.extra;
                    s.tokens_exp = claims.expires;
                }
                Ok(_) => return Ok(None),
                Err(e) => {
                    tracing::warn!(target: "portcullis::auth", event = "refresh_refused", subject = %s.sub, reason = %e);
                    return Ok(None);
                }
            }
        } else {
            s.tokens_exp = now + tokens.expires_in.unwrap_or(300);
        }
        if let Some(rt) = tokens.refresh_token {
            s.refresh_token = Some(rt);
        }
        tracing::info!(target: "portcullis::auth", event = "refresh", provider = %provider.name(), subject = %s.sub);
        Ok(Some(s))
    }

    fn session_cookies(&self, s: &Session, now: i64) -> Vec<String> {
        match self.sealer.as_ref().and_then(|k| k.seal(Purpose::Session, s)) {
            Some(value) => session::set_chunked(SESSION_COOKIE, &value, (s.exp - now).max(0)),
            None => Vec::new(),
        }
    }

    /// Starts the authorization code flow: remembers state, nonce and the PKCE
    /// verifier in a sealed cookie and sends the browser to the provider.
    async fn begin_login(
        &self,
        provider: &Provider,
        req: &RequestFacts<'_>,
        rd: String,
        now: i64,
    ) -> Decision {
        let Some(sealer) = &self.sealer else {
            return unavailable("no session keys");
        };
        let metadata = match provider.metadata(&self.client).await {
            Ok(m) => m,
            Err(e) => return unavailable(&e.to_string()),
        };
        let attempt = LoginAttempt {
            provider: provider.name().to_string(),
            state: sealer.random_token(),
            nonce: sealer.random_token(),
            verifier: sealer.random_token(),
            rd,
            host: req.host.to_string(),
            exp: now + LOGIN_TTL,
        };
        let challenge = base64_url(digest::digest(&digest::SHA256, attempt.verifier.as_bytes()).as_ref());
        let scopes = provider.settings.scopes.join(" ");
        let redirect_uri = callback_url(req.authority);
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.settings.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scopes)
            .append_pair("state", &attempt.state)
            .append_pair("nonce", &attempt.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let separator = if metadata.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{separator}{}", metadata.authorization_endpoint, query.finish());
        let Some(sealed) = sealer.seal(Purpose::Login, &attempt) else {
            return unavailable("cannot seal the login attempt");
        };
        let mut response = redirect(StatusCode::FOUND, &location);
        append_cookie(
            &mut response,
            &session::cookie(&login_cookie_name(&attempt.state), &sealed, LOGIN_TTL),
        );
        tracing::info!(target: "portcullis::auth", event = "login_started", provider = %provider.name(), host = %req.host);
        Decision::Respond {
            response,
            code: "no_session",
            reason: "login required".into(),
        }
    }

    /// Serves `/.portcullis/*`. `provider_for` names the provider of the route a path
    /// on this host belongs to.
    pub async fn endpoint(
        &self,
        path: &str,
        query: Option<&str>,
        req: &RequestFacts<'_>,
        provider_for: impl Fn(&str) -> Option<String>,
    ) -> (Response<Body>, String) {
        let params: HashMap<String, String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        match path {
            "/.portcullis/start" => {
                let rd = params.get("rd").map(String::as_str).unwrap_or("/");
                let Some(rd) = self.safe_redirect(rd, req.host) else {
                    return (
                        plain(StatusCode::BAD_REQUEST, "rd must be a path on this host"),
                        "unsafe rd".into(),
                    );
                };
                let rd_path = rd.split('?').next().unwrap_or("/");
                let name = params
                    .get("provider")
                    .cloned()
                    .or_else(|| provider_for(rd_path))
                    .or_else(|| {
                        (self.providers.len() == 1)
                            .then(|| self.providers.keys().next().cloned())
                            .flatten()
                    });
                let Some(provider) = name.and_then(|n| self.providers.get(&n).cloned()) else {
                    return (
                        plain(StatusCode::NOT_FOUND, "no OpenID provider for this path"),
                        "no provider".into(),
                    );
                };
                match self.begin_login(&provider, req, rd, now()).await {
                    Decision::Respond { response, reason, .. } => (response, reason),
                    Decision::Allow { .. } => (plain(StatusCode::INTERNAL_SERVER_ERROR, ""), String::new()),
                }
            }
            "/.portcullis/callback" => self.callback(&params, req).await,
            "/.portcullis/sign-out" => self.sign_out(req).await,
            _ => (
                plain(StatusCode::NOT_FOUND, "no such gateway endpoint"),
                "unknown endpoint".into(),
            ),
        }
    }

    async fn callback(
        &self,
        params: &HashMap<String, String>,
        req: &RequestFacts<'_>,
    ) -> (Response<Body>, String) {
        let state = params.get("state").map(String::as_str).unwrap_or("");
        let cookie_name = login_cookie_name(state);
        let refuse = |status: StatusCode, why: &str| {
            tracing::info!(target: "portcullis::auth", event = "login_refused", host = %req.host, reason = %why);
            let mut r = plain(status, why);
            append_cookie(&mut r, &session::cookie(&cookie_name, "", 0));
            (r, why.to_string())
        };
        let Some(sealer) = &self.sealer else {
            return refuse(StatusCode::NOT_FOUND, "authentication is not configured");
        };
        let now = now();
        let attempt = session::read_chunked(req.headers, &cookie_name)
            .and_then(|raw| sealer.open::<LoginAttempt>(Purpose::Login, &raw));
        let Some(attempt) = attempt else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "no login in progress in this browser (or it was tampered with)",
            );
        };
        if attempt.exp < now || attempt.host != req.host {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the login attempt expired or belongs to another host",
            );
        }
        if !same(state.as_bytes(), attempt.state.as_bytes()) {
            return refuse(StatusCode::BAD_REQUEST, "state does not match the login attempt");
        }
        let Some(provider) = self.providers.get(&attempt.provider).cloned() else {
            return refuse(StatusCode::BAD_REQUEST, "unknown provider");
        };
        if let Some(error) = params.get("error") {
            let why = format!(
                "the provider refused the login: {error} {}",
                params.get("error_description").map(String::as_str).unwrap_or("")
            );
            return refuse(StatusCode::UNAUTHORIZED, why.trim());
        }
        let metadata = match provider.metadata(&self.client).await {
            Ok(m) => m,
            Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        // RFC 9207: the iss parameter names who sent this response (mix-up defence).
        match params.get("iss") {
            Some(iss) if *iss != provider.settings.issuer => {
                return refuse(StatusCode::BAD_REQUEST, "iss parameter names another issuer")
            }
            None if metadata.authorization_response_iss_parameter_supported => {
                return refuse(StatusCode::BAD_REQUEST, "iss parameter missing")
            }
            _ => {}
        }
        let Some(code) = params.get("code") else {
            return refuse(StatusCode::BAD_REQUEST, "no code");
        };
        let redirect_uri = callback_url(req.authority);
        let tokens = match provider
            .token(
                &self.client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect_uri),
                    ("code_verifier", &attempt.verifier),
                ],
            )
            .await
        {
            Ok(t) => t,
            Err(e @ IdpError::Refused { .. }) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
            Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let Some(id_token) = tokens.id_token else {
            return refuse(StatusCode::BAD_GATEWAY, "the provider sent no ID token");
        };
        let claims = match provider
            .verify_id_token(&self.client, &id_token, Some(&attempt.nonce), now)
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return refuse(StatusCode::UNAUTHORIZED, &format!("ID token refused: {e}")),
            Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let session = Session {
            p: provider.name().to_string(),
            sub: claims.subject.clone(),
            email: claims.email,
            email_verified: claims.email_verified,
            groups: claims.groups,
            name: claims.name,
            claims: claims.extra,
            exp: now + self.session_lifetime,
            tokens_exp: claims.expires,
            refresh_token: tokens.refresh_token,
            host: req.host.to_string(),
        };
        tracing::info!(target: "portcullis::auth", event = "login", provider = %provider.name(), subject = %session.sub, host = %req.host);
        let mut response = redirect(StatusCode::SEE_OTHER, &attempt.rd);
        for c in self.session_cookies(&session, now) {
            append_cookie(&mut response, &c);
        }
        append_cookie(&mut response, &session::cookie(&cookie_name, "", 0));
        (response, "login".into())
    }

    async fn sign_out(&self, req: &RequestFacts<'_>) -> (Response<Body>, String) {
        let session = self.sealer.as_ref().and_then(|s| {
            session::read_chunked(req.headers, SESSION_COOKIE)
                .and_then(|raw| s.open::<Session>(Purpose::Session, &raw))
        });
        let mut location = "/".to_string();
        if let Some(s) = &session {
            tracing::info!(target: "portcullis::auth", event = "logout", provider = %s.p, subject = %s.sub);
            // RP-initiated logout: end the provider's session too.
            if let Some(p) = self.providers.get(&s.p) {
                if let Ok(metadata) = p.metadata(&self.client).await {
                    if let Some(end) = metadata.end_session_endpoint {
                        let mut q = form_urlencoded::Serializer::new(String::new());
                        q.append_pair("client_id", &p.settings.client_id)
                            .append_pair("post_logout_redirect_uri", &format!("https://{}/", req.authority));
                        let sep = if end.contains('?') { '&' } else { '?' };
                        location = format!("{end}{sep}{}", q.finish());
                    }
                }
            }
        }
        let mut response = redirect(StatusCode::SEE_OTHER, &location);
        for c in session::clear_chunked(SESSION_COOKIE) {
            append_cookie(&mut response, &c);
        }
        (response, "sign-out".into())
    }

    /// Where a login may return to: a path on this host (never `//host` or `/\host`,
    /// which browsers read as another host), or an https URL on this host or an
    /// allowlisted one.
    pub fn safe_redirect(&self, rd: &str, host: &str) -> Option<String> {
        if rd.chars().any(|c| c.is_control() || c == '\\') {
            return None;
        }
        if rd.starts_with('/') && !rd.starts_with("//") {
            return Some(rd.to_string());
        }
        let uri: http::Uri = rd.parse().ok()?;
        let target = uri.host()?.to_ascii_lowercase();
        let allowed = uri.scheme_str() == Some("https")
            && uri.port().is_none_or(|_| target == host)
            && (target == host
                || self
                    .redirect_allowlist
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&target)));
        allowed.then(|| rd.to_string())
    }
}

fn identity(provider: &str, c: Claims, method: AuthMethod) -> Identity {
    Identity {
        provider: provider.to_string(),
        subject: c.subject,
        email: c.email,
        email_verified: c.email_verified,
        groups: c.groups,
        name: c.name,
        claims: c.extra,
        method,
        upstream_headers: Default::default(),
    }
}

/// Each login attempt has its own cookie, named after the start of its `state`, so
/// logins started in two tabs do not overwrite each other.
fn login_cookie_name(state: &str) -> String {
    let id: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect();
    format!("{LOGIN_COOKIE}-{id}")
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn callback_url(authority: &str) -> String {
    format!("https://{authority}/.portcullis/callback")
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// API clients get 401; browsers get sent to log in.
fn wants_api_answer(req: &RequestFacts<'_>) -> bool {
    let h = req.headers;
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let accept = header("accept");
    !matches!(*req.method, Method::GET | Method::HEAD)
        || req.upgrade
        || header("x-requested-with").eq_ignore_ascii_case("XMLHttpRequest")
        || (accept.contains("application/json") && !accept.contains("text/html"))
        || h.contains_key(header::AUTHORIZATION)
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(proxy::full(format!(
        "{} {}\n{text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = plain(status, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn append_cookie(r: &mut Response<Body>, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// 401 with a `WWW-Authenticate` challenge (RFC 6750).
fn challenge(error: &str, description: &str) -> Decision {
    let mut value = "Bearer realm=\"portcullis\"".to_string();
    if !error.is_empty() {
        let clean: String = description
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        value.push_str(&format!(", error=\"{error}\", error_description=\"{clean}\""));
    }
    let mut response = plain(StatusCode::UNAUTHORIZED, description);
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Decision::Respond {
        response,
        code: if error.is_empty() {
            "no_credentials"
        } else {
            "bad_token"
        },
        reason: description.to_string(),
    }
}

fn unavailable(why: &str) -> Decision {
    tracing::error!(target: "portcullis::auth", event = "provider_unavailable", reason = %why);
    Decision::Respond {
        response: plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the identity provider is unavailable",
        ),
        code: "provider_unavailable",
        reason: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn auth(allow: &[&str]) -> Auth {
        Auth {
            providers: HashMap::new(),
            sealer: None,
            client: IdpClient::new().unwrap(),
            session_lifetime: 3600,
            redirect_allowlist: allow.iter().map(|s| s.to_string()).collect(),
            signer: assertion::Signer::generate().unwrap(),
            refreshes: Default::default(),
            opened: Default::default(),
            sticky_secret: None,
        }
    }

    #[tokio::test]
    async fn session_cookies_are_opened_once_and_checked_on_every_request() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let provider = Provider::new(
            portcullis_config::settings::ProviderSettings {
                name: "corp".into(),
                issuer: "https://idp.example.com".into(),
                client_id: "portcullis".into(),
                client_secret: None,
                scopes: Vec::new(),
                audiences: Vec::new(),
                groups_claim: "groups".into(),
                access_token_type: None,
            },
            None,
        );
        let a = Auth {
            sealer: Some(Sealer::new(&[key.into_bytes()]).unwrap()),
            ..auth(&[])
        };
        let now = now();
        let session = Session {
            p: "corp".into(),
            sub: "alice".into(),
            email: None,
            email_verified: false,
            groups: vec!["dev".into()],
            name: None,
            claims: Default::default(),
            exp: now + 3600,
            tokens_exp: now + 600,
            refresh_token: None,
            host: "app.example.com".into(),
        };
        let sealed = a
            .sealer
            .as_ref()
            .unwrap()
            .seal(Purpose::Session, &session)
            .unwrap();
        let check = |cookie: &str, host: &'static str, at: i64| {
            let mut headers = HeaderMap::new();
            let value = format!("theirs=1; {SESSION_COOKIE}={cookie}");
            headers.insert(header::COOKIE, value.parse().unwrap());
            let a = &a;
            let provider = &provider;
            async move {
                let facts = RequestFacts {
                    method: &Method::GET,
                    headers: &headers,
                    host,
                    authority: host,
                    target: "/",
                    upgrade: false,
                };
                a.session(provider, &facts, at)
                    .await
                    .unwrap()
                    .map(|(identity, _)| identity)
            }
        };
        let first = check(&sealed, "app.example.com", now).await.unwrap();
        assert_eq!(*first, Identity::of_session(&session));
        assert_eq!(
            (first.subject.as_str(), first.method),
            ("alice", AuthMethod::Session)
        );
        let again = check(&sealed, "app.example.com", now + 1).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "opened once, then shared");
        // What the cookie was opened for is checked again on every request.
        assert!(check(&sealed, "other.example.com", now).await.is_none());
        assert!(check(&sealed, "app.example.com", now + 3600).await.is_none());
        // Tokens expired and nothing to refresh them with: sign in again.
        assert!(check(&sealed, "app.example.com", now + 601).await.is_none());
        // A forged or foreign cookie is refused and not remembered.
        let foreign = Sealer::new(&[base64::engine::general_purpose::STANDARD
            .encode([8u8; 32])
            .into_bytes()])
        .unwrap()
        .seal(Purpose::Session, &session)
        .unwrap();
        assert!(check(&foreign, "app.example.com", now).await.is_none());
        assert!(check("garbage", "app.example.com", now).await.is_none());
        assert_eq!(a.opened.lock().unwrap().count, 1);
    }

    #[test]
    fn opened_sessions_stay_within_their_capacity() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let a = Auth {
            sealer: Some(Sealer::new(&[key.into_bytes()]).unwrap()),
            ..auth(&[])
        };
        let sealer = a.sealer.as_ref().unwrap();
        let now = now();
        let sealed = |sub: usize, exp: i64| {
            let s = Session {
                p: "corp".into(),
                sub: sub.to_string(),
                email: None,
                email_verified: false,
                groups: Vec::new(),
                name: None,
                claims: Default::default(),
                exp,
                tokens_exp: exp,
                refresh_token: None,
                host: "app.example.com".into(),
            };
            sealer.seal(Purpose::Session, &s).unwrap()
        };
        // Expired sessions are never kept.
        assert!(a.open_session(sealer, &sealed(0, now), now).is_some());
        assert_eq!(a.opened.lock().unwrap().count, 0);
        // Full of live sessions: start over.
        for i in 0..OPENED_CAPACITY {
            a.open_session(sealer, &sealed(i, now + 60), now).unwrap();
        }
        assert_eq!(a.opened.lock().unwrap().count, OPENED_CAPACITY);
        a.open_session(sealer, &sealed(OPENED_CAPACITY, now + 60), now)
            .unwrap();
        assert_eq!(a.opened.lock().unwrap().count, 1);
        // Full of sessions that have ended since: only those are dropped.
        *a.opened.lock().unwrap() = OpenedSessions::default();
        for i in 0..OPENED_CAPACITY {
            let exp = if i % 2 == 0 { now + 10 } else { now + 60 };
            a.open_session(sealer, &sealed(i, exp), now).unwrap();
        }
        a.open_session(sealer, &sealed(OPENED_CAPACITY, now + 60), now + 30)
            .unwrap();
        assert_eq!(a.opened.lock().unwrap().count, OPENED_CAPACITY / 2 + 1);
    }

    #[test]
    fn post_login_redirects_stay_on_this_host_or_the_allowlist() {
        let a = auth(&["docs.example.com"]);
        for ok in [
            "/",
            "/app?x=1",
            "https://app.example.com/x",
            "https://docs.example.com/",
        ] {
            assert!(a.safe_redirect(ok, "app.example.com").is_some(), "{ok}");
        }
        for bad in [
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example/",
            "http://app.example.com/",
            "javascript:alert(1)",
            "https://app.example.com.evil.example/",
            "https://docs.example.com:8443/",
            "/ok\r\nSet-Cookie: x=1",
            "evil.example",
        ] {
            assert!(a.safe_redirect(bad, "app.example.com").is_none(), "{bad}");
        }
    }
}
