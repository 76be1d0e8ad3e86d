//! Criterion benchmarks for issue 8's scenario 7: route lookup must not depend on the
//! number of hosts, and 10,000 Ingresses (50,000 paths) must compile in under 1 s.
//!
//! lookup/*: `Snapshot::lookup` (host, normalized path) on tables of 10 / 1,000 /
//! 10,000 hosts x 5 paths, cycling through 1,024 request hosts spread over the whole
//! table (so large tables are not measured with one hot cache line):
//!   deep_prefix  /api/v1/users/42 -> the /api/v1 Prefix route (walks 3 prefix keys)
//!   exact        /healthz -> the Exact route
//!   unknown_host a host no Ingress names (falls through wildcard and any-host tables)
//! compile/*: parse (YAML -> Manifests) and compile (Manifests -> Snapshot) of the
//! 10,000-Ingress set.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use portcullis_bench_routes::{compile_default, files, host, parse, wildcard_cert, Shape};

const NOW: i64 = 1_800_000_000;

fn lookup(c: &mut Criterion) {
    let (cert, key) = wildcard_cert();
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    for hosts in [10usize, 1_000, 10_000] {
        let shape = Shape::new(hosts);
        let compiled = compile_default(&parse(&files(&shape, &cert, &key)), NOW);
        assert_eq!(compiled.snapshot.routes.len(), hosts * shape.paths_per_host);
        let snapshot = compiled.snapshot;
        // 1,024 request hosts spread over the table (a multiplicative step mod N).
        let known: Vec<String> = (0..1024).map(|k| host((k * 7919) % hosts)).collect();
        let unknown: Vec<String> = (0..1024).map(|k| format!("nope{k}.elsewhere.test")).collect();
        for (name, path, hosts_list, expect_hit) in [
            ("deep_prefix", "/api/v1/users/42", &known, true),
            ("exact", "/healthz", &known, true),
            ("unknown_host", "/api/v1/users/42", &unknown, false),
        ] {
            assert_eq!(
                snapshot.lookup(&hosts_list[0], path).is_some(),
                expect_hit,
                "{name}"
            );
            group.bench_with_input(BenchmarkId::new(name, hosts), &hosts, |b, _| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(snapshot.lookup(black_box(&hosts_list[i]), black_box(path)))
                })
            });
        }
    }
    group.finish();
}

fn compile_10k(c: &mut Criterion) {
    let (cert, key) = wildcard_cert();
    let shape = Shape::new(10_000);
    let texts = files(&shape, &cert, &key);
    let manifests = parse(&texts);
    let compiled = compile_default(&manifests, NOW);
    assert_eq!(compiled.error_count(), 0, "{:?}", compiled.problems.first());
    assert_eq!(compiled.snapshot.routes.len(), 50_000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("parse_10k_ingresses", |b| {
        b.iter(|| black_box(parse(black_box(&texts))))
    });
    group.bench_function("compile_10k_ingresses_50k_paths", |b| {
        b.iter_batched_ref(
            || (),
            |_| black_box(compile_default(black_box(&manifests), NOW)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, lookup, compile_10k);
criterion_main!(benches);
