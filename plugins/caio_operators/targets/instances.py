"""Row-format instances to input arrays and output arrays to predictions (numpy, no TF).

A signature is described by plain `TensorInfo`s so that this module, and the request
handling built on it, can be tested without TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STRING = "string"


class InstanceError(ValueError):
    """Instances that do not fit the signature; the message names the input and the fix."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name ("float32", "int64", ...) or "string"
    shape: tuple[int | None, ...] | None  # None: unknown rank


@dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


def shape_text(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "[any shape]"
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def _instance_values(signature: SignatureInfo, instances: list) -> dict[str, list]:
    """Split row-format instances into one list of per-instance values per input."""
    names = [t.name for t in signature.inputs]
    columns: dict[str, list] = {name: [] for name in names}
    single = len(names) == 1
    for index, instance in enumerate(instances):
        # A lone input may be given bare; {"b64": ...} is a value, not a dict of inputs.
        if single and not (isinstance(instance, dict) and set(instance) == {names[0]}):
            columns[names[0]].append(instance)
            continue
        if not isinstance(instance, dict):
            raise InstanceError(
                f"instance {index} must be an object with the inputs "
                f"{', '.join(names)} of signature {signature.name!r}")
        missing = [name for name in names if name not in instance]
        extra = sorted(set(instance) - set(names))
        if missing or extra:
            raise InstanceError(
                f"instance {index} of signature {signature.name!r}: "
                + (f"missing inputs {', '.join(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown inputs {', '.join(extra)}" if extra else "")
                + f" (expected: {', '.join(names)})")
        for name in names:
            columns[name].append(instance[name])
    return columns


def _string_value(info: TensorInfo, index: int, value: object) -> bytes:
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InstanceError(
                f"input {info.name!r}, instance {index}: 'b64' is not valid base64 ({exc})"
            ) from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InstanceError(
        f"input {info.name!r} is a string tensor: instance {index} must be "
        f"{{\"b64\": \"<base64>\"}} or a string, got {type(value).__name__}")


def _check_shape(info: TensorInfo, array: np.ndarray) -> None:
    if info.shape is None:
        return
    fits = array.ndim == len(info.shape) and all(
        want is None or want == got for want, got in zip(info.shape, array.shape, strict=True))
    if not fits:
        raise InstanceError(
            f"input {info.name!r} expects shape {shape_text(info.shape)} (first dimension: "
            f"instances), the instances make {shape_text(array.shape)}")


def _to_array(info: TensorInfo, values: list) -> np.ndarray:
    if info.dtype == STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = [_string_value(info, i, v) for i, v in enumerate(values)]
        if info.shape is not None and len(info.shape) != 1:
            raise InstanceError(
                f"input {info.name!r} has shape {shape_text(info.shape)}; only string "
                "inputs with one value per instance are supported")
        return array
    try:
        raw = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise InstanceError(
            f"input {info.name!r} expects numbers of shape {shape_text(info.shape)} "
            f"per batch; the instances are ragged or mixed ({exc})") from None
    # Reject strings, nulls and objects instead of letting numpy coerce "1.5" or None.
    if raw.dtype.kind not in "biuf":
        raise InstanceError(
            f"input {info.name!r} expects {info.dtype} numbers of shape "
            f"{shape_text(info.shape)}; the instances hold non-numbers or ragged lists")
    _check_shape(info, raw)
    try:
        return raw.astype(np.dtype(info.dtype), copy=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InstanceError(f"input {info.name!r}: cannot convert to {info.dtype}: {exc}") from None


def decode_instances(signature: SignatureInfo, instances: list) -> dict[str, np.ndarray]:
    """Input arrays (first dimension: instances) for ``signature`` from row instances."""
    if not instances:
        raise InstanceError("no instances to predict")
    columns = _instance_values(signature, instances)
    return {info.name: _to_array(info, columns[info.name]) for info in signature.inputs}


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _output_rows(array: np.ndarray) -> list:
    rows = array.tolist()
    if array.dtype == object or array.dtype.kind == "S":
        rows = _jsonable(rows)
    return rows if isinstance(rows, list) else [rows]


def encode_predictions(signature: SignatureInfo, outputs: dict[str, np.ndarray]) -> list:
    """Row-format predictions: the bare value per instance for one output, else a dict."""
    names = [t.name for t in signature.outputs] or sorted(outputs)
    columns = {name: _output_rows(np.asarray(outputs[name])) for name in names}
    if len(names) == 1:
        return columns[names[0]]
    count = len(columns[names[0]])
    return [{name: columns[name][i] for name in names} for i in range(count)]
