#!/usr/bin/env bash
# Checks of the qpq-operator chart that need no cluster: lint, renders, and the values
# schema refusing what it must. Usage: charts/test.sh <helm>. Run by .ci/run.
set -euo pipefail
HELM="${1:?usage: charts/test.sh <helm>}"
CHART="$(dirname "$0")/qpq-operator"
fail=0

render() { "$HELM" template qpq-operator "$CHART" --namespace qpq-system "$@"; }

# A render that must succeed, and contain (or, with !, not contain) each pattern.
expect_ok() {
  local name="$1"; shift
  local args=() patterns=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do args+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  patterns=("$@")
  local out
  if ! out="$(render "${args[@]}" 2>&1)"; then
    echo "FAIL $name: render failed: $out" >&2; fail=1; return
  fi
  for p in "${patterns[@]}"; do
    if [[ "$p" == '!'* ]]; then
      if grep -qE -- "${p:1}" <<<"$out"; then echo "FAIL $name: found '${p:1}'" >&2; fail=1; return; fi
    elif ! grep -qE -- "$p" <<<"$out"; then
      echo "FAIL $name: missing '$p'" >&2; fail=1; return
    fi
  done
  echo "ok   $name"
}

# A render that the values schema (or a template check) must refuse, naming `reason`.
expect_refused() {
  local name="$1" reason="$2"; shift 2
  local out
  if out="$(render "$@" 2>&1)"; then
    echo "FAIL $name: rendered, expected a refusal" >&2; fail=1; return
  fi
  if ! grep -qE -- "$reason" <<<"$out"; then
    echo "FAIL $name: refused for another reason: $out" >&2; fail=1; return
  fi
  echo "ok   $name (refused)"
}

"$HELM" lint --strict "$CHART"
# The chart's README is generated from values.yaml, every value documented.
if python3 "$(dirname "$0")/readme.py" --check; then echo "ok   README.md matches values.yaml"
else echo "FAIL README.md: run charts/readme.py" >&2; fail=1; fi

expect_ok "defaults" -- \
  'kind: Deployment' 'kind: PodDisruptionBudget' 'minAvailable: 1' \
  'name: qpq-operator-view' 'aggregate-to-view: "true"' \
  'name: qpq-operator-edit' 'aggregate-to-edit: "true"' 'runAsUser: 65532' \
  'readOnlyRootFilesystem: true'
expect_ok "the CRDs: templates Helm upgrades, kept on uninstall" -- \
  'kind: CustomResourceDefinition' 'helm.sh/resource-policy: keep' 'name: qpqclusters.qpq.dev' \
  'name: qpqbackups.qpq.dev' 'name: qpqscheduledbackups.qpq.dev'
expect_ok "CRD managed elsewhere" --set crds.install=false -- '!kind: CustomResourceDefinition'
# The template carries the generated schema unchanged (crds/qpqcluster.yaml from `spec:` on).
if ! diff <(render --show-only templates/crd.yaml | sed -n '/^spec:/,$p') \
  <(sed -n '/^spec:/,$p' "$(dirname "$0")/../crds/qpqcluster.yaml") >/dev/null; then
  echo "FAIL the CRD template differs from crds/qpqcluster.yaml" >&2; fail=1
else echo "ok   the CRD template is crds/qpqcluster.yaml"; fi
if ! diff <(render --show-only templates/crd-qpqbackup.yaml | sed -n '/^spec:/,$p') \
  <(sed -n '/^spec:/,$p' "$(dirname "$0")/../crds/qpqbackup.yaml") >/dev/null; then
  echo "FAIL the QpqBackup CRD template differs from crds/qpqbackup.yaml" >&2; fail=1
else echo "ok   the QpqBackup CRD template is crds/qpqbackup.yaml"; fi
if ! diff <(render --show-only templates/crd-qpqscheduledbackup.yaml | sed -n '/^spec:/,$p') \
  <(sed -n '/^spec:/,$p' "$(dirname "$0")/../crds/qpqscheduledbackup.yaml") >/dev/null; then
  echo "FAIL the QpqScheduledBackup CRD template differs from crds/qpqscheduledbackup.yaml" >&2; fail=1
