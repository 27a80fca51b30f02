#!/usr/bin/env python3
"""Rewrites the generated parts of docs/benchmarks.md from a bench run.

Usage: bench_markdown.py RESULTS_JSON GO_JSON|- DOC_MD COMMIT

RESULTS_JSON is what ci/bench_table.py writes (ci/bench.sh leaves it in
$CARGO_TARGET_DIR/bench-ci/results.json); GO_JSON is what ci/bench_go.sh
writes (bench-ci/go.json), or "-" to leave the Go table alone. Everything
between a `<!-- generated: NAME -->` line and the next `<!-- /generated -->`
line in DOC_MD is replaced:

- `results`: the ratio table, the "K of N targets hold" line, the floors and
  the derived checks;
- `memory`: the bytes and allocations table;
- `go`: the third column (ctxcore, tokio-util and Go side by side).

Prose outside the markers is left as it is. Exits non-zero if a marker is
missing, so a renamed section cannot silently go stale.
"""

import json
import re
import sys


def ns(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def target_text(t):
    return "—" if t is None else f"≤ {t:g}"


def results_section(r, commit):
    rows = [
        "| scenario | what | ctxcore ns | tokio-util ns | ratio | target | holds |",
        "|---|---|--:|--:|--:|--:|:-:|",
    ]
    for s in r["scenarios"]:
        t = s.get("target")
        ratio = s.get("ratio")
        if t is None:
            holds = "report"
        elif ratio is not None and ratio <= t:
            holds = "yes"
        else:
            holds = "**no**"
        rows.append(
            f"| `{s['name']}` | {s['what']} | {ns(s.get('ctxcore_ns'))} | {ns(s.get('tokio_util_ns'))} "
            f"| {'—' if ratio is None else f'{ratio:.3f}'} | {target_text(t)} | {holds} |"
        )
    timed = sum(1 for s in r["scenarios"] if s.get("target") is not None)
    out = rows + [
        "",
        f"**{r['held']} of {r['total']} targets hold** (the {timed} timed scenarios that have a "
        f"target, the derived checks and the memory goals below), measured at commit `{commit}`, "
        f"each figure the lowest of {r['rounds']} rounds.",
        "",
    ]
    f = r["floors"]
    out.append(
        f"Floors (same run): one atomic load {f['atomic_load']:.2f} ns, one uncontended atomic "
        f"read-modify-write {f['atomic_rmw']:.2f} ns, one 128-byte `Box` allocation and free "
        f"{f['box_alloc']:.2f} ns; the same loop over private data on 1 and 2 threads "
        f"{f['spin_1t']:.2f} / {f['spin_2t']:.2f} ns per operation per thread (machine 2-thread "
        f"slowdown {r['machine_2t_scaling']:.2f}: 1.0 is a free second core, 2.0 none)."
    )
    out.append("")
    for c in r["checks"]:
        if c.get("untested"):
            verdict = "UNTESTED (no free second core)"
        else:
            verdict = "holds" if c["ok"] else "**misses**"
        out.append(f"- {c['check']}: {c['value']:.3f} (target {c['rule']}): {verdict}")
    return out


MEMORY_ROWS = [
    ("a root (`background().with_cancel()` / `CancellationToken::new()`)", "root"),
    ("a child (`with_cancel` / `child_token`)", "child"),
    ("a clone", "clone"),
    ("a `with_timeout` child (ctxcore; amortised timer-map growth)", "timeout_child"),
    ("one wait registration (poll `done()` / `cancelled()` once)", "wait"),
]


def memory_section(r):
    m = r["memory"]

    def cell(key):
        v = m.get(key)
        if v is None:
            return "—"
        return f"{v['allocs']:g} alloc, {v['bytes']:g} bytes"

    rows = ["| what | ctxcore | tokio-util |", "|---|---|---|"]
    for what, key in MEMORY_ROWS:
        rows.append(f"| {what} | {cell(key + '/ctxcore')} | {cell(key + '/tokio_util')} |")
    return rows


def go_section(r, go):
    rows = [
        "| scenario | ctxcore ns | tokio-util ns | Go ns | ctxcore / Go |",
        "|---|--:|--:|--:|--:|",
    ]
    for s in r["scenarios"]:
        g = go.get(s["name"])
        if s["name"] == "is_done_4t":
            continue
        c = s.get("ctxcore_ns")
        ratio = "—" if g is None or c is None else f"{c / g:.3f}"
        rows.append(f"| `{s['name']}` | {ns(c)} | {ns(s.get('tokio_util_ns'))} | {ns(g)} | {ratio} |")
    return rows


def replace(doc, name, lines):
    pat = re.compile(r"(<!-- generated: " + re.escape(name) + r" -->\n)(.*?)(<!-- /generated -->)", re.S)
    if not pat.search(doc):
        sys.exit(f"bench_markdown: no `<!-- generated: {name} -->` section in the document")
    return pat.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(3), doc, count=1)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    results_path, go_path, doc_path, commit = sys.argv[1:]
    with open(results_path) as f:
        r = json.load(f)
    with open(doc_path) as f:
        doc = f.read()
    doc = replace(doc, "results", results_section(r, commit))
    doc = replace(doc, "memory", memory_section(r))
    if go_path != "-":
        with open(go_path) as f:
            go = json.load(f)
        doc = replace(doc, "go", go_section(r, go))
    with open(doc_path, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
