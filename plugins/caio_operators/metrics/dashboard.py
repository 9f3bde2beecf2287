"""The benchmark's Cloud Monitoring dashboard: render the template, check it, create or update.

``dashboards/monitoring-template.json`` holds a Dashboards API (``monitoring`` v1) body
with ``${name}`` placeholders (the deployment's metric types and resource filter, the
project, the display name); ``${metric.label.x}``-style placeholders with dots belong to
the Dashboards API itself (legend templates) and are left alone. ``render_dashboard``
fills the placeholders and checks the result against the API's discovery schema, so a
typo fails here and not in Cloud Monitoring. ``ensure_dashboard`` creates the dashboard, or
updates the one with the same display name, through a discovery client
(``googleapiclient`` ``monitoring`` v1; see ``MonitoringHook.get_dashboards_service``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caio_operators import resources
from caio_operators.hooks.errors import explained
from caio_operators.metrics import api_schema
from caio_operators.metrics.families import FAMILIES, MonitoredTarget, as_monitored, field
from caio_operators.metrics.log_metrics import LOG_METRICS

log = logging.getLogger(__name__)

# the repository's dashboards/ in a checkout, else the copy packaged in the wheel
DEFAULT_TEMPLATE = resources.find("dashboards", "monitoring-template.json")
DISPLAY_NAME_PREFIX = "caio-bench"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METRIC_TYPE = re.compile(r'metric\.type\s*=\s*"([^"]+)"')
_SERVER_FIELDS = ("name", "etag")


def known_metric_types() -> set[str]:
    """Every metric type a dashboard of ours may chart."""
    types = {d.metric_type for d in LOG_METRICS}
    for family in FAMILIES.values():
        types.update(family.metric_types())
    return types


def dashboard_values(scope: MonitoredTarget | Any, display_name: str = "") -> dict[str, str]:
    """Placeholder values for one deployment: its ``MonitoredTarget`` (or a RunSpec-like
    merged with deploy output, whose ``dashboard_name`` then names the dashboard)."""
    target = as_monitored(scope)
    metrics = target.metrics
    if not isinstance(scope, MonitoredTarget):
        display_name = display_name or field(scope, "dashboard_name")
    display_name = display_name or f"{DISPLAY_NAME_PREFIX} {target.family} {target.label}"
    return {
        "display_name": display_name,
        "project": target.project,
        "family": target.family,
        "deployment": target.label,
        "resource_filter": target.resource_filter(),
        "replicas_metric": metrics.replicas,
        "cpu_metric": metrics.cpu,
        "memory_metric": metrics.memory,
        "accelerator_metric": metrics.accelerator_duty_cycle,
        "prediction_count_metric": metrics.prediction_count,
        "response_count_metric": metrics.response_count,
        "latency_metric": metrics.latencies,
        "latency_unit": metrics.latency_unit,
    }


def _substitute(node: Any, values: Mapping[str, str], missing: set[str]) -> Any:
    if isinstance(node, str):
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                missing.add(name)
                return match.group(0)
            return str(values[name])
        return _PLACEHOLDER.sub(replace, node)
    if isinstance(node, list):
        return [_substitute(item, values, missing) for item in node]
    if isinstance(node, dict):
        return {key: _substitute(item, values, missing) for key, item in node.items()}
    return node


def render_dashboard(values: Mapping[str, str],
                     template: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dashboard body for ``values`` (see ``dashboard_values``), checked.

    ``template`` is a path, an already-parsed template, or None for the repo's
    ``dashboards/monitoring-template.json``. Placeholders are filled inside the parsed
    JSON strings, so values never need JSON escaping.
    """
    if template is None or isinstance(template, str | Path):
        path = Path(template or DEFAULT_TEMPLATE)
        if not path.is_file():
            raise FileNotFoundError(f"dashboard template {path} not found: pass template= "
                                    f"(a path or the parsed JSON)")
        template = json.loads(path.read_text(encoding="utf-8"))
    missing: set[str] = set()
    dashboard = _substitute(template, values, missing)
    if missing:
        raise ValueError(f"dashboard template placeholders without a value: "
                         f"{', '.join(sorted(missing))}")
    validate_dashboard(dashboard)
    return dashboard


def validate_dashboard(dashboard: Mapping[str, Any],
                       metric_types: set[str] | None = None) -> None:
    """Raise ``api_schema.SchemaError`` unless ``dashboard`` is a valid Dashboards API body
    whose tiles fit the mosaic grid and chart only ``metric_types`` (default: ours)."""
    doc = api_schema.discovery_document("monitoring", "v1")
    api_schema.check(doc, "Dashboard", dashboard)
    problems = _layout_problems(dashboard) + _query_problems(
        dashboard, known_metric_types() if metric_types is None else metric_types)
    if not dashboard.get("displayName"):
        problems.append("$.displayName: required")
    if problems:
        raise api_schema.SchemaError("Dashboard", problems)


