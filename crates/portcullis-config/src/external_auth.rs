//! External authentication, ingress-nginx style: before a request goes to its
//! backend, the gateway asks an auth service (typically oauth2-proxy's
//! `/oauth2/auth`) whether it may pass. This module turns the
//! `nginx.ingress.kubernetes.io/auth-*` annotations into a typed [`ExternalAuth`]; the
//! gateway's checker makes the calls. ingress-nginx pastes these values into its
//! nginx configuration, so they may hold nginx variables (`$host`,
//! `$escaped_request_uri`); nothing here is templated. The one concession is the
//! sign-in URL's redirect parameter: `rd=$escaped_request_uri` and the like are
//! understood and replaced by the gateway's own, properly encoded value.
//!
//! Semantics follow ingress-nginx's `internal/ingress/annotations/authreq` (what is
//! valid) and `rootfs/etc/nginx/template/nginx.tmpl` (what the subrequest carries and
//! how its answer is read).

use http::{HeaderName, HeaderValue, Method, Uri};

/// The annotations read here, without the `nginx.ingress.kubernetes.io/` prefix.
pub const ANNOTATIONS: &[&str] = &[
    "auth-url",
    "auth-method",
    "auth-signin",
    "auth-signin-redirect-param",
    "auth-response-headers",
    "auth-request-redirect",
    "auth-always-set-cookie",
];

/// ingress-nginx external-auth annotations that are only about caching and
/// connection reuse; without them the behaviour is the same, only uncached.
pub const IGNORED: &[&str] = &[
    "auth-cache-key",
    "auth-cache-duration",
    "auth-keepalive",
    "auth-keepalive-requests",
    "auth-keepalive-timeout",
    "auth-keepalive-share-vars",
];

/// ingress-nginx external-auth annotations that change what the auth service is told
/// or how its answer is used. They are refused, not ignored, because ignoring them
/// could change who gets in.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "auth-snippet",
        "snippets are raw nginx configuration and are never supported",
    ),
    (
        "auth-proxy-set-headers",
        "extra headers for the auth service from a ConfigMap are not supported",
    ),
];

/// The parameter of the sign-in URL that carries the original URL, when
/// `auth-signin-redirect-param` is not set (ingress-nginx's default).
pub const DEFAULT_REDIRECT_PARAM: &str = "rd";

/// Methods `auth-method` may name: ingress-nginx's list without CONNECT and TRACE,
/// which cannot carry the auth URL's path or echo the caller's credentials back.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Headers the auth service's answer may not set on the upstream request: they frame
/// the message or belong to one connection, so copying them invites request smuggling.
const UNCOPYABLE: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
];

/// One route's external authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAuth {
    /// `auth-url`: where the check goes; an absolute `http` or `https` URL without
    /// user info or fragment.
    pub url: Uri,
    /// `auth-method`; GET when not set (as the nginx `auth_request` subrequest).
    pub method: Method,
    /// `auth-signin` (with `auth-signin-redirect-param`): where a 401 sends the
    /// browser. Without it, a 401 is passed to the client as is.
    pub signin: Option<SignIn>,
    /// `auth-response-headers`: copied from a successful check onto the upstream
    /// request, replacing whatever the client sent under those names. Lower case,
    /// no duplicates.
    pub response_headers: Vec<HeaderName>,
    /// `auth-request-redirect`: the fixed `X-Auth-Request-Redirect` value; when
    /// `None` the checker sends the original request URI, as ingress-nginx does.
    pub request_redirect: Option<HeaderValue>,
    /// `auth-always-set-cookie`: also pass the auth service's `Set-Cookie` to the
    /// client when it denies (401/403); by default only on success and on the
    /// sign-in redirect. Default `false`.
    pub always_set_cookie: bool,
}

/// Where to send a browser whose check answered 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The sign-in URL as written, minus any templated redirect parameter.
    base: String,
    /// Name of the redirect parameter.
    param: String,
    /// What the gateway adds as the redirect parameter.
    redirect: Redirect,
}

