//! Test harness: a test PKI, the real `portcullis` binary started on port 0 with
//! manifests in a temporary directory, backends on 127.0.0.1:0, and TLS clients. Every
//! process and task a test starts is stopped when its handle drops.
#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod kube_api;
pub mod oidc;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

/// A CA that signs leaf certificates for test hosts.
pub struct Pki {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// What follows a leaf in the chains it signs: this CA, then the CAs above it.
    chain_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::ca("portcullis test CA", None)
    }

    /// An intermediate CA signed by this one; the chains it signs carry both.
    pub fn intermediate(&self, common_name: &str) -> Pki {
        Pki::ca(common_name, Some(self))
    }

    fn ca(common_name: &str, parent: Option<&Pki>) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        match parent {
            None => {
                let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
                Pki {
                    chain_pem: issuer.pem(),
                    issuer,
                }
            }
            Some(parent) => {
                let issuer = rcgen::CertifiedIssuer::signed_by(params, key, &parent.issuer).unwrap();
                Pki {
                    chain_pem: format!("{}{}", issuer.pem(), parent.chain_pem),
                    issuer,
                }
            }
        }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// (certificate chain PEM, key PEM) for these names, signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.chain_pem), key.serialize_pem())
    }

    /// (certificate chain PEM, key PEM) of a client certificate with this common name,
    /// signed by the CA.
    pub fn client(&self, common_name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.chain_pem), key.serialize_pem())
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A `kubernetes.io/tls` Secret holding a fresh leaf certificate.
    pub fn tls_secret(&self, namespace: &str, name: &str, names: &[&str]) -> String {
        let (crt, key) = self.leaf(names);
        tls_secret_yaml(namespace, name, &crt, &key)
    }
}

pub fn tls_secret_yaml(namespace: &str, name: &str, crt: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: {name}, namespace: {namespace}}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

/// A Service whose ready endpoints are the given addresses, one EndpointSlice each
/// (so they may differ in port), as the EndpointSlice controller may split them.
pub fn service(namespace: &str, name: &str, endpoints: &[SocketAddr]) -> String {
    let mut y = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: app}}]\n"
    );
    for (i, a) in endpoints.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
            a.port(),
            a.ip()
        ));
    }
    y
}

/// An Ingress with one Prefix path per (host, path, service) rule and optional TLS.
pub fn ingress(
    namespace: &str,
    name: &str,
    annotations: &[(&str, &str)],
    tls: &[(&str, &str)],
    rules: &[(&str, &str, &str)],
) -> String {
    let mut y = format!("---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {namespace}\n");
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            y.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    y.push_str("spec:\n  ingressClassName: portcullis\n");
    if !tls.is_empty() {
        y.push_str("  tls:\n");
        for (host, secret) in tls {
            y.push_str(&format!("  - hosts: [\"{host}\"]\n    secretName: {secret}\n"));
        }
    }
    y.push_str("  rules:\n");
    for (host, path, service) in rules {
        y.push_str(&format!(
            "  - host: \"{host}\"\n    http:\n      paths:\n      - path: {path}\n        pathType: Prefix\n        backend:\n          service: {{name: {service}, port: {{number: 80}}}}\n"
        ));
    }
    y
}

/// The `portcullis` binary under test.
/// The simplest setup: the `web` echo backend behind one Ingress for `host`, with
/// these config-file lines.
pub async fn web_gateway(host: &str, config: &str) -> (backend::Backend, Gateway) {
    let web = backend::Backend::named("web").await;
    let gw = Gateway::start(
        &[
            service("ns", "web", &[web.addr]),
            ingress("ns", "i", &[], &[], &[(host, "/", "web")]),
        ]
        .concat(),
        config,
    );
    (web, gw)
}

