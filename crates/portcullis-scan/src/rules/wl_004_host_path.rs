//! **What it does**: flags `hostPath` volumes; mounts of the container runtime's socket or of `/` are critical, other writable mounts high, read-only ones medium.
//!
//! **Why it matters**: a hostPath mount reaches past the container into the node: the runtime socket or the root filesystem means control of the node and every pod on it.
//!
//! **Example**: `volumes: [{name: docker, hostPath: {path: /var/run/docker.sock}}]`.
//!
//! **Fix**: use a persistent volume, a ConfigMap or a projected volume; if the node is really needed, mount read-only the narrowest path

use crate::context::Context;
use crate::finding::{Finding, Severity};
use crate::rules::util::containers;
use crate::rules::Rule;

pub const RULE: Rule = Rule {
    id: "PC-WL-004",
    title: "hostPath volume",
    severity: Severity::High,
    check,
};

const FIX: &str = "use a persistent volume, a ConfigMap or a projected volume; if the node is really needed, mount read-only the narrowest path";

fn check(ctx: &Context<'_>, out: &mut Vec<Finding>) {
    for w in &ctx.inv.workloads {
        for v in w.spec.volumes.iter().flatten() {
            let Some(hp) = &v.host_path else { continue };
            let mounts: Vec<bool> = containers(&w.spec)
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .filter(|m| m.name == v.name)
                .map(|m| m.read_only == Some(true))
                .collect();
            let writable = mounts.iter().any(|ro| !ro);
            let path = hp.path.trim_end_matches('/');
            let runtime = [
                "/var/run/docker.sock",
                "/run/containerd/containerd.sock",
                "/var/run/crio/crio.sock",
                "/var/run",
                "/run",
                "/run/containerd",
                "/var/lib/kubelet",
                "/etc/kubernetes",
            ]
            .contains(&path);
            let severity = if path.is_empty() || runtime {
                Severity::Critical
            } else if writable {
                Severity::High
            } else {
                Severity::Medium
            };
            let shown = if path.is_empty() { "/" } else { path };
            out.push(Finding::new(
                RULE.id,
                severity,
                w.id(),
                &w.origin,
                format!(
                    "mounts host path {shown}{}",
                    if writable { " writable" } else { " read-only" }
                ),
                FIX,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{findings, pod};

    #[test]
    fn fixture() {
        let with = |path: &str, ro: &str| {
            pod(&format!("  volumes: [{{name: h, hostPath: {{path: {path}}}}}]\n  containers: [{{name: c, image: i, volumeMounts: [{{name: h, mountPath: /h{ro}}}]}}]\n"))
        };
        let f = findings(&with("/var/run/docker.sock", ""), "PC-WL-004");
        assert_eq!(f[0].severity, crate::finding::Severity::Critical);
        assert_eq!(
            findings(&with("/", ""), "PC-WL-004")[0].severity,
            crate::finding::Severity::Critical
        );
        assert_eq!(
            findings(&with("/data", ""), "PC-WL-004")[0].severity,
            crate::finding::Severity::High
        );
        assert_eq!(
            findings(&with("/data", ", readOnly: true"), "PC-WL-004")[0].severity,
            crate::finding::Severity::Medium
        );
        assert!(findings(&pod("  containers: [{name: c, image: i}]\n"), "PC-WL-004").is_empty());
    }
}
