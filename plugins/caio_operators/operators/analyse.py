"""AnalyseRunOperator: summary, verdict and HTML report, read back from the warehouse."""

from __future__ import annotations

from typing import Any

from caio_operators.operators.base import SpecOperator


class AnalyseRunOperator(SpecOperator):
    """Write the report and print the summary; fail the DAG run if the run itself failed."""

    ui_color = "#efe1f4"

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        return pipeline.analyse(self.run_spec, log=self.log)
