"""The test config's one check, shared with the Locust side.

The locustfile runs in its own processes (under gevent, without this package), so the
config document is the interface between the two sides, versioned by ``config_version``.
``locust/caio_load.parse_config`` checks it where it is read, and ``make_config`` calls the
same function here before the document is written: each rule exists once, and a bad config
fails in the Airflow task that built it, not minutes later in a pod.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from caio_operators import resources


@functools.cache
def caio_load() -> ModuleType:
    """``locust/caio_load.py`` loaded by path (it imports no locust or gevent), under a
    private name; its sibling ``shapes`` is visible to it only while it loads."""
    shapes = _load("shapes", "_caio_locust_shapes")
    before = sys.modules.get("shapes")
    sys.modules["shapes"] = shapes
    try:
        return _load("caio_load", "_caio_locust_caio_load")
    finally:
        if before is None:
            sys.modules.pop("shapes", None)
        else:
            sys.modules["shapes"] = before


def _load(name: str, as_name: str) -> ModuleType:
    path = resources.find("locust", f"{name}.py")
    spec = importlib.util.spec_from_file_location(as_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the package needs the Locust side's "
                                f"locust/{name}.py (reinstall caio-bench)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[as_name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def check_config(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document as the locustfile reads it (defaults filled), or ``ConfigError`` (a
    ``ValueError``) naming the first bad field."""
    return dict(caio_load().parse_config(document))


def config_version() -> int:
    """The config document version this release's locustfile reads."""
    return int(caio_load().CONFIG_VERSION)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a predict URL (Locust's ``--host``), or ``ConfigError``."""
    return str(caio_load().origin(url))