/// The value of the redirect parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Redirect {
    /// The original URL, `scheme://host/path?query` (ingress-nginx's default, and
    /// what `rd=https://$host$escaped_request_uri` asks for).
    FullUrl,
    /// Only `/path?query` (what `rd=$escaped_request_uri` asks for).
    PathOnly,
    /// The sign-in URL already names a fixed target; ingress-nginx then adds nothing.
    Fixed,
}

impl SignIn {
    /// The `Location` for a browser whose original URL (`scheme://host/path?query`)
    /// needs a login: the sign-in URL with the redirect parameter, form-encoded.
    pub fn location(&self, original_url: &str) -> String {
        let value = match self.redirect {
            Redirect::Fixed => return self.base.clone(),
            Redirect::FullUrl => original_url,
            Redirect::PathOnly => path_and_query(original_url),
        };
        let sep = if self.base.contains('?') { '&' } else { '?' };
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        format!("{}{sep}{}={encoded}", self.base, self.param)
    }

    /// The sign-in URL, without the redirect parameter the gateway adds.
    pub fn url(&self) -> &str {
        &self.base
    }
}

/// `/path?query` of an absolute URL; the URL itself if it has no authority.
fn path_and_query(url: &str) -> &str {
    let Some(after_scheme) = url.find("://").map(|i| &url[i + 3..]) else {
        return url;
    };
    match after_scheme.find(['/', '?']) {
        Some(i) => &after_scheme[i..],
        None => "/",
    }
}

/// An annotation that cannot be used, and why. Never echoes `auth-url`, which may
/// carry credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{annotation}: {reason}")]
pub struct ExternalAuthError {
    /// The annotation name without the `nginx.ingress.kubernetes.io/` prefix.
    pub annotation: &'static str,
    pub reason: String,
}

fn fail(annotation: &'static str, reason: impl Into<String>) -> ExternalAuthError {
    ExternalAuthError {
        annotation,
        reason: reason.into(),
    }
}

impl ExternalAuth {
    /// Reads the external-auth annotations of one Ingress; `get` looks one up by its
    /// name without the `nginx.ingress.kubernetes.io/` prefix. `Ok(None)` when
    /// `auth-url` is absent and so are the others; any `auth-*` setting without
    /// `auth-url`, or any entry of [`REFUSED`], is an error, so that a route meant
    /// to be protected is never served open.
    pub fn from_annotations<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<ExternalAuth>, ExternalAuthError> {
        for (name, why) in REFUSED {
            if get(name).is_some() {
                return Err(fail(name, *why));
            }
        }
        let Some(url) = get("auth-url") else {
            if let Some(name) = ANNOTATIONS[1..].iter().find(|n| get(n).is_some()) {
                return Err(fail(
                    name,
                    "has no effect without auth-url: set auth-url too (the Ingress is rejected rather than served unprotected)",
                ));
            }
            return Ok(None);
        };
        let param = match get("auth-signin-redirect-param") {
            Some(p) => parse_redirect_param(p)?,
            None => DEFAULT_REDIRECT_PARAM.to_string(),
        };
        Ok(Some(ExternalAuth {
            url: parse_auth_url(url)?,
            method: get("auth-method")
                .map(parse_method)
                .transpose()?
                .unwrap_or(Method::GET),
            signin: get("auth-signin").map(|s| parse_signin(s, &param)).transpose()?,
            response_headers: get("auth-response-headers")
                .map(parse_response_headers)
                .transpose()?
                .unwrap_or_default(),
            request_redirect: get("auth-request-redirect")
                .map(parse_request_redirect)
                .transpose()?,
            always_set_cookie: match get("auth-always-set-cookie").map(str::trim) {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(fail("auth-always-set-cookie", "must be \"true\" or \"false\"")),
            },
        }))
    }
}

const NO_VARIABLES: &str =
    "nginx variables ($host, $request_uri, ...) are not expanded by Portcullis: write the fixed value";

