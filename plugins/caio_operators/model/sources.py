"""Where the model to benchmark comes from: a parsed, validated ``model_source`` string.

Pure Python (no TensorFlow): validation imports this while a DAG task starts.

Accepted forms::

    builtin:resnet_v2_101        Keras ResNet101V2 architecture (the default)
    builtin:mobilenet_v3_small   Keras MobileNetV3Small architecture (quick runs)
    builtin:tiny                 a tiny conv net for tests (exports in seconds)
    hub:<handle>                 a TF Hub handle: tfhub.dev / Kaggle URL, gs:// or local path
    savedmodel:<uri>             an existing SavedModel: local path, file:// or gs://
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

#: Built-in architectures, name -> what it is. Built offline (``weights=None``).
BUILTINS: dict[str, str] = {
    "resnet_v2_101": "Keras ResNet101V2 architecture, 1000 classes",
    "mobilenet_v3_small": "Keras MobileNetV3Small architecture, 1000 classes (quick runs)",
    "tiny": "a tiny conv net, 10 classes (tests; exports in seconds)",
}
KINDS = ("builtin", "hub", "savedmodel")
DEFAULT_SOURCE = "builtin:resnet_v2_101"
SAVEDMODEL_SCHEMES = ("", "file", "gs")

ACCEPTED_FORMS = (
    "builtin:" + " | builtin:".join(BUILTINS)
    + " | hub:<TF Hub handle, URL or path>"
    + " | savedmodel:<local path, file:// or gs:// URI>"
)


class ModelSourceError(ValueError):
    """``model_source`` is not one of the accepted forms; the message lists them."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # one of KINDS
    value: str  # builtin name, hub handle or SavedModel URI

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def _fail(source: object, why: str) -> ModelSourceError:
    return ModelSourceError(
        f"model_source {source!r} is not valid: {why}. Accepted forms: {ACCEPTED_FORMS}"
    )


def parse_source(source: str) -> ModelSource:
    """Parse ``kind:value``; a bare built-in name (``tiny``) is accepted as ``builtin:tiny``."""
    if not isinstance(source, str) or not source.strip():
        raise _fail(source, "it is empty")
    text = source.strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise _fail(source, "it contains whitespace or control characters")
    if text.lower() in BUILTINS:
        return ModelSource("builtin", text.lower())
    kind, sep, value = text.partition(":")
    kind = kind.lower()
    if not sep or kind not in KINDS:
        raise _fail(source, f"it does not start with one of {', '.join(k + ':' for k in KINDS)}")
    if not value:
        raise _fail(source, f"nothing follows '{kind}:'")
    if kind == "builtin":
        name = value.lower()
        if name not in BUILTINS:
            raise _fail(source, f"unknown builtin {value!r} (builtins: {', '.join(BUILTINS)})")
        return ModelSource("builtin", name)
    if kind == "savedmodel":
        parsed = urlparse(value)
        scheme = parsed.scheme.lower()
        if scheme not in SAVEDMODEL_SCHEMES:
            raise _fail(source, f"a SavedModel URI must be a local path, file:// or gs://, "
                                f"not {scheme}://")
        if scheme == "gs" and not parsed.netloc:
            raise _fail(source, "a gs:// URI needs a bucket name")
        if scheme == "file" and not parsed.path.strip("/"):
            raise _fail(source, "the file:// URI has no path")
    return ModelSource(kind, value)
