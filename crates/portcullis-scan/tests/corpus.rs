//! The scanner against real-world manifests nobody on this project wrote
//! (`../shared/corpus`, see its README), and against 10,000 generated objects.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_scan::{scan, Finding, Inventory, Options, Severity};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
}

fn read(dir: &Path) -> Inventory {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && !portcullis_scan::is_helm_template(&p)
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut inv = Inventory::default();
    for f in files {
        inv.add_text(&f.display().to_string(), &std::fs::read_to_string(&f).unwrap());
    }
    inv
}

fn has(findings: &[Finding], rule: &str, object: &str) -> bool {
    findings.iter().any(|f| f.rule == rule && f.object == object)
}

#[test]
fn the_whole_corpus_parses_and_its_known_problems_are_found() {
    if !corpus().is_dir() {
        eprintln!("corpus not found: skipped");
        return;
    }
    let started = Instant::now();
    let inv = read(&corpus());
    let report = scan(&inv, &Options::default());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    let f = &report.findings;
    // kubernetes-goat
    assert!(has(f, "PC-RBAC-002", "ClusterRoleBinding superadmin"));
    assert!(has(
        f,
        "PC-WL-004",
        "Deployment default/system-monitor-deployment"
    ));
    assert!(has(f, "PC-WL-001", "Deployment default/health-check-deployment"));
    assert!(has(f, "PC-EXP-005", "DaemonSet default/docker-bench-security"));
    assert!(has(
        f,
        "PC-EXP-002",
        "Service default/internal-proxy-info-app-service"
    ));
    // badPods: every dangerous pod is caught for what makes it dangerous.
    assert!(has(f, "PC-WL-001", "Pod default/priv-exec-pod"));
    assert!(has(f, "PC-EXP-005", "Pod default/hostnetwork-exec-pod"));
    assert!(has(f, "PC-WL-004", "Pod default/hostpath-exec-pod"));
    for rule in ["PC-WL-001", "PC-WL-003", "PC-WL-004", "PC-EXP-005"] {
        assert!(has(f, rule, "Pod default/everything-allowed-exec-pod"), "{rule}");
    }
    // badPods' control pod: only what is truly missing (defaults left unset), nothing
    // critical or high.
    let control: Vec<_> = f
        .iter()
        .filter(|x| x.object == "Pod default/nothing-allowed-exec-pod")
        .collect();
    assert!(control.iter().all(|x| x.severity > Severity::High), "{control:?}");
    assert!(
        control.iter().any(|x| x.rule == "PC-WL-005"),
        "it does run as root by default"
    );
    // The guestbook's Ingress is served without TLS or authentication.
    assert!(has(f, "PC-EXP-006", "Ingress default/tf-serving-ingress"));
    assert!(has(f, "PC-EXP-007", "Ingress default/tf-serving-ingress"));
    assert_eq!(report.summary.entry_points, report.entry_points.len());
}

#[test]
fn microservices_demo_default_deny_and_load_balancer_are_understood() {
    let dir = corpus().join("microservices-demo");
    if !dir.is_dir() {
        return;
    }
    let report = scan(&read(&dir), &Options::default());
    let f = &report.findings;
    assert!(has(f, "PC-EXP-001", "Service default/frontend-external"));
    // deny-all (podSelector {}, Ingress and Egress) isolates the whole namespace.
    assert!(
        !f.iter().any(|x| x.rule == "PC-NET-001"),
        "{:?}",
        f.iter().filter(|x| x.rule == "PC-NET-001").collect::<Vec<_>>()
    );
    assert!(!f.iter().any(|x| x.rule == "PC-NET-002"));
    let lb = report
        .entry_points
        .iter()
        .find(|p| p.kind == "LoadBalancer")
        .unwrap();
    assert_eq!(lb.workloads, ["Deployment default/frontend"]);
    assert!(lb.network_policy);
    // Without the policies, the same manifests are wide open.
    let bare = scan(&read(&dir.join("release")), &Options::default());
    assert!(bare
        .findings
        .iter()
        .any(|x| x.rule == "PC-NET-001" && x.object == "Namespace default"));
}

#[test]
fn ten_thousand_objects_in_seconds() {
    let mut yaml = String::new();
    for i in 0..2500 {
        let ns = format!("ns{}", i % 50);
        yaml.push_str(&format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: app{i}}}}}\n  template:\n    metadata: {{labels: {{app: app{i}}}}}\n    spec: {{containers: [{{name: c, image: i}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec: {{selector: {{app: app{i}}}, ports: [{{port: 80}}]}}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec:\n  rules: [{{host: app{i}.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app{i}, port: {{number: 80}}}}}}}}]}}}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec: {{podSelector: {{matchLabels: {{app: app{i}}}}}}}\n"
        ));
    }
    let started = Instant::now();
    let mut inv = Inventory::default();
    inv.add_text("big.yaml", &yaml);
    let report = scan(&inv, &Options::default());
    let took = started.elapsed();
    assert_eq!(report.objects, 10_000);
    assert_eq!(report.entry_points.len(), 2500);
    assert!(
        !report.findings.iter().any(|f| f.rule == "PC-NET-002"),
        "every app has its policy"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    eprintln!("10,000 objects scanned in {took:?}");
}

/// Our own deployment manifests pass our own scan: nothing above info, and every
/// exemption carries its reason.
#[test]
fn the_deploy_manifests_pass_the_scan() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let report = scan(&read(&dir), &Options::default());
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    let above_info: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity < Severity::Info)
        .collect();
    assert!(above_info.is_empty(), "{above_info:#?}");
    for (f, reason) in &report.suppressed {
        assert!(
            reason.len() > 20,
            "{} on {} needs a real reason",
            f.rule,
            f.object
        );
    }
    assert_eq!(report.entry_points.len(), 1, "one LoadBalancer: the gateway");
}
