//! Reading manifests: multi-document YAML (or JSON) text in, typed Kubernetes objects
//! out, with a Problem for every document that is not valid. A document that fails to
//! parse never hides the other documents of its file.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::{ObjectRef, Origin, Problem};

/// An object read from the input, and where it came from.
#[derive(Debug, Clone)]
pub struct Object<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T: k8s_openapi::Metadata<Ty = ObjectMeta>> Object<T> {
    /// The object's namespace; objects without one (or with an empty one) are in
    /// `default`, as `kubectl apply` would put them, and as duplicates are found when
    /// documents are read.
    pub fn namespace(&self) -> &str {
        self.value
            .metadata()
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.value.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn object_ref(&self) -> ObjectRef {
        let kind = <T as k8s_openapi::Resource>::KIND;
        let ns = is_namespaced(kind).then(|| self.namespace());
        ObjectRef::new(kind, ns, self.name())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value
            .metadata()
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

/// Every object the gateway cares about, plus a count of everything else.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub ingresses: Vec<Object<Ingress>>,
    pub ingress_classes: Vec<Object<IngressClass>>,
    pub services: Vec<Object<Service>>,
    pub endpoint_slices: Vec<Object<EndpointSlice>>,
    pub secrets: Vec<Object<Secret>>,
    /// Read for `nginx.ingress.kubernetes.io/custom-headers`, whose headers live in one.
    pub config_maps: Vec<Object<ConfigMap>>,
    /// Documents of other kinds, by `apiVersion kind`: counted, never an error.
    pub ignored: BTreeMap<String, usize>,
    /// Documents that could not be read.
    pub problems: Vec<Problem>,
    seen: HashSet<(String, String, String)>,
}

/// One YAML document that parsed, with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    pub line: u64,
}

/// Parses multi-document YAML. Each `---`-separated document is parsed on its own so
/// that a syntax error costs only its document: the result holds the documents that
/// parsed and a Problem (with file and line) for each that did not.
pub fn parse_documents(file: &str, text: &str) -> (Vec<Document>, Vec<Problem>) {
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for (start_line, chunk) in split_documents(text) {
        let options = serde_saphyr::options! {
            strict_booleans: true,
        };
        match serde_saphyr::from_multiple_with_options::<Value>(chunk, options) {
            Ok(values) => {
                // Point at the object itself, past the marker and leading comments.
                let skipped = chunk.lines().position(|l| {
                    let t = l.trim();
                    !(t.is_empty() || t.starts_with('#') || t == "---" || t.starts_with("--- "))
                });
                let line = start_line + skipped.unwrap_or(0) as u64;
                documents.extend(
                    values
                        .into_iter()
                        .filter(|v| !v.is_null())
                        .map(|value| Document { value, line }),
                )
            }
            Err(err) => {
                let line = err
                    .location()
                    .map(|l| start_line + l.line().saturating_sub(1))
                    .unwrap_or(start_line);
                problems.push(
                    Problem::error(
                        None,
                        "",
                        format!("YAML syntax error: {}", first_line(&err.to_string())),
                    )
                    .at(Some(Origin {
                        file: file.to_string(),
                        line: Some(line),
                    })),
                );
            }
        }
    }
    (documents, problems)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

/// Splits text at document start markers (`---` at column 0). A marker at column 0 ends
/// any block scalar, so this never cuts a document in two. Returns (first line, text).
fn split_documents(text: &str) -> Vec<(u64, &str)> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let is_marker = line.starts_with("---")
            && matches!(line.as_bytes().get(3), None | Some(b' ' | b'\t' | b'\n' | b'\r'));
        if is_marker && offset > start {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = index as u64 + 1;
        }
        offset += line.len();
    }
    if start < text.len() {
        chunks.push((start_line, &text[start..]));
    }
    chunks
}

impl Manifests {
    /// Reads every document of one file (or stdin, named `-`).
    pub fn add_text(&mut self, file: &str, text: &str) {
        let (documents, problems) = parse_documents(file, text);
        self.problems.extend(problems);
        self.add_documents(file, documents);
    }

    /// Adds already parsed documents of one file.
    pub fn add_documents(&mut self, file: &str, documents: Vec<Document>) {
        for doc in documents {
            let origin = Origin {
                file: file.to_string(),
                line: Some(doc.line),
            };
            self.add_value(doc.value, origin);
        }
    }

