//! Arbitrary bytes, read as (lossy) UTF-8 YAML, through the whole config pipeline:
//! `Manifests::add_text` then `compile`, under default settings and under settings
//! with an OIDC provider (so `portcullis.dev/auth` annotations compile too).
//!
//! Checks: nothing panics (Problems are the expected outcome for bad input), and the
//! snapshot is internally consistent: every route's backend exists, and every route
//! in the table is found again when its own host and path are looked up.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_config::routes::HostMatch;
use portcullis_config::{compile, Manifests, Settings};

/// A fixed clock (2026-01-01T00:00:00Z) so runs are reproducible.
const NOW: i64 = 1_767_225_600;

fn settings() -> &'static [Settings; 2] {
    static SETTINGS: OnceLock<[Settings; 2]> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let oidc = Settings::from_yaml(
            "oidc:\n  providers:\n  - name: corp\n    issuer: https://idp.example.com\n    clientId: gw\n  sessionKeys: [{env: FUZZ_SESSION_KEY}]\n",
        )
        .expect("fixed OIDC settings parse");
        [Settings::default(), oidc]
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut manifests = Manifests::default();
    manifests.add_text("fuzz.yaml", &text);
    // Problems must render (they go to logs and `portcullis check`).
    for p in &manifests.problems {
        let _ = p.to_string();
    }
    for settings in settings() {
        let compiled = compile(&manifests, settings, NOW);
        for p in &compiled.problems {
            let _ = p.to_string();
        }
        let _ = compiled.error_count();
        let snapshot = &compiled.snapshot;
        for (id, route) in snapshot.routes.routes() {
            assert!(
                route.backend.0 < snapshot.backends.len(),
                "route {id:?} points at backend {:?} of {}",
                route.backend,
                snapshot.backends.len()
            );
            let _ = snapshot.backend(route.backend).to_string();
            let host = match &route.host {
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Wildcard(s) => format!("x.{s}"),
                HostMatch::Any => "no-such-host.invalid".to_string(),
            };
            let path = route.path.clone();
            assert!(
                snapshot.lookup(&host, &path).is_some(),
                "route {id:?} ({} {} {}) is in the table but {host} {path} finds nothing",
                route.host,
                route.path,
                route.path_type
            );
            let _ = snapshot.host_has_tls(&host);
        }
    }
    // The config-file parser takes the same kind of text.
    let _ = Settings::from_yaml(&text);
});