/// `auth-url`: an absolute http(s) URL such as
/// `http://oauth2-proxy.auth.svc.cluster.local/oauth2/auth`.
pub fn parse_auth_url(value: &str) -> Result<Uri, ExternalAuthError> {
    const A: &str = "auth-url";
    let value = value.trim();
    if value.contains('$') {
        return Err(fail(
            A,
            format!("{NO_VARIABLES}, like http://oauth2-proxy.auth.svc.cluster.local/oauth2/auth"),
        ));
    }
    let uri = absolute_url(value).map_err(|why| fail(A, why))?;
    Ok(uri)
}

/// Checks an absolute http(s) URL; the reason never quotes the URL.
fn absolute_url(value: &str) -> Result<Uri, &'static str> {
    if value.contains(['#', '\\']) || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must be a URL without fragment, backslash, spaces or control characters");
    }
    let uri: Uri = value
        .parse()
        .map_err(|_| "is not a valid absolute URL like https://auth.example.com/check")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("must be an absolute http:// or https:// URL");
    }
    let Some(authority) = uri.authority() else {
        return Err("must be an absolute http:// or https:// URL");
    };
    if authority.as_str().contains('@') {
        return Err("must not carry user info (user:password@): credentials do not belong in annotations");
    }
    if authority.host().is_empty() {
        return Err("has no host");
    }
    Ok(uri)
}

/// `auth-method`: one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (upper case,
/// as ingress-nginx requires).
pub fn parse_method(value: &str) -> Result<Method, ExternalAuthError> {
    let value = value.trim();
    if !METHODS.contains(&value) {
        return Err(fail(
            "auth-method",
            format!("{value:?} is not one of {}", METHODS.join(", ")),
        ));
    }
    Method::from_bytes(value.as_bytes()).map_err(|_| fail("auth-method", "is not an HTTP method"))
}

/// `auth-response-headers`: a comma-separated list of header names (ingress-nginx's
/// rule: letters, digits, `-` and `_`), minus those that frame the message.
pub fn parse_response_headers(value: &str) -> Result<Vec<HeaderName>, ExternalAuthError> {
    const A: &str = "auth-response-headers";
    let mut names: Vec<HeaderName> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !item
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(fail(
                A,
                format!("{item:?} is not a header name (letters, digits, - and _)"),
            ));
        }
        let name = HeaderName::from_bytes(item.as_bytes())
            .map_err(|_| fail(A, format!("{item:?} is not a header name")))?;
        if UNCOPYABLE.contains(&name.as_str()) {
            return Err(fail(
                A,
                format!("{name} frames the request or belongs to one connection and cannot be copied from the auth response"),
            ));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `auth-signin-redirect-param`: the name of the redirect parameter.
fn parse_redirect_param(value: &str) -> Result<String, ExternalAuthError> {
    let value = value.trim();
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(fail(
            "auth-signin-redirect-param",
            "must be a query parameter name (letters, digits, -, _ and .)",
        ));
    }
    Ok(value.to_string())
}