    fn add_value(&mut self, value: Value, origin: Origin) {
        let Some(map) = value.as_object() else {
            self.problems.push(
                Problem::error(
                    None,
                    "",
                    "document is not a mapping: expected a Kubernetes object with apiVersion and kind",
                )
                .at(Some(origin)),
            );
            return;
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() {
            self.problems
                .push(Problem::error(None, "", "document has no apiVersion or kind").at(Some(origin)));
            return;
        }
        match (api_version, kind) {
            ("networking.k8s.io/v1", "Ingress") => {
                if let Some(o) = self.typed(value, origin) {
                    self.ingresses.push(o)
                }
            }
            ("networking.k8s.io/v1", "IngressClass") => {
                if let Some(o) = self.typed(value, origin) {
                    self.ingress_classes.push(o)
                }
            }
            ("v1", "Service") => {
                if let Some(o) = self.typed(value, origin) {
                    self.services.push(o)
                }
            }
            ("v1", "Secret") => {
                if let Some(o) = self.typed(value, origin) {
                    self.secrets.push(o)
                }
            }
            ("v1", "ConfigMap") => {
                if let Some(o) = self.typed(value, origin) {
                    self.config_maps.push(o)
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                if let Some(o) = self.typed(value, origin) {
                    self.endpoint_slices.push(o)
                }
            }
            ("v1", "List") => {
                let items = match value {
                    Value::Object(mut map) => map.remove("items"),
                    _ => None,
                };
                if let Some(Value::Array(items)) = items {
                    for item in items {
                        self.add_value(item, origin.clone());
                    }
                }
            }
            ("networking.k8s.io/v1beta1" | "extensions/v1beta1", "Ingress") => {
                let name = object_name(&value);
                self.problems.push(
                    Problem::error(
                        Some(ObjectRef::new("Ingress", Some(&name.0), &name.1)),
                        "apiVersion",
                        format!(
                            "{api_version} Ingress was removed in Kubernetes 1.22: use networking.k8s.io/v1"
                        ),
                    )
                    .at(Some(origin)),
                );
            }
            _ => *self.ignored.entry(format!("{api_version} {kind}")).or_default() += 1,
        }
    }

    /// Deserializes one document into its k8s-openapi type; on failure, a Problem
    /// naming the field that did not fit.
    fn typed<T>(&mut self, value: Value, origin: Origin) -> Option<Object<T>>
    where
        T: DeserializeOwned + k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        let (namespace, name) = object_name(&value);
        let object = ObjectRef::new(
            T::KIND,
            is_namespaced(T::KIND).then_some(namespace.as_str()),
            &name,
        );
        if name.is_empty() {
            self.problems.push(
                Problem::error(
                    Some(object),
                    "metadata.name",
                    "missing: every object needs a name",
                )
                .at(Some(origin)),
            );
            return None;
        }
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(value) => {
                let key = (T::KIND.to_string(), namespace, name);
                if !self.seen.insert(key) {
                    self.problems.push(
                        Problem::error(Some(object), "", "defined more than once: this copy is ignored")
                            .at(Some(origin)),
                    );
                    return None;
                }
                Some(Object { value, origin })
            }
            Err(err) => {
                let field = err.path().to_string();
                let field = if field == "." { String::new() } else { field };
                self.problems
                    .push(Problem::error(Some(object), field, err.into_inner().to_string()).at(Some(origin)));
                None
            }
        }
    }

    /// Adds the objects of another read (files and a cluster read together). An object
    /// already present keeps its first copy and the second gets the same Problem as a
    /// duplicate within one read, so the outcome does not depend on how input was split.
    pub fn merge(&mut self, other: Manifests) {
        self.problems.extend(other.problems);
        for (kind, n) in other.ignored {
            *self.ignored.entry(kind).or_default() += n;
        }
        let seen = &mut self.seen;
        let problems = &mut self.problems;
        keep_new(seen, problems, &mut self.ingresses, other.ingresses);
        keep_new(seen, problems, &mut self.ingress_classes, other.ingress_classes);
        keep_new(seen, problems, &mut self.services, other.services);
        keep_new(seen, problems, &mut self.endpoint_slices, other.endpoint_slices);
        keep_new(seen, problems, &mut self.secrets, other.secrets);
        keep_new(seen, problems, &mut self.config_maps, other.config_maps);
    }

    /// How many documents were read into typed objects.
    pub fn object_count(&self) -> usize {
        self.ingresses.len()
            + self.ingress_classes.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.config_maps.len()
    }
}

