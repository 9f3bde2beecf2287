"""AnalyseRunOperator: summary, verdict and HTML report, read back from the warehouse."""

from __future__ import annotations

from typing import Any

from caio_operators.operators.base import SpecOperator


class AnalyseRunOperator(SpecOperator):
    """Write the report and print the summary; fail the DAG run if the run itself failed.
    Then compare the run with its baseline and store the verdict and cost (``verdicts``,
    ``comparisons``): a regression fails the DAG run with ``fail_on_regression``, else
    warns."""

    ui_color = "#efe1f4"

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import assets, pipeline

        out = pipeline.analyse(self.run_spec, log=self.log)
        assets.mark_events(context, self.outlets, assets.event_extra(self.run_spec))
        return out
