//! A synthetic configuration of the size issue 8's scenario 7 asks for: N Ingresses of
//! `paths_per_host` paths each (10,000 x 5 = 50,000 paths), spread over namespaces, one
//! host per Ingress, each with its own Service and EndpointSlice, and one wildcard TLS
//! Secret per namespace. The same generator feeds the criterion benchmark (in memory)
//! and `gen-manifests` (files for `portcullis serve` / `check` in bench/run.sh), so the
//! micro-benchmark and the end-to-end figures describe the same configuration.

use std::fmt::Write as _;

use portcullis_config::{compile, Compiled, Manifests, Settings};

/// Shape of the generated configuration.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub ingresses: usize,
    pub paths_per_host: usize,
    pub ingresses_per_namespace: usize,
    /// Backend port the EndpointSlices point at (127.0.0.1).
    pub backend_port: u16,
}

impl Shape {
    pub fn new(ingresses: usize) -> Shape {
        Shape {
            ingresses,
            paths_per_host: 5,
            ingresses_per_namespace: 100,
            backend_port: 23080,
        }
    }

    pub fn namespaces(&self) -> usize {
        self.ingresses.div_ceil(self.ingresses_per_namespace)
    }
}

/// The host of Ingress `i`: one label under `scale.test`, covered by `*.scale.test`.
pub fn host(i: usize) -> String {
    format!("h{i}.scale.test")
}

/// The paths every host gets: a root, nested prefixes and an exact path, so a lookup
/// walks the prefix table the way real requests do.
pub const PATHS: &[(&str, &str)] = &[
    ("/", "Prefix"),
    ("/api", "Prefix"),
    ("/api/v1", "Prefix"),
    ("/static", "ImplementationSpecific"),
    ("/healthz", "Exact"),
    ("/login", "Exact"),
    ("/assets/img", "Prefix"),
    ("/docs", "Prefix"),
];

/// A wildcard certificate for `*.scale.test` (self-signed; compile only parses it).
pub fn wildcard_cert() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["*.scale.test".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// The manifests of one namespace (one file's worth): its TLS Secret, then per Ingress
/// a Service, an EndpointSlice and the Ingress. `generation` goes into a label of every
/// Ingress, so rewriting the file with another value changes it without changing routes.
pub fn namespace_yaml(shape: &Shape, ns: usize, cert_pem: &str, key_pem: &str, generation: u64) -> String {
    let mut out = String::new();
    let namespace = format!("ns{ns}");
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: wildcard-tls\n  namespace: {namespace}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert_pem),
        indent(key_pem)
    );
    let first = ns * shape.ingresses_per_namespace;
    let last = (first + shape.ingresses_per_namespace).min(shape.ingresses);
    for i in first..last {
        let name = format!("app{i}");
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: {port}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nendpoints:\n- addresses: [127.0.0.1]\n  conditions:\n    ready: true\nports:\n- name: http\n  port: {port}\n  protocol: TCP\n",
            port = shape.backend_port
        );
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    bench-generation: \"{generation}\"\n  annotations:\n    portcullis.dev/max-body-size: 8m\nspec:\n  ingressClassName: portcullis\n  tls:\n  - hosts: [{host}]\n    secretName: wildcard-tls\n  rules:\n  - host: {host}\n    http:\n      paths:\n",
            host = host(i)
        );
        for (path, path_type) in PATHS.iter().cycle().take(shape.paths_per_host) {
            let _ = write!(
                out,
                "      - path: {path}\n        pathType: {path_type}\n        backend:\n          service:\n            name: {name}\n            port:\n              number: 80\n"
            );
        }
    }
    out
}

/// Every namespace's file, as (file name, text).
pub fn files(shape: &Shape, cert_pem: &str, key_pem: &str) -> Vec<(String, String)> {
    (0..shape.namespaces())
        .map(|ns| {
            (
                format!("ns{ns:04}.yaml"),
                namespace_yaml(shape, ns, cert_pem, key_pem, 0),
            )
        })
        .collect()
}

/// Parses generated files the way `portcullis serve` reads a directory.
pub fn parse(files: &[(String, String)]) -> Manifests {
    let mut m = Manifests::default();
    for (name, text) in files {
        m.add_text(name, text);
    }
    m
}

/// Compiles with default settings, at a fixed time inside the certificate's validity.
pub fn compile_default(manifests: &Manifests, now: i64) -> Compiled {
    compile(manifests, &Settings::default(), now)
}
