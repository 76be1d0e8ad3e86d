//! ingress-nginx's sticky sessions (`affinity: cookie`) and `upstream-hash-by` through
//! the real gateway, with several endpoints behind one Service.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use http::StatusCode;

use super::{concat, get_with, nginx_ingress};
use crate::support::backend::Backend;
use crate::support::{service, Gateway};

fn manifests(web: &[SocketAddr], users: &[SocketAddr]) -> String {
    concat(&[
        service("ns", "web", web),
        service("ns", "users", users),
        nginx_ingress(
            "sticky",
            false,
            &[
                ("affinity", "cookie"),
                ("session-cookie-name", "route"),
                ("session-cookie-max-age", "172800"),
                ("session-cookie-samesite", "Lax"),
            ],
            "sticky.test",
            &[("/", "web")],
        ),
        nginx_ingress(
            "hashed",
            false,
            &[("upstream-hash-by", "$http_x_user")],
            "hash.test",
            &[("/", "users")],
        ),
        // Hashing on a variable the gateway does not have is refused, not guessed at.
        nginx_ingress(
            "bad-hash",
            false,
            &[("upstream-hash-by", "$host")],
            "bad.test",
            &[("/", "users")],
        ),
    ])
}

/// `route=VALUE` from a Set-Cookie header, and the whole header.
fn sticky_cookie(reply: &crate::support::client::Reply) -> Option<(String, String)> {
    let header = reply.header("set-cookie");
    let pair = header.split(';').next()?.strip_prefix("route=")?;
    Some((format!("route={pair}"), header.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_and_upstream_hash_by() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let c = Backend::named("c").await;
    let name_of: HashMap<SocketAddr, &str> = [(a.addr, "a"), (b.addr, "b"), (c.addr, "c")].into();
    let all = [a.addr, b.addr, c.addr];
    let gw = Gateway::start(&manifests(&all, &all), "ingressClass: nginx\n");

    // The first request gets a cookie naming its endpoint, with the annotated attributes.
    let first = get_with(&gw, "sticky.test", "GET", "/", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", gw.logs());
    let (cookie, header) = sticky_cookie(&first).expect("a sticky cookie");
    assert_eq!(
        header.split_once(';').map(|(_, attrs)| attrs),
        Some(" Path=/; Max-Age=172800; HttpOnly; SameSite=Lax")
    );
    for addr in all {
        assert!(!header.contains(&addr.to_string()), "the cookie reveals {addr}");
    }
    let home = first.header("x-backend").to_string();

    // The same cookie keeps hitting the same backend, and is not set again.
    for _ in 0..20 {
        let r = get_with(&gw, "sticky.test", "GET", "/", &[("cookie", &cookie)]).await;
        assert_eq!(r.header("x-backend"), home);
        assert!(r.headers.get("set-cookie").is_none());
    }
    // Without the cookie, requests are balanced round robin.
    let mut spread = HashSet::new();
    for _ in 0..6 {
        let r = get_with(&gw, "sticky.test", "GET", "/", &[]).await;
        assert!(sticky_cookie(&r).is_some());
        spread.insert(r.header("x-backend").to_string());
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    // A forged or foreign value is replaced like a missing one.
    let forged = get_with(
        &gw,
        "sticky.test",
        "GET",
        "/",
        &[("cookie", "route=10.0.0.1:8080")],
    )
    .await;
    assert!(sticky_cookie(&forged).is_some());

    // The session's endpoint goes away: the request goes elsewhere with a new cookie.
    let remaining: Vec<SocketAddr> = all.into_iter().filter(|e| name_of[e] != home).collect();
    let generation = gw.generation();
    gw.write_manifest("main.yaml", &manifests(&remaining, &all));
    gw.wait_for_generation_after(generation);
    let moved = get_with(&gw, "sticky.test", "GET", "/", &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, StatusCode::OK);
    let new_home = moved.header("x-backend").to_string();
    assert_ne!(new_home, home);
    let (new_cookie, _) = sticky_cookie(&moved).expect("a new cookie");
    assert_ne!(new_cookie, cookie);
    for _ in 0..5 {
        let r = get_with(&gw, "sticky.test", "GET", "/", &[("cookie", &new_cookie)]).await;
        assert_eq!(r.header("x-backend"), new_home);
        assert!(r.headers.get("set-cookie").is_none());
    }

    // upstream-hash-by $http_x_user: each user always reaches one backend, and the
    // users are spread over the backends.
    let mut homes = HashMap::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        for _ in 0..5 {
            let r = get_with(&gw, "hash.test", "GET", "/", &[("x-user", &user)]).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.headers.get("set-cookie").is_none());
            let seen = r.header("x-backend").to_string();
            assert_eq!(
                homes.entry(user.clone()).or_insert_with(|| seen.clone()),
                &seen,
                "{user}"
            );
        }
    }
    let used: HashSet<&String> = homes.values().collect();
    assert!(used.len() >= 2, "{homes:?}");

    let bad = get_with(&gw, "bad.test", "GET", "/", &[]).await;
    assert_eq!(bad.status, StatusCode::NOT_FOUND, "the Ingress is rejected");
    assert!(gw.logs().contains("$host is not supported"), "{}", gw.logs());
}

/// Replicas that share `oidc.sessionKeys` recognise each other's sticky cookies, so a
/// session stays on its endpoint whichever replica the load balancer picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_session_keys_agree_on_sticky_cookies() {
    let a = Backend::named("a").await;
    let b = Backend::named("b").await;
    let c = Backend::named("c").await;
    let all = [a.addr, b.addr, c.addr];
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("session-key");
    // 32 bytes in base64, as oidc.sessionKeys requires.
    std::fs::write(&key_file, "c2hhcmVkIGJ5IGV2ZXJ5IGdhdGV3YXkgcmVwbGljYSE=").unwrap();
    let config = format!(
        "ingressClass: nginx\noidc:\n  providers: [{{name: corp, issuer: 'http://127.0.0.1:9', clientId: c}}]\n  sessionKeys: [{{file: {}}}]\n",
        key_file.display()
    );
    let one = Gateway::start(&manifests(&all, &all), &config);
    let two = Gateway::start(&manifests(&all, &all), &config);

    let first = get_with(&one, "sticky.test", "GET", "/", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", one.logs());
    let (cookie, _) = sticky_cookie(&first).expect("a sticky cookie");
    let home = first.header("x-backend").to_string();
    for gw in [&two, &one, &two] {
        for _ in 0..5 {
            let r = get_with(gw, "sticky.test", "GET", "/", &[("cookie", &cookie)]).await;
            assert_eq!(r.header("x-backend"), home);
            assert!(r.headers.get("set-cookie").is_none());
        }
    }
}