else echo "ok   the QpqScheduledBackup CRD template is crds/qpqscheduledbackup.yaml"; fi
expect_ok "one replica: no PDB" --set replicaCount=1 -- '!kind: PodDisruptionBudget'
expect_ok "PDB off" --set podDisruptionBudget.enabled=false -- '!kind: PodDisruptionBudget'
expect_ok "aggregated roles off" --set rbac.aggregatedRoles=false -- '!aggregate-to-'
expect_ok "OpenShift: runAsUser unset" --set podSecurityContext.runAsUser=null -- \
  '!runAsUser' 'runAsNonRoot: true'
expect_ok "watch one namespace" --set watchNamespace=apps -- 'kind: Role$' 'namespace: apps'
expect_ok "monitoring on" --set serviceMonitor.enabled=true --set prometheusRule.enabled=true -- \
  'kind: ServiceMonitor' 'kind: PrometheusRule'

expect_ok "dashboards on" --set dashboards.enabled=true -- \
  'name: qpq-operator-dashboard-cluster' 'name: qpq-operator-dashboard-operator' \
  'grafana_dashboard: "1"' 'qpq-cluster.json: \|-' '"uid": "qpq-operator"'
expect_ok "dashboards elsewhere, another label" --set dashboards.enabled=true \
  --set dashboards.namespace=monitoring --set dashboards.label=dashboards \
  --set-string dashboards.labelValue=qpq -- 'namespace: monitoring' 'dashboards: "qpq"'
expect_ok "dashboards off by default" -- '!grafana_dashboard'
# Each dashboard ConfigMap carries its file unchanged: valid JSON, as the sidecar reads it.
if ! render --set dashboards.enabled=true | python3 -c '
import json, sys
docs = [d for d in sys.stdin.read().split("\n---\n") if "grafana_dashboard" in d]
assert len(docs) == 2, f"{len(docs)} dashboard ConfigMaps"
for d in docs:
    body = d.split("|-\n", 1)[1]
    lines = [l[4:] if l.startswith("    ") else l for l in body.splitlines()]
    dash = json.loads("\n".join(lines))
    assert dash["uid"] and dash["panels"], dash.get("title")
'; then echo "FAIL dashboards: a ConfigMap does not hold its JSON" >&2; fail=1; else echo "ok   dashboards parse as JSON"; fi

# Every panel's query is PromQL that Prometheus parses (promtool, from scripts/bootstrap): each
# becomes a recording rule, with the dashboards' variables filled in.
rules="$(mktemp)"
python3 - "$CHART/dashboards" >"$rules" <<'PY'
import json, pathlib, sys
rules = []
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    for p in json.loads(f.read_text())["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in (("$namespace", "ns"), ("$job", "job"), ("$cluster", "c")):
                expr = expr.replace(var, value)
            rules.append({"record": f"qpq:dashboard:{len(rules)}", "expr": expr})
print(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
PY
if out="$(promtool check rules "$rules" 2>&1)"; then
  echo "ok   dashboard queries parse ($(grep -o 'SUCCESS: [0-9]* rules' <<<"$out"))"
else
  echo "FAIL dashboard queries: $out" >&2; fail=1
fi
rm -f "$rules"

expect_refused "dashboard label value with a space" 'labelValue' \
  --set dashboards.enabled=true --set-string 'dashboards.labelValue=a b'
expect_refused "replicaCount 0" 'replicaCount' --set replicaCount=0
expect_refused "replicaCount a string" 'replicaCount' --set-string replicaCount=two
expect_refused "unknown log format" 'format' --set logging.format=xml
expect_refused "unknown pull policy" 'pullPolicy' --set image.pullPolicy=Sometimes
expect_refused "privileged metrics port" 'metricsPort' --set metricsPort=80
expect_refused "misspelt top-level key" 'replicas' --set replicas=3
expect_refused "misspelt crds key" 'instal' --set crds.instal=false
expect_refused "bad namespace name" 'watchNamespace' --set watchNamespace=Apps_1
expect_refused "two replicas without election" 'leaderElection' \
  --set leaderElection.enabled=false

exit "$fail"