/// `auth-signin`: an absolute http(s) URL or a path on the same host, such as
/// `https://auth.example.com/oauth2/start` or `/oauth2/start`. Its redirect parameter
/// (`param`) may be templated as ingress-nginx users write it —
/// `rd=$escaped_request_uri`, `rd=$request_uri` (path only) or
/// `rd=https://$host$escaped_request_uri`, `rd=$scheme://$http_host$request_uri`
/// (full URL) — and is then replaced by the gateway's own value. Any other `$` is
/// refused. A fixed redirect parameter is kept, and then none is added (as in
/// ingress-nginx).
pub fn parse_signin(value: &str, param: &str) -> Result<SignIn, ExternalAuthError> {
    const A: &str = "auth-signin";
    let value = value.trim();
    let (base, query) = match value.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (value, None),
    };
    if base.contains('$') {
        return Err(fail(
            A,
            format!("{NO_VARIABLES} (only the {param} parameter may be templated, and the gateway sets it)"),
        ));
    }
    let mut redirect = Redirect::FullUrl;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, val) = pair.split_once('=').unwrap_or((pair, ""));
        if key == param {
            if val.contains('$') {
                redirect = templated_redirect(val).ok_or_else(|| {
                    fail(
                        A,
                        format!("the {param} parameter is understood only as $escaped_request_uri, $request_uri or $scheme://$host$escaped_request_uri: remove it and the gateway adds the original URL"),
                    )
                })?;
                continue;
            }
            redirect = Redirect::Fixed;
        } else if pair.contains('$') {
            return Err(fail(
                A,
                format!(
                    "{NO_VARIABLES} (only the {param} parameter may be templated, and the gateway sets it)"
                ),
            ));
        }
        if !pair.is_empty() {
            kept.push(pair);
        }
    }
    let rebuilt = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    if rebuilt.starts_with('/') {
        if rebuilt.starts_with("//")
            || rebuilt.contains(['#', '\\'])
            || rebuilt.chars().any(|c| c.is_control() || c.is_whitespace())
            || rebuilt.parse::<http::uri::PathAndQuery>().is_err()
        {
            return Err(fail(
                A,
                "must be an absolute http(s) URL or a path starting with a single /, without fragment, backslash or spaces",
            ));
        }
    } else {
        absolute_url(&rebuilt).map_err(|why| fail(A, why))?;
    }
    Ok(SignIn {
        base: rebuilt,
        param: param.to_string(),
        redirect,
    })
}

/// Reads a templated redirect value: a request-URI variable, alone (path only) or
/// after a `scheme://host` made of nginx variables or a literal scheme.
fn templated_redirect(value: &str) -> Option<Redirect> {
    let prefix = ["$escaped_request_uri", "$request_uri"]
        .iter()
        .find_map(|v| value.strip_suffix(v))?;
    if prefix.is_empty() {
        return Some(Redirect::PathOnly);
    }
    let (scheme, host) = prefix.split_once("://")?;
    let scheme_ok = ["$scheme", "$pass_access_scheme", "http", "https"].contains(&scheme);
    let host_ok = ["$host", "$http_host", "$best_http_host"].contains(&host);
    (scheme_ok && host_ok).then_some(Redirect::FullUrl)
}

