#!/usr/bin/env python3
"""Writes charts/qpq-operator/README.md from the chart's values.yaml.

Each value is documented in values.yaml by a comment that starts with `# --` on the lines
just above it (continued by the following `#` lines). A documented key whose value is a
block (a map) is one row, its default shown flattened (`requests.cpu=50m, ...`); the keys of
an undocumented block are rows of their own.

Usage: charts/readme.py            writes the README
       charts/readme.py --check    exits 1 (and says so) when the README is stale
Both refuse a value without a description.
Only the standard library: the values file is read line by line (it uses block maps,
scalars, and `[]`/`{}`/`["..."]` flow values only).
"""

import pathlib
import re
import sys

CHART = pathlib.Path(__file__).resolve().parent / "qpq-operator"

HEAD = """# qpq-operator

The Helm chart of the quicproquo operator: the `QpqCluster` CRD (a template, so `helm
upgrade` upgrades it; kept on uninstall), the operator Deployment with leader election, its
RBAC (and roles aggregated into `view`, `edit` and `admin`), a PodDisruptionBudget, a metrics
Service, and optionally a ServiceMonitor, a PrometheusRule with the alerts and Grafana
dashboards. The operator's guide is `docs/operator.md` in the repository.

```sh
helm install qpq-operator charts/qpq-operator --namespace qpq-system --create-namespace
helm upgrade qpq-operator charts/qpq-operator --namespace qpq-system   # CRD included
```

`values.schema.json` refuses unknown keys and wrong types at install, upgrade and template
time.

## Values

Generated from `values.yaml` by `charts/readme.py`; `charts/test.sh` fails when this table
is stale.

| key | default | description |
|---|---|---|
"""

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?: (?P<value>.*))?$")


def rows(lines):
    """(dotted key, default, description) for each documented value, in file order."""
    out = []
    stack = []  # (indent, key)
    doc = []
    in_doc = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("# --"):
            doc = [stripped[4:].strip()]
            in_doc = True
            i += 1
            continue
        if stripped.startswith("#"):
            if in_doc:
                doc.append(stripped[1:].strip())
            i += 1
            continue
        in_doc = False
        m = KEY.match(line)
        if not m:
            i += 1
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m.group("key")])
        value = (m.group("value") or "").strip()
        description = " ".join(d for d in doc if d)
        doc = []
        if value:
            out.append((key, value, description))
            i += 1
            continue
        # A block: documented as a whole, or its keys one by one.
        block = []
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            block.append(lines[j])
            j += 1
        if description:
            flat = [(k[len(key) + 1:], v) for k, v, _ in rows(dedent(block, key, indent)) if v]
            out.append((key, ", ".join(f"{k}={v}" for k, v in flat), description))
            i = j
        else:
            stack.append((indent, m.group("key")))
            i += 1
    return out


def dedent(block, key, indent):
    """The block's lines as if `key` were at the top level, so its keys come out dotted."""
    text = [f"{key}:"]
    for line in block:
        if line.strip().startswith("#"):
            continue
        text.append(line)
    return [t for t in text]


def cell(text):
    return text.replace("|", "\\|")


def render():
    lines = (CHART / "values.yaml").read_text().splitlines()
    body = "".join(
        f"| `{k}` | {'`' + cell(v) + '`' if v else ''} | {cell(d)} |\n" for k, v, d in rows(lines)
    )
    return HEAD + body


def main():
    readme = CHART / "README.md"
    text = render()
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = [k for k, _, d in rows(lines) if not d]
    if undocumented:
        print(f"values.yaml: document {', '.join(undocumented)} (a `# --` comment)", file=sys.stderr)
        return 1
    if "--check" in sys.argv[1:]:
        if not readme.exists() or readme.read_text() != text:
            print("charts/qpq-operator/README.md is stale: run charts/readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
