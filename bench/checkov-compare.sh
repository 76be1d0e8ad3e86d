#!/usr/bin/env bash
# Compare `portcullis scan` with Checkov on the real-world manifest corpus.
# Not part of CI. Usage: bench/checkov-compare.sh [CORPUS_DIR]
#   CHECKOV_VENV  virtualenv holding checkov (default /tmp/checkov-venv; created if missing)
#   OUT_DIR       where raw JSON is written (default: a new temp dir, printed at the end)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORPUS="$(cd "${1:-$REPO/../shared/corpus}" && pwd)"
VENV="${CHECKOV_VENV:-/tmp/checkov-venv}"
OUT="${OUT_DIR:-$(mktemp -d /tmp/checkov-compare.XXXXXX)}"
PROJECTS=(badPods kubernetes-goat kubernetes-examples microservices-demo)
mkdir -p "$OUT"

if [[ ! -x "$VENV/bin/checkov" ]]; then
  echo "installing checkov into $VENV (large, takes a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet checkov
fi
CHECKOV="$VENV/bin/checkov"

PORTCULLIS="$REPO/target/debug/portcullis"
if [[ ! -x "$PORTCULLIS" ]]; then
  (cd "$REPO" && cargo build --bin portcullis)
fi

# Checkov exits 1 when any check fails; only >1 is an error. --skip-download stops it
# fetching guideline links from its vendor's API (no network here; results are the same).
checkov_run() { # DIR OUTFILE
  local rc=0
  "$CHECKOV" -d "$1" --framework kubernetes -o json --quiet --compact --skip-download \
    >"$2" 2>"$2.stderr" || rc=$?
  if (( rc > 1 )); then echo "checkov failed ($rc) on $1; see $2.stderr" >&2; exit "$rc"; fi
}
portcullis_run() { "$PORTCULLIS" scan "$1" --format json >"$2"; }

# 1. Whole corpus, the way the task asks (both tools then treat it as ONE cluster).
checkov_run "$CORPUS" "$OUT/checkov.json"
portcullis_run "$CORPUS" "$OUT/portcullis.json"
# 2. Each project on its own (what a user of that project would run).
for p in "${PROJECTS[@]}"; do
  checkov_run "$CORPUS/$p" "$OUT/checkov.$p.json"
  portcullis_run "$CORPUS/$p" "$OUT/portcullis.$p.json"
done

# 3. Probes: tiny synthetic manifests (written to $OUT, not taken from the corpus) that
#    isolate how each tool reads NetworkPolicies and ClusterRoleBindings.
probe() { # NAME, manifest on stdin
  mkdir -p "$OUT/probe/$1"
  cat >"$OUT/probe/$1/m.yaml"
  # full (non-quiet) run: the quiet one hides passes, and a pass is the interesting result here
  "$CHECKOV" -d "$OUT/probe/$1" --framework kubernetes -o json --compact --skip-download \
    >"$OUT/probe/$1/checkov.json" 2>/dev/null || true
  portcullis_run "$OUT/probe/$1" "$OUT/probe/$1/portcullis.json"
}
netpol_probe() { # NAME POD_METADATA_EXTRA POD_SPEC_LINE POLICY_NS SELECTOR TYPES
  probe "$1" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: app$2}
spec:
  $3
  containers: [{name: c, image: "nginx:1.25"}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pol, namespace: $4}
spec: {podSelector: $5, policyTypes: $6}
EOF
}
netpol_probe np1-deny-all-same-ns   ', labels: {app: web}' 'restartPolicy: Always' app   '{}'                      '[Ingress, Egress]'
netpol_probe np2-deny-all-other-ns  ', labels: {app: web}' 'restartPolicy: Always' other '{}'                      '[Ingress, Egress]'
netpol_probe np3-egress-only        ', labels: {app: web}' 'restartPolicy: Always' app   '{}'                      '[Egress]'
netpol_probe np4-pod-without-labels ''                     'restartPolicy: Always' app   '{matchLabels: {app: x}}' '[Ingress]'
netpol_probe np5-hostnetwork-pod    ', labels: {app: web}' 'hostNetwork: true'     app   '{}'                      '[Ingress]'
rbac_probe() { # NAME EXTRA_RULE: the goat binding plus a ClusterRole cluster-admin defined in the scan
  probe "$1" <<EOF
$(cat "$CORPUS/kubernetes-goat/scenarios/insecure-rbac/setup.yaml")
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: cluster-admin}
rules:
- {apiGroups: ["*"], resources: ["*"], verbs: ["*"]}
$2
EOF
}
rbac_probe rb1-goat-binding-only-wildcard-rule ''
rbac_probe rb2-goat-binding-real-cluster-admin '- {nonResourceURLs: ["*"], verbs: ["*"]}'

