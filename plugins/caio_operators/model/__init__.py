"""Model export: a model source becomes a SavedModel with ``serving_default`` and
``serving_preprocess`` signatures.

Importing this package stays light (no TensorFlow): ``sources`` is pure Python and
``export`` imports TensorFlow inside its functions. ``serving`` imports TensorFlow at import.
"""

from caio_operators.model.export import ExportError, export_serving_model
from caio_operators.model.sources import (
    BUILTINS,
    DEFAULT_SOURCE,
    ModelSource,
    ModelSourceError,
    parse_source,
)

__all__ = [
    "BUILTINS",
    "DEFAULT_SOURCE",
    "ExportError",
    "ModelSource",
    "ModelSourceError",
    "export_serving_model",
    "parse_source",
]
