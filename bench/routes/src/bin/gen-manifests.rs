//! Writes the scenario-7 manifest set: one file per namespace.
//!
//!   gen-manifests DIR --cert PEM --key PEM [--ingresses N] [--paths-per-host P] [--port PORT]
//!   gen-manifests --rewrite FILE NS GENERATION --cert PEM --key PEM [...]
//!
//! `--rewrite` prints namespace NS's file with another generation label (same routes),
//! for the reload-under-load loop in bench/run.sh.

use std::path::PathBuf;

use portcullis_bench_routes::{files, namespace_yaml, Shape};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    let mut cert = None;
    let mut key = None;
    let mut shape = Shape::new(10_000);
    let mut rewrite: Option<(usize, u64)> = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--cert" => cert = Some(PathBuf::from(value())),
            "--key" => key = Some(PathBuf::from(value())),
            "--ingresses" => shape.ingresses = value().parse().expect("--ingresses N"),
            "--paths-per-host" => shape.paths_per_host = value().parse().expect("--paths-per-host P"),
            "--port" => shape.backend_port = value().parse().expect("--port PORT"),
            "--rewrite" => {
                let ns = value().parse().expect("--rewrite NS GENERATION");
                let generation = args
                    .next()
                    .and_then(|g| g.parse().ok())
                    .expect("--rewrite NS GENERATION");
                rewrite = Some((ns, generation));
            }
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let read = |p: Option<PathBuf>, what: &str| {
        let p = p.unwrap_or_else(|| panic!("--{what} PEM is required"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (cert, key) = (read(cert, "cert"), read(key, "key"));
    if let Some((ns, generation)) = rewrite {
        print!("{}", namespace_yaml(&shape, ns, &cert, &key, generation));
        return;
    }
    let dir = dir.expect("usage: gen-manifests DIR --cert PEM --key PEM");
    std::fs::create_dir_all(&dir).expect("create DIR");
    let files = files(&shape, &cert, &key);
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    println!(
        "{}: {} files, {} Ingresses, {} paths",
        dir.display(),
        files.len(),
        shape.ingresses,
        shape.ingresses * shape.paths_per_host
    );
}
