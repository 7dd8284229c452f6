"""Summarise an A/B benchmark run written by lib.sh's bench_ab.

Usage: summarize.py RESULTS LABEL_A LABEL_B TITLE

RESULTS holds one JSON object per line: {"workload", "target", "round",
"report"} where "report" is shoal-loadgen's JSON (or null if the run failed).
Prints, per workload, the median ops/s, p50 and p99 of each target and the
ratio B/A of the medians, then a markdown section for docs/benchmarks.md.
Exits 1 when any run failed, saw errors, lost connections, or missed a
preloaded key: those numbers are not to be trusted, and are marked.

Standard library only.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def problems(report):
    """Why a run's numbers cannot be used, or an empty list."""
    if report is None:
        return ["run failed"]
    found = []
    if report["errors"]:
        found.append(f"{report['errors']} errors ({report.get('first_error')})")
    if report["connections_lost"]:
        found.append(f"{report['connections_lost']} connections lost")
    if report["preloaded"] and report["misses"]:
        found.append(f"{report['misses']} misses of preloaded keys")
    return found


def median(values):
    return statistics.median(values) if values else float("nan")


def summarise(rows, label_a, label_b):
    """{workload: {label: {"ops": [...], "p50": [...], "p99": [...], "cpu": [...], "problems": [...]}}}"""
    out = {}
    for row in rows:
        per_target = out.setdefault(row["workload"], {label_a: None, label_b: None})
        slot = per_target.get(row["target"])
        if slot is None:
            slot = per_target[row["target"]] = {"ops": [], "p50": [], "p99": [], "cpu": [], "problems": []}
        report = row["report"]
        bad = problems(report)
        if bad:
            slot["problems"].append(f"round {row['round']}: " + "; ".join(bad))
        if report is not None:
            slot["ops"].append(report["ops_per_sec"])
            slot["p50"].append(report["p50_us"])
            slot["p99"].append(report["p99_us"])
            if report.get("loadgen_cpu") is not None:
                slot["cpu"].append(report["loadgen_cpu"])
    return out


def ratio(b, a):
    return b / a if a else float("nan")


def fmt_ops(x):
    return f"{x:,.0f}"


def fmt_us(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def git_revision(root):
    try:
        rev = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    path, label_a, label_b, title = argv[1:]
    summary = summarise(load(path), label_a, label_b)
    trusted = True

    print()
    print(f"{'workload':<28} {'target':<14} {'ops/s':>10} {'p50 us':>9} {'p99 us':>9} {'gen cpu':>8}  rounds (ops/s)")
    for workload, targets in summary.items():
        for label in (label_a, label_b):
            s = targets.get(label) or {"ops": [], "p50": [], "p99": [], "cpu": [], "problems": ["no runs"]}
            rounds = " ".join(fmt_ops(x) for x in s["ops"])
            cpu = f"{median(s['cpu']):.2f}" if s["cpu"] else "-"
            print(f"{workload:<28} {label:<14} {fmt_ops(median(s['ops'])):>10} "
                  f"{fmt_us(median(s['p50'])):>9} {fmt_us(median(s['p99'])):>9} {cpu:>8}  {rounds}")
            for p in s["problems"]:
                trusted = False
                print(f"{'':<28} {'':<14} !! {p}")
        a, b = targets.get(label_a), targets.get(label_b)
        if a and b:
            print(f"{workload:<28} {label_b + '/' + label_a:<14} "
                  f"{'x%.2f' % ratio(median(b['ops']), median(a['ops'])):>10} "
                  f"{'x%.2f' % ratio(median(b['p50']), median(a['p50'])):>9} "
                  f"{'x%.2f' % ratio(median(b['p99']), median(a['p99'])):>9}")
        print()

    rounds = max((len(t["ops"]) for ts in summary.values() for t in ts.values() if t), default=0)
    print(f"## {title} ({date.today().isoformat()}, {git_revision(os.environ.get('BENCH_ROOT', '.'))})")
    print()
    context = os.environ.get("BENCH_CONTEXT", "")
    if context:
        print(context)
        print()
    print(f"Medians of {rounds} rounds, {label_a} and {label_b} alternated in one run; "
          f"ratio = {label_b} / {label_a} (higher ops/s is better, lower latency is better). "
          f"Machine: {os.cpu_count()} cores shared by the generator and the servers, "
          f"{platform.system()} {platform.release()}; run-to-run noise is ±10–20 %.")
    print()
    print(f"| workload | {label_a} ops/s | {label_b} ops/s | ratio | {label_a} p50 / p99 µs "
          f"| {label_b} p50 / p99 µs | p99 ratio |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for workload, targets in summary.items():
        a, b = targets.get(label_a), targets.get(label_b)
        if not (a and b):
            continue
        mark = "" if not (a["problems"] or b["problems"]) else " (errors: not valid)"
        print(f"| {workload}{mark} | {fmt_ops(median(a['ops']))} | {fmt_ops(median(b['ops']))} "
              f"| ×{ratio(median(b['ops']), median(a['ops'])):.2f} "
              f"| {fmt_us(median(a['p50']))} / {fmt_us(median(a['p99']))} "
              f"| {fmt_us(median(b['p50']))} / {fmt_us(median(b['p99']))} "
              f"| ×{ratio(median(b['p99']), median(a['p99'])):.2f} |")
    print()
    if not trusted:
        print("Some runs saw errors, lost connections or missed preloaded keys (marked above): "
              "these numbers are not valid.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