/// `auth-request-redirect`: a fixed `X-Auth-Request-Redirect` value.
fn parse_request_redirect(value: &str) -> Result<HeaderValue, ExternalAuthError> {
    const A: &str = "auth-request-redirect";
    let value = value.trim();
    if value.contains('$') {
        return Err(fail(
            A,
            format!("{NO_VARIABLES}, or leave it out and the gateway sends the original request URI"),
        ));
    }
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(fail(A, "must be a non-empty URL without control characters"));
    }
    HeaderValue::from_str(value).map_err(|_| fail(A, "is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<ExternalAuth>, ExternalAuthError> {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        ExternalAuth::from_annotations(|k| map.get(k).copied())
    }

    fn ok(pairs: &[(&str, &str)]) -> ExternalAuth {
        match parse(pairs) {
            Ok(Some(a)) => a,
            other => panic!("{pairs:?}: {other:?}"),
        }
    }

    fn refused(pairs: &[(&str, &str)]) -> ExternalAuthError {
        match parse(pairs) {
            Err(e) => e,
            Ok(a) => panic!("accepted {pairs:?}: {a:?}"),
        }
    }

    const URL: (&str, &str) = (
        "auth-url",
        "http://oauth2-proxy.auth.svc.cluster.local/oauth2/auth",
    );

    #[test]
    fn no_auth_url_means_no_external_auth() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[("auth-cache-key", "$cookie_x")]), Ok(None));
    }

    #[test]
    fn the_oauth2_proxy_setup_parses_with_ingress_nginx_defaults() {
        let a = ok(&[
            URL,
            ("auth-signin", "https://auth.example.com/oauth2/start"),
            (
                "auth-response-headers",
                "X-Auth-Request-User, X-Auth-Request-Email,,authorization",
            ),
        ]);
        assert_eq!(a.url, "http://oauth2-proxy.auth.svc.cluster.local/oauth2/auth");
        assert_eq!(a.method, Method::GET);
        assert_eq!(
            a.response_headers,
            ["x-auth-request-user", "x-auth-request-email", "authorization"]
        );
        assert_eq!(a.request_redirect, None);
        assert!(!a.always_set_cookie);
        let signin = a.signin.unwrap();
        assert_eq!(signin.url(), "https://auth.example.com/oauth2/start");
        assert_eq!(
            signin.location("https://app.example.com/a/b?x=1&y=2"),
            "https://auth.example.com/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2Fa%2Fb%3Fx%3D1%26y%3D2"
        );
    }

    #[test]
    fn auth_url_must_be_a_fixed_absolute_http_url() {
        for good in [
            "https://auth.example.com/check",
            "http://10.0.0.5:4180/oauth2/auth?allowed_groups=admins",
            "http://[::1]:8080/auth",
            "  http://auth/  ",
        ] {
            ok(&[("auth-url", good)]);
        }
        for bad in [
            "https://$host/oauth2/auth",
            "http://auth/check?u=$request_uri",
            "/oauth2/auth",
            "auth.example.com/check",
            "ftp://auth.example.com/",
            "https://user:hunter2@auth.example.com/check",
            "https://auth.example.com/check#frag",
            "https://auth.example.com/a b",
            "",
        ] {
            let e = refused(&[("auth-url", bad)]);
            assert_eq!(e.annotation, "auth-url", "{bad}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert!(refused(&[("auth-url", "https://$host/x")])
            .reason
            .contains("not expanded"));
    }

    #[test]
    fn auth_method_is_one_of_the_ingress_nginx_methods() {
        assert_eq!(ok(&[URL, ("auth-method", "POST")]).method, Method::POST);
        assert_eq!(ok(&[URL, ("auth-method", "HEAD")]).method, Method::HEAD);
        for bad in ["get", "CONNECT", "TRACE", "BREW", ""] {
            assert_eq!(
                refused(&[URL, ("auth-method", bad)]).annotation,
                "auth-method",
                "{bad}"
            );
        }
    }

    #[test]
    fn response_headers_are_valid_names_that_do_not_frame_the_request() {
        assert_eq!(
            ok(&[URL, ("auth-response-headers", "X-User,x-user, X_Groups")]).response_headers,
            ["x-user", "x_groups"]
        );
        for bad in [
            "X User",
            "X-User:1",
            "Content-Length",
            "transfer-encoding",
            "Host",
            "Connection",
            "X-Ok, Ünï",
        ] {
            assert_eq!(
                refused(&[URL, ("auth-response-headers", bad)]).annotation,
                "auth-response-headers",
                "{bad}"
            );
        }
    }

    #[test]
    fn signin_adds_rd_like_ingress_nginx() {
        let at = |signin: &str| ok(&[URL, ("auth-signin", signin)]).signin.unwrap();
        let original = "https://app.example.com/p?q=1";
        // No query: `?rd=` the full original URL.
        assert_eq!(
            at("/oauth2/start").location(original),
            "/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2Fp%3Fq%3D1"
        );
        // A query without rd: `&rd=`.
        assert_eq!(
            at("https://auth.example.com/start?provider=corp").location(original),
            "https://auth.example.com/start?provider=corp&rd=https%3A%2F%2Fapp.example.com%2Fp%3Fq%3D1"
        );
        // A fixed rd: kept, nothing added.
        assert_eq!(
            at("https://auth.example.com/start?rd=https://app.example.com/home").location(original),
            "https://auth.example.com/start?rd=https://app.example.com/home"
        );
    }

    #[test]
    fn templated_rd_values_are_replaced_by_the_gateways_own() {
        let at = |signin: &str| ok(&[URL, ("auth-signin", signin)]).signin.unwrap();
        let original = "https://app.example.com/p?q=1";
        assert_eq!(
            at("https://auth.example.com/oauth2/start?rd=$escaped_request_uri").location(original),
            "https://auth.example.com/oauth2/start?rd=%2Fp%3Fq%3D1"
        );
        assert_eq!(
            at("/oauth2/start?rd=$request_uri&x=1").location(original),
            "/oauth2/start?x=1&rd=%2Fp%3Fq%3D1"
        );
        for full in [
            "/oauth2/start?rd=https://$host$escaped_request_uri",
            "/oauth2/start?rd=$scheme://$http_host$request_uri",
            "/oauth2/start?rd=$pass_access_scheme://$best_http_host$escaped_request_uri",
        ] {
            assert_eq!(
                at(full).location(original),
                "/oauth2/start?rd=https%3A%2F%2Fapp.example.com%2Fp%3Fq%3D1",
                "{full}"
            );
        }
        assert_eq!(
            at("/oauth2/start").location("https://app.example.com"),
            "/oauth2/start?rd=https%3A%2F%2Fapp.example.com"
        );
        assert_eq!(path_and_query("https://app.example.com"), "/");
        assert_eq!(path_and_query("https://app.example.com?x"), "?x");
    }

    #[test]
    fn a_custom_redirect_param_is_used_and_may_be_templated() {
        let a = ok(&[
            URL,
            ("auth-signin", "/login?next=$escaped_request_uri"),
            ("auth-signin-redirect-param", "next"),
        ]);
        assert_eq!(a.signin.unwrap().location("http://h/x y"), "/login?next=%2Fx+y");
        assert_eq!(
            refused(&[URL, ("auth-signin-redirect-param", "a b")]).annotation,
            "auth-signin-redirect-param"
        );
    }

    #[test]
    fn signin_refuses_other_templating_and_unsafe_targets() {
        for bad in [
            "https://$host/oauth2/start",
            "https://$host/oauth2/start?rd=$escaped_request_uri",
            "/oauth2/start?rd=$escaped_request_uri&u=$remote_user",
            "/oauth2/start?rd=$arg_next",
            "/oauth2/start?rd=https://evil.example$request_uri",
            "//evil.example/start",
            "/\\evil.example",
            "javascript:alert(1)",
            "oauth2/start",
            "https://auth.example.com/start#x",
            "/start\r\nSet-Cookie: a=b",
        ] {
            assert_eq!(
                refused(&[URL, ("auth-signin", bad)]).annotation,
                "auth-signin",
                "{bad}"
            );
        }
    }

    #[test]
    fn request_redirect_and_always_set_cookie() {
        let a = ok(&[
            URL,
            ("auth-request-redirect", "https://app.example.com/"),
            ("auth-always-set-cookie", "true"),
        ]);
        assert_eq!(a.request_redirect.unwrap(), "https://app.example.com/");
        assert!(a.always_set_cookie);
        assert_eq!(
            refused(&[URL, ("auth-request-redirect", "$scheme://$host$request_uri")]).annotation,
            "auth-request-redirect"
        );
        assert_eq!(
            refused(&[URL, ("auth-always-set-cookie", "yes")]).annotation,
            "auth-always-set-cookie"
        );
    }

    #[test]
    fn settings_without_auth_url_and_refused_annotations_reject_the_ingress() {
        let e = refused(&[("auth-signin", "/oauth2/start")]);
        assert_eq!(e.annotation, "auth-signin");
        assert!(e.reason.contains("without auth-url"));
        assert_eq!(
            refused(&[("auth-response-headers", "X-User")]).annotation,
            "auth-response-headers"
        );
        assert_eq!(
            refused(&[URL, ("auth-snippet", "return 200;")]).annotation,
            "auth-snippet"
        );
        assert_eq!(
            refused(&[URL, ("auth-proxy-set-headers", "ns/cm")]).annotation,
            "auth-proxy-set-headers"
        );
        // Caching and keepalive only change performance.
        ok(&[
            URL,
            ("auth-cache-key", "$cookie_session"),
            ("auth-keepalive", "10"),
        ]);
    }
}