{
  echo "date:        $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "checkov:     $("$CHECKOV" --version 2>/dev/null)"
  echo "portcullis:  $PORTCULLIS (git $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || echo ', crates/ dirty'); binary built $(date -u -r "$PORTCULLIS" +%Y-%m-%dT%H:%MZ))"
  echo "corpus:      $CORPUS"
  echo "raw output:  $OUT"
} >"$OUT/meta.txt"

"$VENV/bin/python" - "$OUT" "$CORPUS" "${PROJECTS[@]}" <<'PY'
import json, sys, os, re, collections
out, corpus, projects = sys.argv[1], sys.argv[2], sys.argv[3:]

# category: (portcullis rules, checkov checks). Checks in neither list count as "other:<id>".
CATS = {
  "privileged":        (["PC-WL-001"], ["CKV_K8S_16", "CKV_K8S_2"]),
  "priv-escalation":   (["PC-WL-002"], ["CKV_K8S_20", "CKV_K8S_5"]),
  "host-pid-ipc":      (["PC-WL-003"], ["CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_1", "CKV_K8S_3"]),
  "host-network":      (["PC-EXP-005"], ["CKV_K8S_19", "CKV_K8S_4"]),
  "host-port":         (["PC-EXP-004"], ["CKV_K8S_26"]),
  "host-path":         (["PC-WL-004"], ["CKV_K8S_27"]),
  "root":              (["PC-WL-005"], ["CKV_K8S_23", "CKV_K8S_6"]),
  "capabilities":      (["PC-WL-006"], ["CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_39", "CKV_K8S_24", "CKV_K8S_36", "CKV_K8S_7"]),
  "writable-rootfs":   (["PC-WL-007"], ["CKV_K8S_22"]),
  "seccomp":           (["PC-WL-008"], ["CKV_K8S_31", "CKV_K8S_32"]),
  "sa-token":          (["PC-WL-009"], ["CKV_K8S_38"]),
  "secret-in-env":     (["PC-WL-010"], ["CKV_K8S_35"]),
  "network-policy":    (["PC-NET-001", "PC-NET-002", "PC-NET-003"], ["CKV2_K8S_6"]),
  "rbac":              ([f"PC-RBAC-00{i}" for i in range(1, 10)],
                        ["CKV_K8S_49", "CKV_K8S_155", "CKV_K8S_156", "CKV_K8S_157", "CKV_K8S_158"] + [f"CKV2_K8S_{i}" for i in range(1, 6)]),
  "ingress-snippet":   (["PC-EXP-008"], ["CKV_K8S_152", "CKV_K8S_153", "CKV_K8S_154"]),
  "control-plane":     (["PC-CP-001", "PC-CP-002", "PC-CP-003", "PC-CP-004"], [f"CKV_K8S_{i}" for i in range(68, 152)]),
  "lb/nodeport/extip": (["PC-EXP-001", "PC-EXP-002", "PC-EXP-003"], []),
  "no-tls":            (["PC-EXP-006", "PC-EXP-009"], []),
  "no-auth":           (["PC-EXP-007"], []),
  "removed-api":       (["PC-API-001"], []),
  "probes":            ([], ["CKV_K8S_8", "CKV_K8S_9"]),
  "resources":         ([], ["CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13"]),
  "image-tag/digest":  ([], ["CKV_K8S_14", "CKV_K8S_43"]),
  "pull-policy":       ([], ["CKV_K8S_15"]),
  "default-namespace": ([], ["CKV_K8S_21"]),
  "no-securitycontext":([], ["CKV_K8S_29", "CKV_K8S_30"]),
  "high-uid":          ([], ["CKV_K8S_40"]),
  "default-sa":        ([], ["CKV_K8S_41", "CKV_K8S_42"]),
  "dashboard/tiller":  ([], ["CKV_K8S_33", "CKV_K8S_34", "CKV_K8S_44", "CKV_K8S_45", "CKV_K8S_159"]),
}
PC2CAT = {r: c for c, (rs, _) in CATS.items() for r in rs}
CK2CAT = {k: c for c, (_, ks) in CATS.items() for k in ks}
WORKLOADS = {"Pod", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob", "ReplicationController"}
HYGIENE = {"probes", "resources", "image-tag/digest", "pull-policy", "default-namespace", "no-securitycontext", "high-uid", "default-sa", "dashboard/tiller"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace", "StorageClass", "PersistentVolume", "Node"}

def project_of(path):
    rel = os.path.relpath(path, corpus) if os.path.isabs(path) and path.startswith(corpus) else path.lstrip("/")
    return rel.split("/")[0] if "/" in rel else "?"

def key(proj, kind, ns, name):
    k = "workload" if kind in WORKLOADS else kind
    return (proj, k, "" if kind in CLUSTER_SCOPED else (ns or "default"), name)

def load_pc(path, proj=None):
    d = json.load(open(path)); pairs = {}; disp = {}
    for f in d["findings"]:
        kind, _, ref = f["object"].partition(" ")
        ns, _, name = ref.rpartition("/")
        p = proj or project_of(f.get("file") or "")
        k = key(p, kind, ns, name); disp[k] = f["object"]
        pairs.setdefault((k, PC2CAT.get(f["rule"], "other:" + f["rule"])), set()).add(f["rule"])
    return d, pairs, disp

def load_ck(path, proj=None):
    d = json.load(open(path))
    d = d[0] if isinstance(d, list) else d
    fc = d.get("results", {}).get("failed_checks", []); pairs = {}; disp = {}
    for f in fc:
        kind, ns, rest = f["resource"].split(".", 2)
        # graph checks on Pods use synthetic pods "<workload>.<label-k>-<label-v>..."
        name = rest.split(".")[0] if f["check_id"].startswith("CKV2") and kind == "Pod" else rest
        p = proj or project_of(f["file_path"])
        k = key(p, kind, ns, name); disp.setdefault(k, f"{kind} {ns}/{name}")
        pairs.setdefault((k, CK2CAT.get(f["check_id"], "other:" + f["check_id"])), set()).add(f["check_id"])
    return d, fc, pairs, disp

pcd, pcp, pcdisp = load_pc(f"{out}/portcullis.json")
ckd, ckf, ckp, ckdisp = load_ck(f"{out}/checkov.json")
disp = {**ckdisp, **pcdisp}
show = lambda k: f"{disp.get(k, k)} [{k[0]}]"

print(open(f"{out}/meta.txt").read())
print("== Totals, whole corpus scanned as one directory")
print(f"portcullis: {pcd['objects']} objects, {len(pcd['findings'])} findings, {len(pcd['entryPoints'])} entry points, "
      f"{len(pcp)} (object, category) pairs")
print(f"checkov:    {ckd['summary']['resource_count']} resources (incl. synthetic pods), {len(ckf)} failed checks "
      f"({ckd['summary']['passed']} passed), {len(ckp)} (object, category) pairs")
both = set(pcp) & set(ckp)
print(f"pairs found by both: {len(both)}; portcullis only: {len(set(pcp)-set(ckp))}; checkov only: {len(set(ckp)-set(pcp))}")

print("\n== Per project (findings / failed checks; pairs)   [isolated = project scanned alone]")
print(f"{'project':20} {'pc find':>7} {'ck fail':>7} {'ck sec':>6} {'pc pair':>7} {'ck pair':>7} {'both':>5} | {'pc iso':>6} {'ck iso':>6} {'pc net':>6} {'ck net':>6}")
for p in projects:
    nf = sum(1 for f in pcd["findings"] if project_of(f["file"]) == p)
    nc = sum(1 for f in ckf if project_of(f["file_path"]) == p)
    pp = {x for x in pcp if x[0][0] == p}; cp = {x for x in ckp if x[0][0] == p}
    nsec = sum(1 for f in ckf if project_of(f["file_path"]) == p and CK2CAT.get(f["check_id"]) not in HYGIENE)
    ipcd, ipcp, _ = load_pc(f"{out}/portcullis.{p}.json", p)
    _, ickf, ickp, _ = load_ck(f"{out}/checkov.{p}.json", p)
    inet = lambda pairs: sum(1 for (k, c) in pairs if c == "network-policy")
    print(f"{p:20} {nf:7} {nc:7} {nsec:6} {len(pp):7} {len(cp):7} {len(pp & cp):5} | "
          f"{len(ipcd['findings']):6} {len(ickf):6} {inet(ipcp):6} {inet(ickp):6}")
print("ck sec = failed checks outside the hygiene categories; pc/ck net = network-policy pairs in the isolated runs")

print("\n== Per category: pairs (portcullis / checkov / both)  and the rule ids that fired")
cats = sorted({c for _, c in pcp} | {c for _, c in ckp}, key=lambda c: (list(CATS).index(c) if c in CATS else 99, c))
for c in cats:
    a = {k for k, cc in pcp if cc == c}; b = {k for k, cc in ckp if cc == c}
    ids = sorted({i for (k, cc), s in pcp.items() if cc == c for i in s} | {i for (k, cc), s in ckp.items() if cc == c for i in s})
    print(f"  {c:20} {len(a):3} / {len(b):3} / {len(a & b):3}   {' '.join(ids)}")

print("\n== Notable: found by one tool only (security categories; hygiene-only categories are counted above)")
for c in cats:
    if c in HYGIENE: continue
    a = {k for k, cc in pcp if cc == c}; b = {k for k, cc in ckp if cc == c}
    for who, only, src in (("portcullis only", a - b, pcp), ("checkov only", b - a, ckp)):
        if not only: continue
        print(f"  [{c}] {who} ({len(only)}):")
        for k in sorted(only)[:12]:
            extra = ""
            if src is pcp:
                msgs = [f["message"] for f in pcd["findings"] if PC2CAT.get(f["rule"]) == c and f["object"] == disp.get(k) and project_of(f["file"]) == k[0]]
                extra = "; ".join(sorted(set(msgs)))[:110]
            print(f"    {show(k)}  {','.join(sorted(src[(k, c)]))}  {extra}")
        if len(only) > 12: print(f"    ... {len(only) - 12} more")

print("\n== portcullis entry points, and checkov's exposure-related failures on the same object")
EXPOSURE = {"host-network", "host-port", "network-policy", "ingress-snippet", "lb/nodeport/extip", "no-tls", "no-auth"}
for e in pcd["entryPoints"]:
    kind, _, ref = e["via"].split(" ")[0], None, e["via"].split(" ")[1]
    ns, _, name = ref.rpartition("/")
    ck_ids = sorted({i for (k, c), s in ckp.items() if k[1:] == key("", kind, ns, name)[1:] and c in EXPOSURE for i in s})
    print(f"  {e['kind']:12} {e['via'][:52]:52} tls={e['tls']!s:5} netpol={e['network_policy']!s:5}  checkov: {' '.join(ck_ids) or '-'}")

print("\n== Probes (synthetic manifests; see <raw output>/probe/*/m.yaml)")
for pr in sorted(os.listdir(f"{out}/probe")):
    full = json.load(open(f"{out}/probe/{pr}/checkov.json"))
    full = full[0] if isinstance(full, list) else full
    want = ("CKV2_K8S_6", "CKV_K8S_19") if pr.startswith("np") else ("CKV2_K8S_1", "CKV2_K8S_2", "CKV2_K8S_3", "CKV2_K8S_5", "CKV_K8S_49")
    res = sorted(f"{f['check_id']}={k.split('_')[0]}" for k in ("passed_checks", "failed_checks")
                 for f in full["results"].get(k, []) if f["check_id"] in want)
    pc = json.load(open(f"{out}/probe/{pr}/portcullis.json"))
    rules = sorted({f["rule"] for f in pc["findings"] if f["rule"].startswith(("PC-NET", "PC-EXP", "PC-RBAC"))})
    print(f"  {pr:36} checkov: {' '.join(res) or '-'}")
    print(f"  {'':36} portcullis: {' '.join(rules) or 'no NET/EXP/RBAC finding'}")
PY
echo "raw JSON in $OUT"