/// Moves the objects of `from` not yet `seen` into `into`; the others become Problems.
fn keep_new<T>(
    seen: &mut HashSet<(String, String, String)>,
    problems: &mut Vec<Problem>,
    into: &mut Vec<Object<T>>,
    from: Vec<Object<T>>,
) where
    T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    for object in from {
        let key = (
            T::KIND.to_string(),
            object.namespace().to_string(),
            object.name().to_string(),
        );
        if seen.insert(key) {
            into.push(object);
        } else {
            problems.push(
                Problem::error(
                    Some(object.object_ref()),
                    "",
                    "defined more than once: this copy is ignored",
                )
                .at(Some(object.origin.clone())),
            );
        }
    }
}

/// Of the kinds read here, only IngressClass is cluster-scoped.
fn is_namespaced(kind: &str) -> bool {
    kind != "IngressClass"
}

fn object_name(value: &Value) -> (String, String) {
    let meta = value.get("metadata");
    let get = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let namespace = get("namespace");
    let namespace = if namespace.is_empty() {
        "default".to_string()
    } else {
        namespace
    };
    (namespace, get("name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_kinds_and_counts_the_rest() {
        let mut m = Manifests::default();
        m.add_text(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n# empty\n",
        );
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].namespace(), "shop");
        assert_eq!(m.ignored.get("apps/v1 Deployment"), Some(&1));
    }

    #[test]
    fn a_syntax_error_costs_only_its_document() {
        let mut m = Manifests::default();
        m.add_text(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n",
        );
        assert_eq!(m.services.len(), 2);
        assert_eq!(m.problems.len(), 1);
        let p = &m.problems[0];
        assert!(p.to_string().contains("x.yaml:5"), "{p}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let mut m = Manifests::default();
        m.add_text(
            "x.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  rules:\n  - host: a\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {service: {name: s, port: {number: notanumber}}}\n",
        );
        assert!(m.ingresses.is_empty());
        let p = m.problems[0].to_string();
        assert!(
            p.contains("Ingress default/web spec.rules[0].http.paths[0].backend.service.port.number"),
            "{p}"
        );
    }

    #[test]
    fn merge_adds_the_other_read_and_keeps_the_first_copy() {
        let mut files = Manifests::default();
        files.add_text("a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n");
        let mut cluster = Manifests::default();
        cluster.add_text(
            "cluster",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n",
        );
        files.merge(cluster);
        let names: Vec<_> = files.services.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(files.services[0].origin.file, "a.yaml");
        assert_eq!(files.problems.len(), 1);
        assert!(files.problems[0].to_string().contains("defined more than once"));
    }

    #[test]
    fn duplicates_and_removed_api_versions_are_problems() {
        let mut m = Manifests::default();
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";
        m.add_text("a.yaml", svc);
        m.add_text("b.yaml", svc);
        m.add_text(
            "c.yaml",
            "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n",
        );
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.problems.len(), 2);
        assert!(m.problems[0].to_string().contains("defined more than once"));
        assert!(m.problems[1].to_string().contains("removed in Kubernetes 1.22"));
    }

    #[test]
    fn lists_are_expanded() {
        let mut m = Manifests::default();
        m.add_text(
            "l.yaml",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n",
        );
        assert_eq!(m.services.len(), 2);
    }

    #[test]
    fn secrets_read_base64_data_and_string_data() {
        let mut m = Manifests::default();
        m.add_text(
            "s.yaml",
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {name: a}\ndata: {tls.crt: aGVsbG8=}\nstringData: {tls.key: world}\n",
        );
        let s = &m.secrets[0].value;
        assert_eq!(
            s.data
                .as_ref()
                .and_then(|d| d.get("tls.crt"))
                .map(|b| b.0.as_slice()),
            Some(&b"hello"[..])
        );
        assert_eq!(
            s.string_data
                .as_ref()
                .and_then(|d| d.get("tls.key"))
                .map(String::as_str),
            Some("world")
        );
    }

    #[test]
    fn config_maps_are_read_and_merged_like_secrets() {
        let mut m = Manifests::default();
        m.add_text(
            "c.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hdrs, namespace: shop}\ndata: {X-Frame-Options: DENY}\n",
        );
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.object_count(), 1);
        let c = &m.config_maps[0];
        assert_eq!((c.namespace(), c.name()), ("shop", "hdrs"));
        assert_eq!(
            c.value
                .data
                .as_ref()
                .and_then(|d| d.get("X-Frame-Options"))
                .map(String::as_str),
            Some("DENY")
        );
        let mut again = Manifests::default();
        again.add_text(
            "d.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hdrs, namespace: shop}\n",
        );
        m.merge(again);
        assert_eq!(m.config_maps.len(), 1);
        assert_eq!(m.problems.len(), 1, "{:?}", m.problems);
    }
}
