"""Run every benchmark in bench/ one after another, then print one table of the key figures
from bench/results/*.json against their targets (what ``make bench`` does).

    .venv/bin/python bench/run_all.py                  # loadgen, serving (when present),
                                                       # harvest, pipeline, then the table
    .venv/bin/python bench/run_all.py --summary-only   # the table from the JSON already there
    .venv/bin/python bench/run_all.py --only harvest,pipeline

Benchmarks run one at a time (they measure this machine; two at once would measure each
other). A benchmark that fails is reported and the others still run; the exit status is 1
when any failed. Every target is judged by the benchmark itself (its JSON's ``targets``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
#: run order: the cheap, noise-sensitive ones first
BENCHMARKS = ("loadgen", "serving", "harvest", "pipeline")


def run_benchmarks(names: list[str]) -> dict[str, str]:
    """Run ``bench/<name>.py`` for each name that exists; name -> outcome."""
    outcome = {}
    for name in names:
        script = BENCH / f"{name}.py"
        if not script.exists():
            outcome[name] = "not present"
            print(f"== {name}: bench/{name}.py is not present, skipped", flush=True)
            continue
        print(f"== {name}: {sys.executable} bench/{name}.py", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent,
                              check=False).returncode
        seconds = time.perf_counter() - t0
        outcome[name] = "ok" if code == 0 else f"failed (exit {code})"
        print(f"== {name}: {outcome[name]} in {seconds:.0f} s", flush=True)
    return outcome


# --- the summary -----------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _loadgen(data: dict[str, Any]) -> list[tuple[str, Any, str, Any]]:
    """Per client the median (min-max) requests per CPU-second; the targets on the medians."""
    rows = []
    for name, client in data.get("clients", {}).items():
        per_cpu = (client.get("spread") or {}).get("rps_per_cpu")
        if per_cpu:
            rows.append((f"{name} req per CPU-s, median (min-max)",
                         f"{_fmt(per_cpu['median'])} ({_fmt(per_cpu['min'])}-"
                         f"{_fmt(per_cpu['max'])})", "", None))
    for t in data.get("targets", []):
        rows.append((f"{t['client']} / {t['reference']} per CPU-s (median)",
                     f"{_fmt(t.get('ratio'))}x", f">= {t['minimum_ratio']:g}x",
                     bool(t.get("met"))))
    fidelity = data.get("fidelity")
    if fidelity:
        target = fidelity["target"]
        errors = target.get("median_error_pct") or {
            key: abs(fidelity[key]) for key in ("open_error_p99_pct", "open_error_p999_pct")}
        rows.append((f"fidelity: open-loop p99 / p99.9 error (median, "
                     f"{fidelity.get('rounds', 1)} rounds)",
                     f"{errors['open_error_p99_pct']:.1f}% / "
                     f"{errors['open_error_p999_pct']:.1f}%",
                     f"<= {target['max_error_pct']:g}%", bool(target["met"])))
    return rows


def _harvest(data: dict[str, Any]) -> list[tuple[str, Any, str, Any]]:
    product, limit = data["product"], data["limit"]
    rows = [("records/s: product (limit: pyarrow)",
             f"{_fmt(product['records_per_s'])} ({_fmt(limit['records_per_s'])})", "", None),
            ("time product / limit", f"{data['ratio']['seconds_product_over_limit']:.2f}x", "",
             None)]
    same_pool = data["ratio"].get("seconds_product_over_same_pool_limit")
    if same_pool:
        rows.append(("time product / limit with the product's memory pool",
                     f"{same_pool:.2f}x", "", None))
    return rows + _generic(data)


def _pipeline(data: dict[str, Any]) -> list[tuple[str, Any, str, Any]]:
    rows = []
    over = data.get("overhead")
    if over:
        rows.append(("dags test wall (load)", f"{over['wall_s']:.1f} s ({over['load_s']:.1f} s)",
                     "", None))
    return rows + _generic(data)


def _generic(data: dict[str, Any]) -> list[tuple[str, Any, str, Any]]:
    """Targets written as ``{name, value, limit, met}`` (and close variants)."""
    rows = []
    for t in data.get("targets", []):
        if not isinstance(t, dict):
            continue
        name = t.get("name") or t.get("target") or ", ".join(
            f"{k}={v}" for k, v in t.items() if isinstance(v, str))
        value = t.get("value", t.get("ratio", t.get("measured")))
        limit = t.get("limit", t.get("minimum_ratio", t.get("target_value", "")))
        rows.append((name, _fmt(value), _fmt(limit) if limit != "" else "", t.get("met")))
    return rows


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[tuple[str, Any, str, Any]]]] = {
    "loadgen": _loadgen, "harvest": _harvest, "pipeline": _pipeline,
}


def summary(results_dir: Path = RESULTS, outcome: dict[str, str] | None = None) -> str:
    """One table of every bench/results/*.json: figure, value, target, met."""
    lines = [f"{'benchmark':<10} {'figure':<58} {'value':>24} {'target':>10}  met",
             "-" * 110]
    paths = sorted(results_dir.glob("*.json"), key=lambda p: (
        BENCHMARKS.index(p.stem) if p.stem in BENCHMARKS else len(BENCHMARKS), p.stem))
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            lines.append(f"{path.stem:<10} unreadable: {exc}")
            continue
        try:
            rows = SUMMARIES.get(path.stem, _generic)(data)
        except (KeyError, TypeError) as exc:  # a JSON of another shape: say so, go on
            rows = [(f"(no summary: missing {exc})", "", "", None)]
        date = str(data.get("date", ""))[:16]
        note = f" [{outcome[path.stem]}]" if outcome and outcome.get(path.stem, "ok") != "ok" \
            else ""
        lines.append(f"{path.stem:<10} measured {date}{note}")
        for figure, value, target, met in rows:
            mark = "" if met is None else ("yes" if met is True else "NO" if met is False
                                           else str(met))
            lines.append(f"{'':<10} {figure[:58]:<58} {value!s:>24} {target:>10}  {mark}")
    if outcome:
        for name, state in outcome.items():
            if state != "ok" and not (results_dir / f"{name}.json").exists():
                lines.append(f"{name:<10} {state}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark, then one summary.")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--summary-only", action="store_true",
                        help="print the table from bench/results/*.json, run nothing")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    outcome = None if args.summary_only else run_benchmarks(names)
    print()
    print(summary(RESULTS, outcome))
    failed = [n for n, state in (outcome or {}).items() if state.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
