"""Shared base for the caio operators: a templated ``spec`` (the validate task's XCom)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from caio_operators.spec import RunSpec


class SpecOperator(BaseOperator):
    """An operator that works on one run, described by the RunSpec dict from ``validate``."""

    template_fields: Sequence[str] = ("spec",)
    ui_color = "#e8f1fb"

    def __init__(self, *, spec: dict[str, Any] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    @property
    def run_spec(self) -> RunSpec:
        return RunSpec.from_dict(self.spec)
