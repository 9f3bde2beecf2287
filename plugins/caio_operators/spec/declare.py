"""How a run param is declared: its type (an enum is a ``Literal``), default, form section,
title, help text and JSON-schema rules, in one ``param(...)`` field of ``RunSpec``.

``spec.schema`` derives the JSON schema (the Airflow Params and the Trigger form) from these
declarations, ``spec.checks`` the checks, and docs/params.md's table is generated from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, get_args

Signature = Literal["serving_preprocess", "serving_default"]
TargetName = Literal["local", "endpoint", "vertex", "caip"]
ProtocolName = Literal["caip", "vertex", "tfserving"]
LoadShape = Literal["constant", "staircase", "open_rate", "peak_search"]
RateProfile = Literal["constant", "staircase", "spike"]
Arrivals = Literal["constant", "poisson"]
LoadRunner = Literal["local", "gke"]
Percentile = Literal["p50", "p95", "p99"]

SIGNATURES: tuple[str, ...] = get_args(Signature)
TARGETS: tuple[str, ...] = get_args(TargetName)
PROTOCOLS: tuple[str, ...] = get_args(ProtocolName)
LOAD_SHAPES: tuple[str, ...] = get_args(LoadShape)
RATE_PROFILES: tuple[str, ...] = get_args(RateProfile)
ARRIVALS: tuple[str, ...] = get_args(Arrivals)
LOAD_RUNNERS: tuple[str, ...] = get_args(LoadRunner)
REGRESSION_PERCENTILES: tuple[str, ...] = get_args(Percentile)
CLOUD_TARGETS = ("vertex", "caip")
OPEN_LOOP_SHAPES = ("open_rate", "peak_search")
BUCKET_SCHEMES = ("file", "gs")
WAREHOUSE_SCHEMES = ("duckdb", "bigquery")

# The Trigger form's sections, in the order a user fills them in.
MODEL = "Model"
SERVING = "Deployment"
LOAD = "Load"
STORAGE = "Storage"
CLOUD = "Google Cloud"
COMPARISON = "Comparison and cost"

# AI Platform / Vertex identifiers: a letter, then letters, digits and underscores.
IDENT = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
IDENT_OR_EMPTY = r"^([A-Za-z][A-Za-z0-9_]{0,62})?$"
RUN_ID_OR_EMPTY = r"^([a-z0-9][a-z0-9-]{0,62})?$"  # make_run_id's form

LOCAL_MAX_REPLICAS = 16  # replica processes of the local server

#: A default that depends on the machine: ``(local_root, images_dir) -> value``.
DefaultFrom = Callable[[Path, Path], str]


def param(section: str, default: Any, title: str, description: str, *,
          form: tuple[str, str] | None = None, default_from: DefaultFrom | None = None,
          **rules: Any) -> Any:
    """A ``RunSpec`` field that is a run param.

    ``description`` is the form's help text; ``rules`` are JSON-schema
    keywords (``minimum``, ``pattern``, ``examples``...); ``form``: ``(regex, what)`` a
    non-empty value must match, checked with a message naming ``what`` (a cloud resource
    name); ``default_from`` computes the default of a path on this machine.
    """
    meta = {"section": section, "title": title, "description": description,
            "rules": rules, "form": form, "default_from": default_from}
    return field(default=default, metadata={"param": meta})


def local_bucket(root: Path, images: Path) -> str:
    """`file://$CAIO_HOME/bucket`"""
    return "file://" + str(root / "bucket")


def local_warehouse(root: Path, images: Path) -> str:
    """`duckdb://$CAIO_HOME/warehouse.duckdb`"""
    return "duckdb://" + str(root / "warehouse.duckdb")


def sample_images(root: Path, images: Path) -> str:
    """the package's `test_images` (`$CAIO_IMAGES`)"""
    return str(images.resolve())
