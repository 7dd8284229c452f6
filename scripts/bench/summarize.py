"""Summarise an A/B benchmark run written by lib.sh's bench_ab, or a run of
any number of targets written by bench_rounds.

Usage: summarize.py RESULTS LABEL_A LABEL_B TITLE
       summarize.py --targets A,B,C --ratios B/A,C/A[,…] [--goal B/A] RESULTS TITLE

The second form prints, per workload, the medians of every target, then each
listed ratio (of ops/s, p50 and p99 medians); with --goal, the ratio's row
says whether its numerator reached at least the denominator's ops/s at no
more than its p99.

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
    if os.environ.get("BENCH_REVISION"):
        return os.environ["BENCH_REVISION"]  # captured when the binaries were built
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


def summarise_many(rows, labels):
    """Like summarise, for any number of labels."""
    out = {}
    for row in rows:
        per_target = out.setdefault(row["workload"], {label: None for label in labels})
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


EMPTY = {"ops": [], "p50": [], "p99": [], "cpu": [], "problems": ["no runs"]}


def goal_met(num, den):
    """True when num reached >= den's ops/s at <= den's p99 (medians)."""
    return (median(num["ops"]) >= median(den["ops"])
            and median(num["p99"]) <= median(den["p99"]))


def main_many(argv):
    import argparse
    parser = argparse.ArgumentParser(prog="summarize.py")
    parser.add_argument("--targets", required=True)
    parser.add_argument("--ratios", required=True)
    parser.add_argument("--goal", default="")
    parser.add_argument("results")
    parser.add_argument("title")
    args = parser.parse_args(argv[1:])
    labels = [t for t in args.targets.split(",") if t]
    ratios = []
    for spec in (r for r in args.ratios.split(",") if r):
        num, _, den = spec.partition("/")
        if num not in labels or den not in labels:
            parser.error(f"ratio {spec!r} names a target not in --targets")
        ratios.append((num, den))
    goal = tuple(args.goal.partition("/")[::2]) if args.goal else None
    summary = summarise_many(load(args.results), labels)
    trusted = True

    print()
    print(f"{'workload':<18} {'target':<22} {'ops/s':>10} {'p50 us':>9} {'p99 us':>9} {'gen cpu':>8}  rounds (ops/s)")
    for workload, targets in summary.items():
        for label in labels:
            s = targets.get(label) or EMPTY
            rounds = " ".join(fmt_ops(x) for x in s["ops"])
            cpu = f"{median(s['cpu']):.2f}" if s["cpu"] else "-"
            print(f"{workload:<18} {label:<22} {fmt_ops(median(s['ops'])):>10} "
                  f"{fmt_us(median(s['p50'])):>9} {fmt_us(median(s['p99'])):>9} {cpu:>8}  {rounds}")
            for p in s["problems"]:
                trusted = False
                print(f"{'':<18} {'':<22} !! {p}")
        for num, den in ratios:
            a, b = targets.get(den), targets.get(num)
            if not (a and b):
                continue
            verdict = ""
            if goal == (num, den):
                verdict = "  goal met" if goal_met(b, a) else "  goal NOT met"
                if a["problems"] or b["problems"]:
                    verdict += " (runs not valid)"
            print(f"{workload:<18} {num + '/' + den:<22} "
                  f"{'x%.2f' % ratio(median(b['ops']), median(a['ops'])):>10} "
                  f"{'x%.2f' % ratio(median(b['p50']), median(a['p50'])):>9} "
                  f"{'x%.2f' % ratio(median(b['p99']), median(a['p99'])):>9}{verdict}")
        print()

    rounds = max((len(t["ops"]) for ts in summary.values() for t in ts.values() if t), default=0)
    print(f"## {args.title} ({date.today().isoformat()}, {git_revision(os.environ.get('BENCH_ROOT', '.'))})")
    print()
    context = os.environ.get("BENCH_CONTEXT", "")
    if context:
        print(context)
        print()
    print(f"Medians of {rounds} rounds, all targets alternated in one run (each round starts "
          f"one target later). Machine: {os.cpu_count()} cores shared by the generator, the "
          f"proxies and the servers, {platform.system()} {platform.release()}; run-to-run noise "
          f"is ±10–20 %. `gen cpu`: the generator's own CPU use, in cores.")
    print()
    print("| workload | target | ops/s | p50 µs | p99 µs | gen cpu |")
    print("|---|---|--:|--:|--:|--:|")
    for workload, targets in summary.items():
        for label in labels:
            s = targets.get(label)
            if not s:
                continue
            mark = " (errors: not valid)" if s["problems"] else ""
            cpu = f"{median(s['cpu']):.2f}" if s["cpu"] else "-"
            print(f"| {workload} | {label}{mark} | {fmt_ops(median(s['ops']))} "
                  f"| {fmt_us(median(s['p50']))} | {fmt_us(median(s['p99']))} | {cpu} |")
    print()
    invalid = [(w, label, p) for w, ts in summary.items() for label in labels
               for p in (ts.get(label) or EMPTY)["problems"]]
    if invalid:
        print("Not valid: " + "; ".join(f"{label} {w} {p}" for w, label, p in invalid) + ".")
        print()
    if ratios:
        print("Ratios of the medians (ops/s: higher is better for the numerator; p50, p99: lower is better)"
              + (f"; goal: {goal[0]} ≥ ×1.00 the ops/s of {goal[1]} at ≤ its p99." if goal else "."))
        print()
        print("| workload | ratio | ops/s | p50 | p99 |" + (" goal |" if goal else ""))
        print("|---|---|--:|--:|--:|" + ("---|" if goal else ""))
        for workload, targets in summary.items():
            for num, den in ratios:
                a, b = targets.get(den), targets.get(num)
                if not (a and b):
                    continue
                cell = ""
                if goal:
                    cell = " |"
                    if goal == (num, den):
                        cell = " met" if goal_met(b, a) else " not met"
                        cell += " (runs not valid) |" if a["problems"] or b["problems"] else " |"
                print(f"| {workload} | {num} / {den} "
                      f"| ×{ratio(median(b['ops']), median(a['ops'])):.2f} "
                      f"| ×{ratio(median(b['p50']), median(a['p50'])):.2f} "
                      f"| ×{ratio(median(b['p99']), median(a['p99'])):.2f} |{cell}")
        print()
    if not trusted:
        print("Some runs saw errors, lost connections or missed preloaded keys (marked above): "
              "these numbers are not valid.", file=sys.stderr)
        return 1
    return 0


def main(argv):
    if any(a.startswith("--") for a in argv[1:]):
        return main_many(argv)
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