def _layout_problems(dashboard: Mapping[str, Any]) -> list[str]:
    mosaic = dashboard.get("mosaicLayout")
    if mosaic is None:
        return []
    columns = mosaic.get("columns", 0)
    problems = [] if 1 <= columns <= 48 else [f"mosaicLayout.columns={columns}: use 1..48"]
    taken: dict[tuple[int, int], int] = {}
    for i, tile in enumerate(mosaic.get("tiles", [])):
        x, y = tile.get("xPos", 0), tile.get("yPos", 0)
        width, height = tile.get("width", 0), tile.get("height", 0)
        if width < 1 or height < 1 or x < 0 or y < 0 or x + width > columns:
            problems.append(f"tiles[{i}]: {width}x{height} at ({x},{y}) does not fit "
                            f"{columns} columns")
            continue
        for cell in ((cx, cy) for cx in range(x, x + width) for cy in range(y, y + height)):
            if cell in taken:
                problems.append(f"tiles[{i}] overlaps tiles[{taken[cell]}] at {cell}")
                break
            taken[cell] = i
    return problems


def _filters(node: Any, path: str = "$"):
    if isinstance(node, dict):
        if isinstance(node.get("filter"), str):
            yield path, node
        for key, item in node.items():
            yield from _filters(item, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _filters(item, f"{path}[{i}]")


def _query_problems(dashboard: Mapping[str, Any], metric_types: set[str]) -> list[str]:
    problems = []
    for path, query in _filters(dashboard):
        types = _METRIC_TYPE.findall(query["filter"])
        if len(types) != 1:
            problems.append(f"{path}.filter must name exactly one metric.type: "
                            f"{query['filter']!r}")
        elif types[0] not in metric_types:
            problems.append(f"{path}.filter: unknown metric type {types[0]!r}")
        aggregation = query.get("aggregation") or {}
        aligner = aggregation.get("perSeriesAligner", "ALIGN_NONE")
        if aligner != "ALIGN_NONE" and "alignmentPeriod" not in aggregation:
            problems.append(f"{path}.aggregation: {aligner} needs an alignmentPeriod")
        if aggregation.get("crossSeriesReducer", "REDUCE_NONE") != "REDUCE_NONE" and \
                aligner == "ALIGN_NONE":
            problems.append(f"{path}.aggregation: a crossSeriesReducer needs a perSeriesAligner")
    return problems


def dashboard_message(dashboard: Mapping[str, Any]) -> Any:
    """``dashboard`` as a ``google.cloud.monitoring_dashboard_v1.types.Dashboard`` message.

    Needs the optional ``google-cloud-monitoring-dashboards`` package; the REST path used
    by ``ensure_dashboard`` does not.
    """
    try:
        from google.cloud.monitoring_dashboard_v1.types import Dashboard
    except ImportError as exc:
        raise ImportError("google-cloud-monitoring-dashboards is not installed; "
                          "validate_dashboard() checks the body without it") from exc
    return Dashboard.from_json(json.dumps(dashboard))


def _content(dashboard: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dashboard.items() if k not in _SERVER_FIELDS}


def _find_by_display_name(dashboards: Any, parent: str, display_name: str) -> dict | None:
    matches = []
    request = dashboards.list(parent=parent, pageSize=1000)
    while request is not None:
        response = request.execute()
        matches += [d for d in response.get("dashboards", [])
                    if d.get("displayName") == display_name]
        request = dashboards.list_next(request, response)
    if len(matches) > 1:
        log.warning("%d dashboards are named %r; updating %s", len(matches), display_name,
                    sorted(d["name"] for d in matches)[0])
    return min(matches, key=lambda d: d["name"]) if matches else None


def ensure_dashboard(client: Any, project: str, dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Create ``dashboard`` in ``project``, or update the dashboard with its display name.

    ``client`` is a Dashboards API discovery client (``build("monitoring", "v1")``).
    Returns ``{"action": "created" | "updated" | "unchanged", "name", "display_name"}``.
    The update carries the existing etag, so a concurrent edit fails instead of being
    overwritten silently.
    """
    validate_dashboard(dashboard)
    display_name = dashboard["displayName"]
    parent = f"projects/{project}"
    dashboards = client.projects().dashboards()
    with explained("dashboards"):
        existing = _find_by_display_name(dashboards, parent, display_name)
        if existing is None:
            created = dashboards.create(parent=parent, body=_content(dashboard)).execute()
            action, name = "created", created["name"]
        elif _content(existing) == _content(dashboard):
            action, name = "unchanged", existing["name"]
        else:
            body = {**_content(dashboard), "name": existing["name"]}
            if existing.get("etag"):
                body["etag"] = existing["etag"]
            updated = dashboards.patch(name=existing["name"], body=body).execute()
            action, name = "updated", updated["name"]
    log.info("dashboard %r: %s (%s)", display_name, action, name)
    return {"action": action, "name": name, "display_name": display_name}
