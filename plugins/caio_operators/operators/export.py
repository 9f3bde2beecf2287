"""ExportServingModelOperator: base classifier -> SavedModel with two serving signatures."""

from __future__ import annotations

from typing import Any

from caio_operators.operators.base import SpecOperator


class ExportServingModelOperator(SpecOperator):
    """Export ``spec.model_source`` wrapped with pre/post-processing to ``spec.model_uri``.

    Signatures: ``serving_default`` (float32 [None,224,224,3] -> logits) and
    ``serving_preprocess`` (encoded image bytes -> top-5 labels and probabilities). The
    export is reloaded and both signatures are called on the sample images as a check.
    """

    ui_color = "#ffefdb"

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        return pipeline.export(self.run_spec, log=self.log)
