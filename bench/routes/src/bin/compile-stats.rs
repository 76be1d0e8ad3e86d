//! Wall time and memory of one parse + compile of a manifest directory, measured
//! inside one process (no HTTP server around it): the pure cost of a reload.
//!
//!   compile-stats DIR [--repeat N]
//!
//! Prints one JSON line: read/parse/compile milliseconds (best of N), route count,
//! `from_cache_ms` (what `portcullis serve` redoes on every reload for the files that did
//! not change: copy each file's cached typed objects into the new manifests; see
//! `FileSource::load` in crates/portcullis/src/source.rs), and
//! RSS before reading, after parsing, after compiling, and after dropping the parsed
//! manifests (what a running gateway keeps is the snapshot plus its parsed-file cache),
//! and `drop_snapshot_ms`, the time it takes to free a snapshot (what a reload spends
//! on the one it replaces), once, with glibc's malloc (the gateway uses jemalloc).

use std::time::Instant;

use portcullis_config::manifest::parse_documents;
use portcullis_config::{compile, Manifests, Settings};

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: compile-stats DIR [--repeat N]");
    let mut repeat = 3usize;
    if args.next().as_deref() == Some("--repeat") {
        repeat = args.next().and_then(|n| n.parse().ok()).expect("--repeat N");
    }
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("read DIR")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();

    let rss_start = rss_kb();
    let t = Instant::now();
    let texts: Vec<(String, String)> = paths
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read_to_string(p).expect("read")))
        .collect();
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();

    let mut parse_ms = f64::MAX;
    let mut manifests = Manifests::default();
    for _ in 0..repeat {
        let t = Instant::now();
        let mut m = Manifests::default();
        for (name, text) in &texts {
            m.add_text(name, text);
        }
        parse_ms = parse_ms.min(t.elapsed().as_secs_f64() * 1e3);
        manifests = m;
    }
    let rss_parsed = rss_kb();

    let settings = Settings::default();
    let mut compile_ms = f64::MAX;
    let mut compiled = None;
    for _ in 0..repeat {
        drop(compiled.take()); // never hold two snapshots at once
        let t = Instant::now();
        let c = compile(&manifests, &settings, now());
        compile_ms = compile_ms.min(t.elapsed().as_secs_f64() * 1e3);
        compiled = Some(c);
    }
    let compiled = compiled.expect("compiled");
    let rss_compiled = rss_kb();
    drop(manifests);
    let rss_snapshot_only = rss_kb();

    // The reload path for unchanged files: each file parsed and typed once, then its
    // objects copied into every reload's manifests.
    let cached: Vec<Manifests> = texts
        .iter()
        .map(|(name, text)| {
            let mut objects = Manifests::default();
            objects.add_documents(name, parse_documents(name, text).0);
            objects
        })
        .collect();
    let mut from_cache_ms = f64::MAX;
    for _ in 0..repeat {
        let t = Instant::now();
        let mut m = Manifests::default();
        for objects in &cached {
            m.merge(objects.clone());
        }
        from_cache_ms = from_cache_ms.min(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(&m);
    }
    drop(cached);
    let (served, rejected, routes, errors) = (
        compiled.snapshot.stats.ingresses_served,
        compiled.snapshot.stats.ingresses_rejected,
        compiled.snapshot.routes.len(),
        compiled.error_count(),
    );
    let portcullis_config::Compiled { snapshot, problems } = compiled;
    drop(problems);
    let t = Instant::now();
    drop(snapshot);
    let drop_snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "{{\"files\": {}, \"bytes\": {}, \"ingresses_served\": {}, \"ingresses_rejected\": {}, \"routes\": {}, \"errors\": {}, \"repeat\": {}, \"read_ms\": {:.1}, \"parse_ms\": {:.1}, \"from_cache_ms\": {:.1}, \"compile_ms\": {:.1}, \"rss_start_kb\": {}, \"rss_parsed_kb\": {}, \"rss_compiled_kb\": {}, \"rss_snapshot_only_kb\": {}, \"drop_snapshot_ms\": {:.1}}}",
        paths.len(),
        bytes,
        served,
        rejected,
        routes,
        errors,
        repeat,
        read_ms,
        parse_ms,
        from_cache_ms,
        compile_ms,
        rss_start,
        rss_parsed,
        rss_compiled,
        rss_snapshot_only,
        drop_snapshot_ms
    );
}
