//! `portcullis migrate` through the real binary: a directory of Ingresses written for
//! ingress-nginx, stdin, the exit codes of `--fail-on`, and the real-world corpus.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{concat, nginx_ingress};
use crate::support::{binary, service, stdout_of};

/// `../shared/corpus` (see its README): read in place, never copied into the project.
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
}

/// Runs `portcullis migrate ARGS`; (exit code, stdout).
fn migrate(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary()).arg("migrate").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One Ingress served as is, one served with a difference, one refused for a snippet,
/// one of another class without nginx annotations (not reported).
fn manifests() -> String {
    let addr = "127.0.0.1:9".parse().unwrap();
    concat(&[
        service("ns", "web", &[addr]),
        nginx_ingress(
            "exact",
            false,
            &[("proxy-body-size", "8m")],
            "exact.test",
            &[("/", "web")],
        ),
        nginx_ingress(
            "rewrite",
            true,
            &[("rewrite-target", "/$2"), ("server-alias", "www.rw.test")],
            "rw.test",
            &[("/app(/|$)(.*)", "web")],
        ),
        nginx_ingress(
            "snippet",
            false,
            &[("configuration-snippet", &format!("more_set_headers \"X-A: b\";\n{}", "#".repeat(200)))],
            "snip.test",
            &[("/", "web")],
        ),
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: other, namespace: ns}\nspec:\n  ingressClassName: traefik\n  rules:\n  - host: other.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}\n".to_string(),
    ])
}

fn write_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ingresses.yaml"), text).unwrap();
    dir
}

#[test]
fn migrate_table_reports_every_ingress_and_fails_on_the_one_not_served() {
    let dir = write_dir(&manifests());
    let path = dir.path().to_str().unwrap();
    let (code, out) = migrate(&[path]);
    assert_eq!(code, 1, "the snippet Ingress is not served:\n{out}");
    for words in [
        "Ingress ns/exact (",
        ": served with warnings\n",
        "  supported  proxy-body-size: 8m\n      use instead: portcullis.dev/max-body-size\n",
        "Ingress ns/rewrite (",
        "supported with a difference                     rewrite-target: /$2",
        "not supported: ignored (served with a warning)  server-alias: www.rw.test",
        "Ingress ns/snippet (",
        ": not served\n",
        "refused: snippet  configuration-snippet: more_set_headers \"X-A: b\"; ####",
        "3 Ingresses: 1 served as is, 1 served with differences, 1 not served",
    ] {
        assert!(out.contains(words), "{words:?} not in\n{out}");
    }
    assert!(!out.contains("ns/other"), "{out}");
    // The snippet is cut to one line of about 60 characters.
    let line = out.lines().find(|l| l.contains("configuration-snippet")).unwrap();
    assert!(
        line.ends_with('…') && !line.contains("#".repeat(100).as_str()),
        "{line}"
    );
}

#[test]
fn migrate_fail_on_differs_fails_on_a_difference_alone() {
    let text = concat(&[
        service("ns", "web", &["127.0.0.1:9".parse().unwrap()]),
        nginx_ingress(
            "rewrite",
            false,
            &[("rewrite-target", "/$2")],
            "rw.test",
            &[("/app(/|$)(.*)", "web")],
        ),
    ]);
    let dir = write_dir(&text);
    let path = dir.path().to_str().unwrap();
    assert_eq!(migrate(&[path]).0, 0);
    assert_eq!(migrate(&[path, "--fail-on", "rejected"]).0, 0);
    let (code, out) = migrate(&[path, "--fail-on", "differs"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("1 Ingresses: 0 served as is, 1 served with differences, 0 not served"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_json_from_stdin() {
    let mut command = Command::new(binary());
    command.args(["migrate", "-", "--format", "json", "--fail-on", "rejected"]);
    // Only the served Ingresses, so that stdout_of's success check holds.
    let text = concat(&[
        service("ns", "web", &["127.0.0.1:9".parse().unwrap()]),
        nginx_ingress(
            "exact",
            false,
            &[("proxy-body-size", "8m")],
            "exact.test",
            &[("/", "web")],
        ),
    ]);
    let dir = write_dir(&text);
    command.stdin(std::fs::File::open(dir.path().join("ingresses.yaml")).unwrap());
    let out = stdout_of(command).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["schemaVersion"], 1);
    assert_eq!(v["ingressClass"], "nginx");
    assert_eq!(v["summary"]["servedAsIs"], 1);
    let i = &v["ingresses"][0];
    assert_eq!(
        (i["namespace"].as_str(), i["name"].as_str()),
        (Some("ns"), Some("exact"))
    );
    assert!(i["origin"].as_str().is_some_and(|o| o.starts_with("-:")), "{i}");
    assert_eq!(i["verdict"], "served-with-warnings");
    assert_eq!(
        i["annotations"][0]["name"],
        "nginx.ingress.kubernetes.io/proxy-body-size"
    );
    assert_eq!(i["annotations"][0]["status"], "supported");
    assert_eq!(i["problems"][0]["field"], "spec.tls");
}

#[test]
fn migrate_the_real_corpus() {
    let corpus = corpus();
    if !corpus.is_dir() {
        eprintln!("corpus not found: skipped");
        return;
    }
    let (code, out) = migrate(&[corpus.to_str().unwrap()]);
    // kubernetes/examples' TensorFlow Ingress: a rewrite-target written for ingress-nginx,
    // but no class, and no IngressClass nginx in the corpus to make it the default.
    assert_eq!(code, 1, "{out}");
    for words in [
        "Ingress default/tf-serving-ingress (",
        "model-serving-tensorflow/ingress.yaml:1): not served",
        "supported with a difference  rewrite-target: /$2",
        "error: spec.ingressClassName: it has no class",
        "1 Ingresses: 0 served as is, 0 served with differences, 1 not served",
    ] {
        assert!(out.contains(words), "{words:?} not in\n{out}");
    }
    let (_, json) = migrate(&[corpus.to_str().unwrap(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ingresses"][0]["annotations"][0]["status"], "differs");
    assert_eq!(v["unreadable"], serde_json::json!([]));
}
