//! The OpenID provider for tests (panva/oidc-provider, started with Node on
//! 127.0.0.1), and a small browser: a cookie jar that follows redirects and submits the
//! provider's login and consent forms, the way a person would.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

use super::client::{self, Reply};
use super::Pki;

/// A running provider; stopped when dropped.
pub struct Idp {
    child: Child,
    pub issuer: String,
    pub addr: SocketAddr,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Idp {
    /// Starts the provider on `port` (0: any) with key set `keyset`.
    pub fn start(port: u16, keyset: &str, id_token_ttl: u64) -> Idp {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the test OpenID provider is not installed: run `npm ci --prefix {}` (.ci/run does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg(port.to_string())
            .arg(keyset)
            .env("ID_TOKEN_TTL", id_token_ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("provider said {line:?}"));
        let issuer = v["issuer"].as_str().unwrap().to_string();
        let addr = issuer.trim_start_matches("http://").parse().unwrap();
        Idp { child, issuer, addr }
    }

    async fn call(&self, req: Request<Full<Bytes>>) -> Reply {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let mut send = client::h1(stream).await;
        send.ready().await.unwrap();
        let res = send.send_request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// Registers (or replaces) a client.
    pub async fn register(&self, metadata: serde_json::Value) {
        let req = Request::put("/__test/client")
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::from(metadata.to_string())))
            .unwrap();
        assert_eq!(self.call(req).await.status, 204);
    }

    /// (kid, PKCS#8 PEM) of the provider's signing key.
    pub async fn signing_key(&self) -> (String, String) {
        let req = Request::get("/__test/signing-key")
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&self.call(req).await.body).unwrap();
        (
            v["kid"].as_str().unwrap().to_string(),
            v["pem"].as_str().unwrap().to_string(),
        )
    }

    /// An `at+jwt` access token from the client credentials grant.
    pub async fn client_credentials(&self, client_id: &str, secret: &str) -> String {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        let req = Request::post("/token")
            .header("host", self.addr.to_string())
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(
                "grant_type=client_credentials&scope=api&resource=urn%3Aportcullis%3Aapi",
            )))
            .unwrap();
        let reply = self.call(req).await;
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {}", reply.text()))
            .to_string()
    }
}

/// Follows redirects and keeps cookies; HTTPS goes to the gateway (any host name, the
/// test CA trusted), plain HTTP to the address in the URL.
pub struct Browser<'a> {
    pub jar: HashMap<String, BTreeMap<String, String>>,
    gateway: SocketAddr,
    pki: &'a Pki,
    /// Extra headers on every request (e.g. forged identity headers).
    pub extra: Vec<(String, String)>,
    /// Every URL requested, in order.
    pub history: Vec<String>,
}

impl<'a> Browser<'a> {
    pub fn new(gateway: SocketAddr, pki: &'a Pki) -> Self {
        Browser {
            jar: HashMap::new(),
            gateway,
            pki,
            extra: Vec::new(),
            history: Vec::new(),
        }
    }

    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.get(host).and_then(|c| c.get(name)).cloned()
    }

    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        self.jar
            .entry(host.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    /// One request, no redirect following.
    pub async fn request(&mut self, method: &str, url: &str, form: Option<&str>) -> Reply {
        self.history.push(url.to_string());
        let uri: Uri = url.parse().unwrap();
        let host = uri.host().unwrap().to_string();
        let authority = uri.authority().unwrap().to_string();
        let mut builder = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header("host", &authority)
            .header("accept", "text/html");
        if let Some(cookies) = self.jar.get(&host) {
            let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !header.is_empty() {
                builder = builder.header("cookie", header.join("; "));
            }
        }
        for (k, v) in &self.extra {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if form.is_some() {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = builder
            .body(Full::new(Bytes::from(form.unwrap_or("").to_string())))
            .unwrap();
        let reply = if uri.scheme_str() == Some("https") {
            let stream = client::tls(self.gateway, &host, client::trusting(self.pki, &[b"http/1.1"]))
                .await
                .unwrap();
            let mut send = client::h1(stream).await;
            client::send_h1(&mut send, req).await.unwrap()
        } else {
            let stream = TcpStream::connect(authority.as_str()).await.unwrap();
            let mut send = client::h1(stream).await;
            client::send_h1(&mut send, req).await.unwrap()
        };
        for value in reply.headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let cookies = self.jar.entry(host.clone()).or_default();
            let expired = attributes.to_ascii_lowercase().contains("max-age=0")
                || attributes.contains("1970")
                || value.is_empty();
            if expired {
                cookies.remove(name.trim());
            } else {
                cookies.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
        reply
    }

    /// Follows redirects from `url`; returns the last reply and its URL.
    pub async fn follow(&mut self, url: &str) -> (Reply, String) {
        self.follow_from("GET", url, None).await
    }

    async fn follow_from(&mut self, method: &str, url: &str, form: Option<&str>) -> (Reply, String) {
        let mut url = url.to_string();
        let mut reply = self.request(method, &url, form).await;
        for _ in 0..20 {
            if !reply.status.is_redirection() {
                break;
            }
            url = resolve(&url, reply.header("location"));
            reply = self.request("GET", &url, None).await;
        }
        (reply, url)
    }

    /// Goes to `url`, signs in at the provider as `user` (login and consent forms),
    /// and returns where the browser lands.
    pub async fn login(&mut self, url: &str, user: &str) -> (Reply, String) {
        let (mut reply, mut at) = self.follow(url).await;
        for _ in 0..4 {
            let html = reply.text();
            let Some(action) = form_action(&html) else { break };
            let prompt = hidden_prompt(&html).unwrap_or_default();
            let form = if prompt == "login" {
                format!("prompt=login&login={user}&password=any-password")
            } else {
                format!("prompt={prompt}")
            };
            let target = resolve(&at, &action);
            (reply, at) = self.follow_from("POST", &target, Some(&form)).await;
        }
        (reply, at)
    }
}

/// Resolves a Location against the URL it came from.
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let uri: Uri = base.parse().unwrap();
    format!(
        "{}://{}{location}",
        uri.scheme_str().unwrap(),
        uri.authority().unwrap()
    )
}

fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form")?;
    let rest = &html[start..];
    let a = rest.find("action=\"")? + 8;
    let end = rest[a..].find('"')?;
    Some(rest[a..a + end].replace("&amp;", "&"))
}

fn hidden_prompt(html: &str) -> Option<String> {
    let i = html.find("name=\"prompt\" value=\"")? + 21;
    let end = html[i..].find('"')?;
    Some(html[i..i + end].to_string())
}
