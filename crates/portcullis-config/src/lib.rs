//! `portcullis-config`: Kubernetes manifests in, a validated [`Snapshot`] out, or every
//! [`Problem`] with the object and field at fault. Pure: no I/O, no clock reads, no
//! async; the callers pass in text and the current time.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod annotations;
pub mod backend_tls;
pub mod canary;
pub mod client_auth;
pub mod compile;
pub mod cors;
pub mod custom_headers;
pub mod external_auth;
pub mod htpasswd;
pub mod manifest;
pub mod nginx;
pub mod path;
pub mod policy;
pub mod problem;
pub mod rewrite;
pub mod routes;
pub mod settings;
pub mod snapshot;
pub mod tls;
pub mod units;

pub use compile::{compile, Compiled};
pub use manifest::Manifests;
pub use problem::{ObjectRef, Origin, Problem, Severity};
pub use settings::Settings;
pub use snapshot::Snapshot;

/// Splits `namespace/name`.
pub fn split_namespaced(s: &str) -> Option<(&str, &str)> {
    let (ns, name) = s.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
}
