"""What every stage function shares: the log it writes to, the failure it raises, and the
few facts of a RunSpec more than one stage module asks (``pipeline`` runs a benchmark,
``judging`` judges and reports it; both import this, neither imports the other's callers).
"""

from __future__ import annotations

from typing import Any, Protocol

from caio_operators.spec import CLOUD_TARGETS, RunSpec


class TaskLog(Protocol):
    """What the stages log through: a ``logging.Logger`` or an operator's ``self.log``."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...
    def warning(self, msg: Any, /, *args: Any) -> Any: ...
    def error(self, msg: Any, /, *args: Any) -> Any: ...


class RunFailed(RuntimeError):
    """The benchmark ran but failed (its rows and report are stored); the message says why."""


def is_cloud(spec: RunSpec) -> bool:
    """Served by a Google Cloud product (Vertex AI, AI Platform Prediction)."""
    return spec.target in CLOUD_TARGETS


def warehouse_options(spec: RunSpec) -> dict[str, Any]:
    """``open_warehouse`` options: BigQuery uses the run's connection (DuckDB ignores them)."""
    return {"gcp_conn_id": spec.gcp_conn_id, "impersonation_chain": spec.impersonation}