/// Runs a command to completion off the async runtime; it must succeed. Its stdout.
pub async fn stdout_of(mut command: Command) -> String {
    let shown = format!("{command:?}");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// A running `portcullis serve`.
pub struct Gateway {
    child: Child,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway on 127.0.0.1:0 with these manifests (file `main.yaml`) and
    /// extra config-file lines; waits until it listens.
    pub fn start(manifests: &str, config: &str) -> Gateway {
        Gateway::start_with_env(manifests, config, &[])
    }

    /// As [`Gateway::start`], with these environment variables set.
    pub fn start_with_env(manifests: &str, config: &str, env: &[(&str, &str)]) -> Gateway {
        let (mut command, dir) = Gateway::serve_command(manifests, config, false);
        command.envs(env.iter().copied());
        Gateway::spawn(command, dir, None)
    }

    /// Starts the gateway with `--manifests -`, writing the manifests to its stdin.
    pub fn start_from_stdin(manifests: &str, config: &str, env: &[(&str, &str)]) -> Gateway {
        let (mut command, dir) = Gateway::serve_command("", config, true);
        command.envs(env.iter().copied());
        Gateway::spawn(command, dir, Some(manifests.to_string()))
    }

    /// Starts the gateway on listening sockets it inherits, as from a service manager
    /// (systemd socket activation): `http` and `https` become fds 3 and 4, announced in
    /// `LISTEN_FDS`.
    pub fn start_on_sockets(
        manifests: &str,
        config: &str,
        http: &std::net::TcpListener,
        https: &std::net::TcpListener,
    ) -> Gateway {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (mut command, dir) = Gateway::serve_command(manifests, config, false);
        let fds = [http.as_raw_fd(), https.as_raw_fd()];
        assert!(fds.iter().all(|fd| *fd > 4), "{fds:?} would be overwritten");
        command.env("LISTEN_FDS", "2").env("LISTEN_FDNAMES", "http:https");
        // SAFETY: between fork and exec only dup2, which is async-signal-safe, runs;
        // it also clears close-on-exec on the copies.
        unsafe {
            command.pre_exec(move || {
                for (target, fd) in (3..).zip(fds) {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Gateway::spawn(command, dir, None)
    }

    fn serve_command(manifests: &str, config: &str, from_stdin: bool) -> (Command, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        std::fs::write(dir.path().join("manifests/main.yaml"), manifests).unwrap();
        let config_file = dir.path().join("config.yaml");
        // Tests that set `listen` themselves must keep every address on port 0.
        let listen = if config.lines().any(|l| l.starts_with("listen:")) {
            String::new()
        } else {
            "listen: {http: 127.0.0.1:0, https: 127.0.0.1:0, admin: 127.0.0.1:0}\n".to_string()
        };
        std::fs::write(&config_file, format!("{listen}{config}")).unwrap();
        let mut command = Command::new(binary());
        command
            .args([
                "--log-format",
                "json",
                "serve",
                "--watch-interval",
                "100ms",
                "--manifests",
            ])
            .arg(if from_stdin {
                PathBuf::from("-")
            } else {
                dir.path().join("manifests")
            })
            .arg("--config")
            .arg(&config_file);
        (command, dir)
    }

    /// Starts `portcullis controller` against the API server a kubeconfig points at.
    pub fn controller(config: &str, kubeconfig: &Path, extra_args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("config.yaml");
        std::fs::write(
            &config_file,
            format!("listen: {{http: 127.0.0.1:0, https: 127.0.0.1:0, admin: 127.0.0.1:0}}\n{config}"),
        )
        .unwrap();
        let mut command = Command::new(binary());
        command
            .args(["--log-format", "json", "controller", "--config"])
            .arg(&config_file)
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig);
        Gateway::spawn(command, dir, None)
    }

    fn spawn(mut command: Command, dir: tempfile::TempDir, stdin: Option<String>) -> Gateway {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Written whole, then closed: the gateway reads to the end.
            pipe.write_all(text.as_bytes())
                .expect("write the manifests to stdin");
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut gateway = Gateway {
            child,
            dir,
            http: "0.0.0.0:0".parse().unwrap(),
            https: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let addrs = gateway.listening();
            if addrs.len() == 3 {
                gateway.http = addrs["http"];
                gateway.https = addrs["https"];
                gateway.admin = addrs["admin"];
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("portcullis exited with {status}:\n{}", gateway.logs());
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not start:\n{}",
                gateway.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn listening(&self) -> std::collections::HashMap<String, SocketAddr> {
        let mut out = std::collections::HashMap::new();
        for line in self.logs.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "listening" {
                if let (Some(name), Some(addr)) = (v["listener"].as_str(), v["addr"].as_str()) {
                    out.insert(name.to_string(), addr.parse().unwrap());
                }
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes a manifest file atomically (write then rename), as editors and
    /// Kubernetes ConfigMap updates do.
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests_dir().join(file)).unwrap();
    }

    /// Number of configurations published so far.
    pub fn generation(&self) -> u64 {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "configuration published")
            .filter_map(|v| v["generation"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Waits until a configuration newer than `generation` is published.
    pub fn wait_for_generation_after(&self, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.generation() <= generation {
            assert!(Instant::now() < deadline, "no reload happened:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits (up to 5 s) until the log contains `text`: log lines arrive through a
    /// pipe, a little after the response they describe.
    pub fn wait_for_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.logs().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Log lines whose JSON has `field` equal to `value`.
    pub fn log_entries(&self, field: &str, value: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v[field] == value)
            .collect()
    }

    /// Resident memory now and at its peak, in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `portcullis check` on a directory; (exit code, stdout).
pub fn check(dir: &Path) -> (i32, String) {
    check_with(dir, &[])
}

/// `check` with more arguments.
pub fn check_with(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(["check", "--manifests"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Where the test Redis listens.
pub const REDIS_IP: &str = "127.0.0.77";

/// A real Redis server (Debian's redis-server) on a free loopback port; stopped on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        assert!(
            Path::new("/usr/bin/redis-server").exists(),
            "Debian's redis-server is needed: apt-get install redis-server (.ci/run does)"
        );
        // A loopback address no other test binds: the free port found here cannot be
        // taken by another test's server before redis-server binds it.
        let port = std::net::TcpListener::bind((REDIS_IP, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                REDIS_IP,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((REDIS_IP, port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
