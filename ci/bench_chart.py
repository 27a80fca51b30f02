#!/usr/bin/env python3
"""Draws docs/benchmarks.svg from the results.json that ci/bench_table.py
writes (ci/bench.sh leaves it in $CARGO_TARGET_DIR/bench-ci/results.json).

Usage: bench_chart.py RESULTS_JSON OUTPUT_SVG

One horizontal bar per scenario: the ratio ctxcore / tokio-util on a log
scale (left of 1 = ctxcore is faster), a tick at the scenario's target, and
both timings printed beside the bar. Plain SVG text, no plotting library.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

LO, HI = 0.01, 10.0  # ratio axis, log scale
LABEL_W, PLOT_W, NOTE_W = 260, 460, 230
ROW_H, TOP, BOTTOM = 22, 64, 56
GREEN, RED, GREY = "#2e8b57", "#c0392b", "#8c8c8c"


def x_of(ratio):
    r = min(max(ratio, LO), HI)
    return LABEL_W + PLOT_W * (math.log10(r) - math.log10(LO)) / (math.log10(HI) - math.log10(LO))


def ns(v):
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v / 1000:.1f} µs"
    if v >= 10:
        return f"{v:.0f} ns"
    return f"{v:.2f} ns"


def main():
    results_path, out_path = sys.argv[1:3]
    with open(results_path) as f:
        res = json.load(f)
    rows = res["scenarios"]
    width = LABEL_W + PLOT_W + NOTE_W
    height = TOP + ROW_H * len(rows) + BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
        "ctxcore / tokio-util CancellationToken (time ratio, log scale; lower is better)</text>",
        f'<text x="{width / 2}" y="38" text-anchor="middle" fill="#555">'
        f"{res.get('held', '?')} of {res.get('total', '?')} targets hold · bar = ratio, black tick = target, "
        "green = holds, red = misses, grey = report only</text>",
    ]
    plot_bottom = TOP + ROW_H * len(rows)
    # Grid: decades and the parity line.
    for k in range(int(math.log10(LO)), int(math.log10(HI)) + 1):
        r = 10.0**k
        x = x_of(r)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{plot_bottom}" '
            f'stroke="{"#333" if r == 1 else "#ddd"}" stroke-width="{1.5 if r == 1 else 1}"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{plot_bottom + 16}" text-anchor="middle">{r:g}</text>')
    out.append(
        f'<text x="{LABEL_W + PLOT_W / 2}" y="{plot_bottom + 34}" text-anchor="middle" fill="#555">'
        "ctxcore time / tokio-util time (1 = parity)</text>"
    )
    for i, s in enumerate(rows):
        y = TOP + i * ROW_H
        mid = y + ROW_H / 2
        out.append(f'<text x="{LABEL_W - 8}" y="{mid + 4:.1f}" text-anchor="end">{escape(s["name"])}</text>')
        ratio, target = s.get("ratio"), s.get("target")
        if ratio is None:
            out.append(f'<text x="{LABEL_W + 4}" y="{mid + 4:.1f}" fill="{GREY}">no figure</text>')
            continue
        color = GREY if target is None else (GREEN if ratio <= target else RED)
        x0, x1 = x_of(LO), x_of(ratio)
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{ROW_H - 8}" fill="{color}">'
            f"<title>{escape(s['what'])}: ratio {ratio:.3f}</title></rect>"
        )
        if target is not None:
            xt = x_of(target)
            out.append(f'<line x1="{xt:.1f}" y1="{y + 1}" x2="{xt:.1f}" y2="{y + ROW_H - 1}" stroke="black" stroke-width="2"/>')
        out.append(
            f'<text x="{LABEL_W + PLOT_W + 8}" y="{mid + 4:.1f}" fill="#333">'
            f"{ratio:.2f} · {ns(s.get('ctxcore_ns'))} vs {ns(s.get('tokio_util_ns'))}</text>"
        )
    out.append("</svg>")
    with open(out_path, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
