//! Authentication end to end, against a real OpenID provider (panva/oidc-provider) and
//! through the gateway over HTTPS: browser login, session reuse and refresh, sign-out,
//! bearer tokens, key rotation, and the attacks each check exists for.

use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::backend::{refused_addr, Backend};
use crate::support::client::{self, request, send_h1, trusting, Reply};
use crate::support::oidc::{Browser, Idp};
use crate::support::{ingress, service, Gateway, Pki};

const CLIENT_SECRET: &str = "test-client-secret-with-enough-entropy-0123456789";
/// base64 of "0123456789abcdef0123456789abcdef"
const SESSION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const API_AUDIENCE: &str = "urn:portcullis:api";

struct World {
    pki: Pki,
    idp: Idp,
    gw: Gateway,
    app: Backend,
}

impl World {
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.gw.https.port())
    }

    async fn register(&self) {
        let port = self.gw.https.port();
        self.idp
            .register(json!({
                "client_id": "portcullis",
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [format!("https://app.test:{port}/.portcullis/callback")],
                "post_logout_redirect_uris": [format!("https://app.test:{port}/")],
                "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
                "id_token_signed_response_alg": "ES256",
            }))
            .await;
    }

    /// One HTTPS request on a fresh connection with extra headers.
    async fn call(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let stream = client::tls(self.gw.https, host, trusting(&self.pki, &[b"http/1.1"]))
            .await
            .unwrap();
        let mut send = client::h1(stream).await;
        let mut req = request("GET", host, path, "");
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        send_h1(&mut send, req).await.unwrap()
    }

    async fn bearer(&self, host: &str, token: &str) -> Reply {
        self.call(host, "/data", &[("authorization", &format!("Bearer {token}"))])
            .await
    }
}

fn manifests(pki: &Pki, app: &Backend) -> String {
    [
        service("ns", "app", &[app.addr]),
        pki.tls_secret("ns", "tls", &["app.test", "api.test", "pub.test", "assert.test"]),
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: oidc, namespace: ns}\nstringData:\n".to_string()
            + &format!("  clientSecret: {CLIENT_SECRET}\n  sessionKey: {SESSION_KEY}\n"),
        ingress(
            "ns",
            "app",
            &[("portcullis.dev/auth", "oidc")],
            &[("app.test", "tls")],
            &[("app.test", "/", "app")],
        ),
        ingress(
            "ns",
            "api",
            &[("portcullis.dev/auth", "jwt")],
            &[("api.test", "tls")],
            &[("api.test", "/", "app")],
        ),
        ingress(
            "ns",
            "public",
            &[],
            &[("pub.test", "tls")],
            &[("pub.test", "/", "app")],
        ),
        ingress(
            "ns",
            "asserted",
            &[
                ("portcullis.dev/auth", "jwt"),
                ("portcullis.dev/identity-assertion", "true"),
            ],
            &[("assert.test", "tls")],
            &[("assert.test", "/", "app")],
        ),
    ]
    .concat()
}

fn config(issuer: &str) -> String {
    format!(
        "oidc:\n  providers:\n  - name: test\n    issuer: {issuer}\n    clientId: portcullis\n    clientSecret: {{secret: ns/oidc, key: clientSecret}}\n    scopes: [openid, email, profile, groups]\n    audiences: [{API_AUDIENCE}]\n    accessTokenType: at+jwt\n  sessionKeys: [{{secret: ns/oidc, key: sessionKey}}]\n"
    )
}

async fn world(id_token_ttl: u64) -> World {
    world_with(id_token_ttl, |_| String::new(), "").await
}

/// A world with more manifests (given the test CA) and more config lines.
async fn world_with(id_token_ttl: u64, extra: impl FnOnce(&Pki) -> String, extra_config: &str) -> World {
    let pki = Pki::new();
    let idp = Idp::start(0, "a", id_token_ttl);
    let app = Backend::named("app").await;
    let manifests = format!("{}{}", manifests(&pki, &app), extra(&pki));
    let gw = Gateway::start(&manifests, &format!("{}{extra_config}", config(&idp.issuer)));
    let w = World { pki, idp, gw, app };
    w.register().await;
    w
}

