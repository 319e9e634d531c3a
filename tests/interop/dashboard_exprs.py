#!/usr/bin/env python3
"""What observability.sh needs from the dashboard and the Prometheus rules, read with the
standard library (and PyYAML for the rules files).

    dashboard_exprs.py check DASHBOARD         the dashboard's shape: schemaVersion >= 38,
                                               a Prometheus datasource variable that every
                                               panel and query uses, the site and account
                                               variables, unique panel ids, a query per panel
    dashboard_exprs.py rules DASHBOARD OUT     every PromQL expression of the dashboard
                                               (panels, panels in collapsed rows,
                                               annotations, label_values()/query_result()
                                               variable queries), template variables
                                               replaced by valid stand-ins, written to OUT
                                               as recording rules for `promtool check rules`
    dashboard_exprs.py names FILE...           the optin_* metric names the PromQL of each
                                               FILE (a .json dashboard or a .yml rules file)
                                               uses, one per line, sorted
    dashboard_exprs.py coverage RULES TESTS    every alert of RULES has a test in TESTS (a
                                               promtool test file) where it fires and one
                                               where it is quiet

Exit status 1 (with the problems on standard output) when a check fails.
"""

import json
import re
import sys

# Grafana's built-in variables that stand for a duration or a number; every other variable
# (site, account, ...) becomes a plain word, valid inside a label matcher's string.
DURATION_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__auto": "1m",
}
NUMBER_VARIABLES = {
    "__interval_ms": "60000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
# A metric name in PromQL (colons for recorded names, which are not the relay's own).
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
DATASOURCE_VARIABLE = "DS_PROMETHEUS"


def substitute(expr):
    """expr with every template variable replaced by a valid stand-in."""

    def stand_in(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in DURATION_VARIABLES:
            return DURATION_VARIABLES[name]
        if name in NUMBER_VARIABLES:
            return NUMBER_VARIABLES[name]
        return "standin"

    return VARIABLE.sub(stand_in, expr)


def all_panels(panels):
    """Every panel, with the panels of (collapsed) rows."""
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def variable_query(var):
    """The PromQL of a query variable (label_values(SELECTOR, label), query_result(EXPR),
    or a plain expression), or None when it has none (label_names(), metrics(...))."""
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    q = (q or "").strip()
    if not q:
        return None
    m = re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", q, re.S)
    if m:
        return m.group(1).strip()
    if re.fullmatch(r"label_values\(\s*\w+\s*\)", q) or q.startswith(
        ("label_names(", "metrics(")
    ):
        return None
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return m.group(1).strip()
    return q


def dashboard_exprs(dashboard):
    """(where, PromQL) for every expression of the dashboard."""
    out = []
    for p in all_panels(dashboard.get("panels", [])):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for a in dashboard.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a.get('name')!r}", a["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = variable_query(v)
            if q:
                out.append((f"variable {v.get('name')}", q))
    return out


def rules_of(path):
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc.get("groups", []) for r in g.get("rules", [])]


def rules_exprs(path):
    """(name, PromQL) for every rule of a rules file."""
    return [(r.get("alert") or r.get("record"), str(r["expr"])) for r in rules_of(path)]


def metric_names(expr):
    """The optin_* metric names in expr (string literals and recorded names left out)."""
    bare = STRING.sub('""', expr)
    return {n for n in IDENTIFIER.findall(bare) if n.startswith("optin_")}


def check(path):
    with open(path) as f:
        d = json.load(f)
    problems = []
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 38:
        problems.append(f"schemaVersion {d.get('schemaVersion')!r} is not >= 38")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get(DATASOURCE_VARIABLE)
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"no datasource variable {DATASOURCE_VARIABLE} of type prometheus")
    for name in ("site", "account"):
        if variables.get(name, {}).get("type") != "query":
            problems.append(f"no query variable {name}")
    want = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}

    def templated(ref, where):
        if ref != want:
            problems.append(f"{where}: datasource {ref!r}, not {want!r}")

    ids = set()
    panels = list(all_panels(d.get("panels", [])))
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if not p.get("gridPos"):
            problems.append(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            problems.append(f"{where}: no title")
        templated(p.get("datasource"), where)
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            templated(t.get("datasource"), f"{where} {t.get('refId')}")
            if not t.get("expr"):
                problems.append(f"{where} {t.get('refId')}: no expr")
    for v in variables.values():
        if v.get("type") == "query":
            templated(v.get("datasource"), f"variable {v.get('name')}")
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            templated(a.get("datasource"), f"annotation {a.get('name')!r}")
    for p in problems:
        print(p)
    n = sum(1 for p in panels if p.get("type") != "row")
    rows = sum(1 for p in panels if p.get("type") == "row")
    print(
        f"{path}: schemaVersion {d.get('schemaVersion')}, {n} panels in {rows} rows, "
        f"variables {', '.join(variables)}"
    )
    return not problems


def write_rules(path, out):
    with open(path) as f:
        d = json.load(f)
    exprs = dashboard_exprs(d)
    # JSON is YAML: one group, a recording rule per expression, its origin in a label.
    rules = [
        {
            "record": f"dashboard:expr_{i}",
            "expr": substitute(e),
            "labels": {"origin": where},
        }
        for i, (where, e) in enumerate(exprs, 1)
    ]
    with open(out, "w") as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
    print(f"{len(rules)} PromQL expressions from {path}")
    return bool(rules)


def names(paths):
    found = set()
    for p in paths:
        if p.endswith(".json"):
            with open(p) as f:
                exprs = dashboard_exprs(json.load(f))
        else:
            exprs = rules_exprs(p)
        for _, e in exprs:
            found |= metric_names(e)
    print("\n".join(sorted(found)))
    return True


def coverage(rules_path, tests_path):
    import yaml

    alerts = [r["alert"] for r in rules_of(rules_path) if "alert" in r]
    with open(tests_path) as f:
        tests = yaml.safe_load(f)
    fired, quiet = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test") or []:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = []
    for a in alerts:
        if a not in fired:
            problems.append(f"{a}: no test where it fires")
        if a not in quiet:
            problems.append(f"{a}: no test where it is quiet")
    unknown = (fired | quiet) - set(alerts)
    for a in sorted(unknown):
        problems.append(f"{a}: tested but not in {rules_path}")
    for p in problems:
        print(p)
    print(f"{len(alerts)} alerts; fired in a test: {len(fired)}, quiet in a test: {len(quiet)}")
    return not problems


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "check":
        ok = check(args[1])
    elif len(args) == 3 and args[0] == "rules":
        ok = write_rules(args[1], args[2])
    elif len(args) >= 2 and args[0] == "names":
        ok = names(args[1:])
    elif len(args) == 3 and args[0] == "coverage":
        ok = coverage(args[1], args[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
