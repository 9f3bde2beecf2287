"""Command line helpers for people: ``python -m caio_operators.cli {progress,summary}``.

``progress`` filters the (very verbose) output of ``airflow dags test`` down to task starts
and ends, this package's own log lines (load progress, summary) and errors; the full log is
kept by the caller. ``summary`` prints the summary table of a stored run and where its
report is.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator

_START = re.compile(
    r"^\d{4}-\d\d-\d\dT(?P<hms>\d\d:\d\d:\d\d)\S*\s+\[(?P<level>\w+)\s*\]\s+(?P<msg>.*)$"
)
_LOGGER = re.compile(r"\s+\[(?P<logger>[\w.]+)\](?:\s+\S+=\S*)*\s*$")
# Native TensorFlow/absl chatter on stderr (no timestamp of Airflow's): never continuation.
_NATIVE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)")
_TASK = re.compile(r"\[DAG TEST\] (?P<what>starting|end task) task_id=(?P<task>\S+)")


def _records(lines: Iterable[str]) -> Iterator[tuple[str, str, list[str], str]]:
    """Group log lines into records: (time, level, message lines, logger).

    A message may span lines; structlog puts the ``[logger] key=value`` tail after its last
    line. Lines before the first timestamp (tracebacks of the CLI itself) are their own record.
    """
    hms, level = "", ""
    body: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        start = _START.match(line)
        if start and body:
            yield _finish(hms, level, body)
            body = []
        if start:
            hms, level, body = start["hms"], start["level"], [start["msg"]]
        elif not _NATIVE.match(line):
            body.append(line)
    if body:
        yield _finish(hms, level, body)


def _finish(hms: str, level: str, body: list[str]) -> tuple[str, str, list[str], str]:
    for i in range(len(body) - 1, -1, -1):
        tail = _LOGGER.search(body[i])
        if tail:
            body = [*body[:i], body[i][: tail.start()], *body[i + 1:]]
            return hms, level, body, tail["logger"]
    return hms, level, body, ""


def filter_progress(lines: Iterable[str]) -> Iterator[str]:
    """Keep what a person watching a run needs from an ``airflow dags test`` log."""
    for hms, level, body, logger in _records(lines):
        first, rest = body[0], body[1:]
        task = _TASK.search(first)
        if task:
            verb = "started" if task["what"] == "starting" else "finished"
            yield f"{hms}  task {task['task']} {verb}"
            continue
        if "caio_operators" in logger or first.startswith("DagRun Finished"):
            yield f"{hms}  {first}".rstrip()
        elif level in ("error", "critical") or "Traceback" in "".join(body):
            yield f"{hms}  {level.upper()} {first}".rstrip()
        else:
            continue
        yield from (line for line in rest if line.strip())


def _progress(_: argparse.Namespace) -> int:
    try:
        for line in filter_progress(sys.stdin):
            print(line, flush=True)
    except BrokenPipeError:  # the reader (e.g. `head`) went away: not an error
        sys.stderr.close()
    return 0


def _summary(args: argparse.Namespace) -> int:
    from caio_operators.analysis.summary import latest_run_summary

    try:
        text = latest_run_summary(args.warehouse, run_id=args.run_id)
    except LookupError as exc:
        print(f"no run to summarise: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caio_operators.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("progress", help="filter an `airflow dags test` log from stdin")
    summary = sub.add_parser("summary", help="print a stored run's summary and report path")
    summary.add_argument("--warehouse", required=True, help="e.g. duckdb:///abs/path.duckdb")
    summary.add_argument("--run-id", default=None, help="default: the latest run")
    args = parser.parse_args(argv)
    return {"progress": _progress, "summary": _summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