fn last_identity(app: &Backend) -> (String, String, String) {
    let seen = app.requests().pop().expect("the backend saw a request");
    let h = |n: &str| {
        seen.headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (
        h("x-auth-request-user"),
        h("x-auth-request-email"),
        h("x-auth-request-groups"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_session_reuse_forged_headers_and_sign_out() {
    let w = world(300).await;
    let target = w.url("app.test", "/private/page?x=1");
    let mut browser = Browser::new(w.gw.https, &w.pki);

    let (reply, landed) = browser.login(&target, "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(landed, target, "back where the login started");
    assert_eq!(reply.text(), "app /private/page?x=1");
    assert_eq!(
        last_identity(&w.app),
        ("alice".into(), "alice@example.com".into(), "admins,dev".into())
    );
    let session = browser
        .cookie("app.test", "__Host-portcullis-session")
        .expect("session cookie");
    let seen = w.app.requests().pop().unwrap();
    assert!(
        seen.headers
            .get("cookie")
            .is_none_or(|c| !c.to_str().unwrap().contains("portcullis")),
        "the session cookie never reaches the backend"
    );

    // The session is reused: no trip to the provider.
    let reply = browser.request("GET", &w.url("app.test", "/again"), None).await;
    assert_eq!(reply.status, StatusCode::OK);

    // Identity headers forged by the client are replaced, in every spelling.
    browser.extra = vec![
        ("X-Auth-Request-User".into(), "mallory".into()),
        ("x_auth_request_groups".into(), "root".into()),
        ("X-Auth-Request-Email".into(), "mallory@example.com".into()),
    ];
    browser.request("GET", &w.url("app.test", "/forged"), None).await;
    assert_eq!(
        last_identity(&w.app),
        ("alice".into(), "alice@example.com".into(), "admins,dev".into())
    );
    let seen = w.app.requests().pop().unwrap();
    assert_eq!(seen.headers.get_all("x-auth-request-user").iter().count(), 1);
    assert!(!seen.headers.contains_key("x_auth_request_groups"));
    browser.extra.clear();

    // Sign-out clears the session and ends the provider's session (RP-initiated logout).
    let out = browser
        .request("GET", &w.url("app.test", "/.portcullis/sign-out"), None)
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.header("location")
            .starts_with(&format!("{}/session/end", w.idp.issuer)),
        "{}",
        out.header("location")
    );
    assert!(browser.cookie("app.test", "__Host-portcullis-session").is_none());
    let reply = browser.request("GET", &target, None).await;
    assert_eq!(reply.status, StatusCode::FOUND, "signed out: back to login");
    assert!(reply.header("location").starts_with(&w.idp.issuer));

    // Auth events are logged, and no secret is.
    for event in ["login_started", "\"login\"", "logout"] {
        assert!(w.gw.wait_for_log(event), "no {event} event:\n{}", w.gw.logs());
    }
    let logs = w.gw.logs();
    assert!(
        !logs.contains(&session[..40]),
        "the session cookie leaked into the log"
    );
    assert!(!logs.contains("eyJ"), "a token leaked into the log");
    assert!(!logs.contains(CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refreshed_with_the_refresh_token() {
    let w = world(1).await;
    let target = w.url("app.test", "/r");
    let mut browser = Browser::new(w.gw.https, &w.pki);
    let (reply, _) = browser.login(&target, "bob").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let first = browser.cookie("app.test", "__Host-portcullis-session").unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A page load: several requests at once with the same expired session share one
    // refresh (the provider would revoke a refresh token used twice).
    let cookie = browser.jar["app.test"]
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let world = &w;
    let loads = (0..5).map(|i| {
        let path = format!("/asset/{i}");
        let cookie = cookie.clone();
        async move {
            world
                .call("app.test", &path, &[("cookie", &cookie), ("accept", "text/html")])
                .await
                .status
        }
    });
    for status in futures_util::future::join_all(loads).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert!(w.gw.wait_for_log("\"refresh\""), "{}", w.gw.logs());
    assert_eq!(
        w.gw.logs().matches("\"event\":\"refresh\"").count(),
        1,
        "{}",
        w.gw.logs()
    );
    let reply = browser.request("GET", &target, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let renewed = browser.cookie("app.test", "__Host-portcullis-session").unwrap();
    assert_ne!(first, renewed, "a refreshed session is re-sealed");
    assert_eq!(last_identity(&w.app).0, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_api_clients() {
    let w = world(300).await;
    let token = w.idp.client_credentials("portcullis", CLIENT_SECRET).await;
    let reply = w.bearer("api.test", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(last_identity(&w.app).0, "portcullis");
    // Naming identity headers in Connection cannot remove the gateway's, nor let a
    // client's through.
    let reply = w
        .call(
            "api.test",
            "/data",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("connection", "x-auth-request-user, x-auth-request-groups"),
                ("x-auth-request-groups", "root"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = w.app.requests().pop().unwrap();
    assert_eq!(seen.headers["x-auth-request-user"], "portcullis");
    assert!(
        !seen.headers.contains_key("x-auth-request-groups"),
        "{:?}",
        seen.headers
    );
    // Accepted on browser-login routes too.
    assert_eq!(w.bearer("app.test", &token).await.status, StatusCode::OK);

    // No credentials: 401 with a challenge for API clients, never a login page.
    let reply = w.call("api.test", "/data", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), "Bearer realm=\"portcullis\"");
    let reply = w
        .call("app.test", "/data", &[("accept", "application/json")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = w
        .call("app.test", "/data", &[("x-requested-with", "XMLHttpRequest")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A browser is sent to log in.
    let reply = w.call("app.test", "/data", &[("accept", "text/html")]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    // A bad token is refused, not redirected.
    let reply = w.bearer("app.test", "not-a-jwt").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply
        .header("www-authenticate")
        .contains("error=\"invalid_token\""));
    // A signed identity assertion, verifiable with the gateway's published keys.
    let reply = w.bearer("assert.test", &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = w.app.requests().pop().unwrap();
    let assertion = seen.headers["x-portcullis-assertion"]
        .to_str()
        .unwrap()
        .to_string();
    let jwks = client::http_get(w.gw.http, "assert.test", "/.portcullis/jwks.json").await;
    assert_eq!(jwks.header("content-type"), "application/jwk-set+json");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.set_audience(&["ns/app"]);
    validation.set_issuer(&["portcullis"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &assertion,
        &jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "portcullis");
    assert_eq!(claims["amr"][0], "bearer");
    // A client cannot bring its own assertion to a route that sends none.
    let reply = w
        .call("pub.test", "/", &[("x-portcullis-assertion", &assertion)])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!w
        .app
        .requests()
        .pop()
        .unwrap()
        .headers
        .contains_key("x-portcullis-assertion"));

    // Public routes need nothing.
    assert_eq!(w.call("pub.test", "/", &[]).await.status, StatusCode::OK);
    // Plain HTTP to an authenticated route goes to HTTPS first.
    let reply = client::http_get(w.gw.http, "api.test", "/data").await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    // The token was accepted on four requests, and verified (and logged) once.
    assert!(w.gw.wait_for_log("token_accepted"), "{}", w.gw.logs());
    assert_eq!(
        w.gw.logs().matches("\"event\":\"token_accepted\"").count(),
        1,
        "{}",
        w.gw.logs()
    );
}

/// Tokens that differ from a valid one in exactly one way, each signed with the
/// provider's real key unless the point is the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_tampered_tokens_are_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let w = world(300).await;
    let (kid, pem) = w.idp.signing_key().await;
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let claims = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = json!({
            "iss": w.idp.issuer, "aud": API_AUDIENCE, "sub": "forger", "iat": now, "exp": now + 300,
        });
        edit(&mut c);
        c
    };
    let header = |edit: &dyn Fn(&mut Header)| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.clone());
        h.typ = Some("at+jwt".into());
        edit(&mut h);
        h
    };
    let sign = |h: Header, c: serde_json::Value| jsonwebtoken::encode(&h, &c, &key).unwrap();

    // The control: well formed and properly signed, so every refusal below is for the
    // one thing that differs.
    let valid = sign(header(&|_| {}), claims(&|_| {}));
    assert_eq!(w.bearer("api.test", &valid).await.status, StatusCode::OK);

    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims(&|_| {}).to_string())
    );
    // HS256 keyed with the provider's public key: the classic algorithm confusion.
    let public_pem = pem.clone();
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some(kid.clone()),
            typ: Some("at+jwt".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(&|_| {}),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let mut tampered = valid.clone();
    tampered.insert(tampered.find('.').unwrap() + 2, 'A');
    let cases: Vec<(&str, String)> = vec![
        ("alg none", unsigned),
        ("HS256 with the public key", confused),
        ("tampered payload", tampered),
        (
            "wrong issuer",
            sign(
                header(&|_| {}),
                claims(&|c| c["iss"] = json!("https://evil.example")),
            ),
        ),
        (
            "wrong audience",
            sign(header(&|_| {}), claims(&|c| c["aud"] = json!("urn:someone-else"))),
        ),
        (
            "expired",
            sign(header(&|_| {}), claims(&|c| c["exp"] = json!(now - 120))),
        ),
        (
            "not valid yet",
            sign(header(&|_| {}), claims(&|c| c["nbf"] = json!(now + 120))),
        ),
        (
            "unknown kid",
            sign(header(&|h| h.kid = Some("no-such-key".into())), claims(&|_| {})),
        ),
        (
            "wrong typ",
            sign(header(&|h| h.typ = Some("JWT".into())), claims(&|_| {})),
        ),
        (
            "embedded jku",
            sign(
                header(&|h| h.jku = Some("https://evil.example/jwks".into())),
                claims(&|_| {}),
            ),
        ),
        (
            "embedded jwk",
            sign(
                header(&|h| {
                    h.jwk = Some(serde_json::from_value(json!({"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})).unwrap())
                }),
                claims(&|_| {}),
            ),
        ),
    ];
    for (what, token) in cases {
        let reply = w.bearer("api.test", &token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what} was accepted");
        assert!(
            reply.header("www-authenticate").contains("invalid_token"),
            "{what}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while w.gw.logs().matches("token_refused").count() < 11 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = w.gw.logs().matches("token_refused").count();
    assert!(refused >= 11, "each refusal is logged ({refused})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_rotation_needs_no_restart() {
    let mut w = world(300).await;
    let old = w.idp.client_credentials("portcullis", CLIENT_SECRET).await;
    assert_eq!(w.bearer("api.test", &old).await.status, StatusCode::OK);
    // The provider restarts on the same address with a new signing key.
    let addr = w.idp.addr;
    drop(std::mem::replace(&mut w.idp, Idp::start(0, "a", 300)));
    let port = addr.port();
    let mut restarted = None;
    for _ in 0..50 {
        // The old process must release the port first.
        let idp = std::panic::catch_unwind(|| Idp::start(port, "b", 300));
        if let Ok(idp) = idp {
            restarted = Some(idp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.idp = restarted.expect("provider restarted on its port");
    w.register().await;
    let new = w.idp.client_credentials("portcullis", CLIENT_SECRET).await;
    // Unknown kid: one key-set refresh (rate limited to one per few seconds).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let reply = w.bearer("api.test", &new).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // Tokens signed with the retired key no longer verify.
    assert_eq!(w.bearer("api.test", &old).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_session_cookies_are_refused() {
    use portcullis::auth::session::{Purpose, Sealer, Session};
    let w = world(300).await;
    let target = w.url("app.test", "/s");
    let mut browser = Browser::new(w.gw.https, &w.pki);
    let (reply, _) = browser.login(&target, "alice").await;
    assert_eq!(reply.status, StatusCode::OK);
    let good = browser.cookie("app.test", "__Host-portcullis-session").unwrap();

    let forged_session = Session {
        p: "test".into(),
        sub: "admin".into(),
        email: Some("admin@example.com".into()),
        email_verified: true,
        groups: vec!["admins".into()],
        name: None,
        claims: Default::default(),
        exp: jsonwebtoken::get_current_timestamp() as i64 + 3600,
        tokens_exp: jsonwebtoken::get_current_timestamp() as i64 + 3600,
        refresh_token: None,
        host: "app.test".into(),
    };
    let other_key = Sealer::new(&[b"OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk=".to_vec()]).unwrap();
    let right_key = Sealer::new(&[SESSION_KEY.as_bytes().to_vec()]).unwrap();
    let other_host = Session {
        host: "pub.test".into(),
        ..forged_session.clone()
    };
    let mut flipped = good.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let cases = [
        ("tampered", String::from_utf8(flipped).unwrap()),
        (
            "sealed with a foreign key",
            other_key.seal(Purpose::Session, &forged_session).unwrap(),
        ),
        (
            "issued for another host",
            right_key.seal(Purpose::Session, &other_host).unwrap(),
        ),
        (
            "a login cookie replayed as a session",
            right_key.seal(Purpose::Login, &forged_session).unwrap(),
        ),
    ];
    for (what, value) in cases {
        browser.set_cookie("app.test", "__Host-portcullis-session", &value);
        let reply = browser.request("GET", &target, None).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{what}: must go back to login");
    }
    // With the right key, host and provider, the gateway trusts its own seal.
    browser.set_cookie(
        "app.test",
        "__Host-portcullis-session",
        &right_key.seal(Purpose::Session, &forged_session).unwrap(),
    );
    assert_eq!(browser.request("GET", &target, None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_replay_and_open_redirects_are_refused() {
    let w = world(300).await;
    let mut browser = Browser::new(w.gw.https, &w.pki);
    // Start a login, then come back with a state that is not ours.
    let start = browser.request("GET", &w.url("app.test", "/x"), None).await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location: http::Uri = start.header("location").parse().unwrap();
    let state = form_urlencoded::parse(location.query().unwrap().as_bytes())
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    // Same cookie, different state: the login attempt's state must match in full.
    let forged = format!("{}{}", &state[..16], "x".repeat(state.len() - 16));
    let reply = browser
        .request(
            "GET",
            &w.url(
                "app.test",
                &format!("/.portcullis/callback?code=abc&state={forged}"),
            ),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("state does not match"), "{}", reply.text());
    // A state no login in this browser started.
    let reply = browser
        .request(
            "GET",
            &w.url("app.test", "/.portcullis/callback?code=abc&state=not-the-state"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // A callback with no login started in this browser.
    let mut stranger = Browser::new(w.gw.https, &w.pki);
    let reply = stranger
        .request(
            "GET",
            &w.url("app.test", "/.portcullis/callback?code=abc&state=x"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Two logins started in two tabs do not overwrite each other.
    let mut tabs = Browser::new(w.gw.https, &w.pki);
    let first = tabs.request("GET", &w.url("app.test", "/tab-one"), None).await;
    let second = tabs.request("GET", &w.url("app.test", "/tab-two"), None).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::FOUND, StatusCode::FOUND)
    );
    let (reply, landed) = tabs.login(first.header("location"), "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(landed, w.url("app.test", "/tab-one"));

    // A completed callback cannot be replayed.
    let mut browser = Browser::new(w.gw.https, &w.pki);
    let (reply, _) = browser.login(&w.url("app.test", "/y"), "alice").await;
    assert_eq!(reply.status, StatusCode::OK);
    let callback = browser
        .history
        .iter()
        .find(|u| u.contains("/.portcullis/callback?"))
        .cloned()
        .expect("the login went through the callback");
    let replay = browser.request("GET", &callback, None).await;
    assert_eq!(
        replay.status,
        StatusCode::BAD_REQUEST,
        "a used callback must not log in again"
    );

    for rd in [
        "//evil.test/x",
        "https://evil.test/",
        "/\\evil.test",
        "https://app.test.evil.test/",
    ] {
        let encoded: String = form_urlencoded::byte_serialize(rd.as_bytes()).collect();
        let reply = browser
            .request(
                "GET",
                &w.url("app.test", &format!("/.portcullis/start?rd={encoded}")),
                None,
            )
            .await;
        assert_ne!(reply.status, StatusCode::FOUND, "rd={rd} must not start a login");
    }
    let reply = browser
        .request("GET", &w.url("app.test", "/.portcullis/start?rd=/after"), None)
        .await;
    assert_eq!(reply.status, StatusCode::FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_fails_closed() {
    let pki = Pki::new();
    let app = Backend::named("app").await;
    let down = refused_addr().await;
    let gw = Gateway::start(&manifests(&pki, &app), &config(&format!("http://{down}")));
    let w = World {
        pki,
        idp: Idp::start(0, "a", 300),
        gw,
        app,
    };
    assert!(w.gw.wait_for_log("provider unavailable"), "{}", w.gw.logs());
    let browser = w.call("app.test", "/", &[("accept", "text/html")]).await;
    assert_eq!(browser.status, StatusCode::SERVICE_UNAVAILABLE);
    let api = w.bearer("api.test", "eyJhbGciOiJFUzI1NiJ9.e30.sig").await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(w.call("pub.test", "/", &[]).await.status, StatusCode::OK);
    assert!(w
        .app
        .requests()
        .iter()
        .all(|r| r.headers.get("host").unwrap() == "pub.test"));
}

/// A real browser (Debian's chromium, driven by playwright-core) follows the gateway's
/// login redirect, signs in on the provider's page and reaches the protected backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_logs_in_through_the_gateway() {
    let w = world(300).await;
    let url = w.url("app.test", "/browser");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/browser-login.mjs");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed: apt-get install chromium (.ci/run does)"
    );
    let mut node = std::process::Command::new("node");
    node.arg(script)
        .arg(&url)
        .arg("carol")
        .arg("MAP app.test 127.0.0.1");
    let stdout = crate::support::stdout_of(node).await;
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["url"], w.url("app.test", "/browser"));
    assert_eq!(result["text"], "app /browser");
    assert_eq!(last_identity(&w.app).0, "carol");
    let session = result["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "__Host-portcullis-session")
        .expect("the browser holds the session cookie");
    assert_eq!(session["secure"], true);
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");
}

/// Who may pass: groups, verified email domains and claims, each rule on its own route
/// and all of them together; every decision lands in the audit log exactly once, and no
/// token or cookie lands in any log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_by_group_email_domain_and_claim_with_an_audit_trail() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_file = audit_dir.path().join("audit.log");
    let hosts = ["admins.test", "domain.test", "claims.test", "strict.test"];
    let w = world_with(
        300,
        |pki| {
            [
                pki.tls_secret("ns", "policy-tls", &hosts),
                ingress(
                    "ns",
                    "admins",
                    &[
                        ("portcullis.dev/auth", "oidc"),
                        ("portcullis.dev/allow-groups", "admins, sre"),
                    ],
                    &[("admins.test", "policy-tls")],
                    &[("admins.test", "/", "app")],
                ),
                ingress(
                    "ns",
                    "domain",
                    &[
                        ("portcullis.dev/auth", "oidc"),
                        ("portcullis.dev/allow-email-domains", "example.com"),
                    ],
                    &[("domain.test", "policy-tls")],
                    &[("domain.test", "/", "app")],
                ),
                ingress(
                    "ns",
                    "claims",
                    &[
                        ("portcullis.dev/auth", "jwt"),
                        ("portcullis.dev/require-claims", "scope=api, scope=admin"),
                    ],
                    &[("claims.test", "policy-tls")],
                    &[("claims.test", "/", "app")],
                ),
                ingress(
                    "ns",
                    "strict",
                    &[
                        ("portcullis.dev/auth", "jwt"),
                        ("portcullis.dev/require-claims", "scope=admin"),
                    ],
                    &[("strict.test", "policy-tls")],
                    &[("strict.test", "/", "app")],
                ),
            ]
            .concat()
        },
        &format!("auditLog: {{path: {}}}\n", audit_file.display()),
    )
    .await;
    let port = w.gw.https.port();
    let mut redirects = vec![];
    for host in ["admins.test", "domain.test"] {
        redirects.push(format!("https://{host}:{port}/.portcullis/callback"));
    }
    redirects.push(format!("https://app.test:{port}/.portcullis/callback"));
    w.idp
        .register(json!({
            "client_id": "portcullis",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirects,
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
            "id_token_signed_response_alg": "ES256",
        }))
        .await;

    // alice is in admins; bob is not.
    let mut alice = Browser::new(w.gw.https, &w.pki);
    let (reply, _) = alice.login(&w.url("admins.test", "/console"), "alice").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mut bob = Browser::new(w.gw.https, &w.pki);
    let (reply, _) = bob.login(&w.url("admins.test", "/console"), "bob").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("not in an allowed group"));
    // Both have verified example.com addresses.
    let (reply, _) = bob.login(&w.url("domain.test", "/d"), "bob").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // Claims on bearer tokens: the token's scope is "api".
    let token = w.idp.client_credentials("portcullis", CLIENT_SECRET).await;
    assert_eq!(w.bearer("claims.test", &token).await.status, StatusCode::OK);
    let reply = w.bearer("strict.test", &token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("claim scope"), "{}", reply.text());

    // The audit trail: one event per request, with the decision and its reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let events = loop {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let last_seen = events
            .iter()
            .any(|e| e["host"] == "strict.test" && e["status"] == 403);
        if last_seen || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "config" && e["generation"] == 1),
        "{events:?}\n{}",
        w.gw.logs()
    );
    let access: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "access").collect();
    let mut ids = std::collections::HashSet::new();
    for e in &access {
        assert!(
            ids.insert(e["request_id"].as_str().unwrap().to_string()),
            "request logged twice: {e}"
        );
    }
    let find = |host: &str, status: u16| {
        access
            .iter()
            .find(|e| e["host"] == host && e["status"] == status)
            .unwrap_or_else(|| panic!("no audit event for {host} {status}: {access:?}"))
    };
    let denied = find("admins.test", 403);
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "group_not_allowed");
    assert_eq!(denied["identity"]["subject"], "bob");
    assert_eq!(denied["identity"]["method"], "session");
    assert_eq!(denied["route"]["ingress"], "ns/admins");
    let allowed = find("admins.test", 200);
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["identity"]["groups"], json!(["admins", "dev"]));
    assert!(allowed["bytes_out"].as_u64().unwrap() > 0);
    assert!(allowed["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    let login = access
        .iter()
        .find(|e| e["host"] == "admins.test" && e["status"] == 302)
        .expect("the login redirect is audited");
    assert_eq!(
        (login["decision"].as_str(), login["reason"].as_str()),
        (Some("redirect"), Some("no_session"))
    );
    assert_eq!(find("claims.test", 200)["identity"]["method"], "bearer");
    assert_eq!(find("strict.test", 403)["reason"], "claim_mismatch");

    // No secret in any log: tokens, session cookies, the client secret.
    let all_logs = format!(
        "{}\n{}",
        w.gw.logs(),
        std::fs::read_to_string(&audit_file).unwrap()
    );
    let session = alice.cookie("admins.test", "__Host-portcullis-session").unwrap();
    for secret in [
        &token[..],
        &token[token.len() - 40..],
        &session[..30],
        CLIENT_SECRET,
        SESSION_KEY,
    ] {
        assert!(!all_logs.contains(secret), "a secret reached the logs");
    }
    assert!(!all_logs.contains("eyJ"), "a JWT reached the logs");
    let metrics = client::http_get(w.gw.admin, "admin", "/metrics").await.text();
    assert!(
        metrics.contains("portcullis_access_decisions_total{ingress=\"ns/admins\",decision=\"deny\",reason=\"group_not_allowed\"} 1"),
        "{metrics}"
    );
}
