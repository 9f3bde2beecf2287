"""parse_source: accepted forms, rejected forms, and no TensorFlow at import time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from caio_testing import INSTALLED

from caio_operators.model.sources import (
    BUILTINS,
    DEFAULT_SOURCE,
    ModelSource,
    ModelSourceError,
    parse_source,
)

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("builtin:resnet_v2_101", "builtin", "resnet_v2_101"),
        ("builtin:mobilenet_v3_small", "builtin", "mobilenet_v3_small"),
        ("builtin:tiny", "builtin", "tiny"),
        ("  BUILTIN:Tiny ", "builtin", "tiny"),
        ("tiny", "builtin", "tiny"),
        ("hub:https://tfhub.dev/google/imagenet/resnet_v2_101/classification/5", "hub",
         "https://tfhub.dev/google/imagenet/resnet_v2_101/classification/5"),
        ("hub:/models/hub/resnet", "hub", "/models/hub/resnet"),
        ("savedmodel:/models/resnet/1", "savedmodel", "/models/resnet/1"),
        ("savedmodel:file:///models/resnet/1", "savedmodel", "file:///models/resnet/1"),
        ("savedmodel:gs://bucket/models/resnet/1", "savedmodel", "gs://bucket/models/resnet/1"),
    ],
)
def test_accepted_forms(text, kind, value):
    parsed = parse_source(text)
    assert parsed == ModelSource(kind, value)
    assert parse_source(str(parsed)) == parsed  # str() is the canonical, re-parsable form


def test_default_and_builtins():
    assert parse_source(DEFAULT_SOURCE) == ModelSource("builtin", "resnet_v2_101")
    assert set(BUILTINS) == {"resnet_v2_101", "mobilenet_v3_small", "tiny"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("resnet50", "does not start with"),
        ("builtin:resnet50", "unknown builtin 'resnet50'"),
        ("keras:resnet_v2_101", "does not start with"),
        ("hub:", "nothing follows 'hub:'"),
        ("savedmodel:", "nothing follows"),
        ("savedmodel:s3://bucket/model", "not s3://"),
        ("savedmodel:gs:///model", "needs a bucket"),
        ("savedmodel:file://", "no path"),
        ("hub:/models/my model", "whitespace"),
    ],
)
def test_rejected_forms_list_the_accepted_ones(text, why):
    with pytest.raises(ModelSourceError) as info:
        parse_source(text)
    message = str(info.value)
    assert why in message
    assert "builtin:tiny" in message and "hub:<" in message and "savedmodel:<" in message
    assert isinstance(info.value, ValueError)


def test_importing_model_package_does_not_import_tensorflow():
    code = (
        "import sys, caio_operators.model, caio_operators.model.sources, "
        "caio_operators.model.export, caio_operators.model.classifiers, "
        "caio_operators.model.tfio\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
    )
    env = dict(os.environ) if INSTALLED else {**os.environ, "PYTHONPATH": str(PLUGINS)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
