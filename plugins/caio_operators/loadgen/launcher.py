"""The load-runner port: what every launcher offers, and the registry that picks one by the
RunSpec's ``load_runner`` (as ``targets/base.py`` picks a deploy target).

A launcher runs one distributed Locust test (master + workers) from a written test config
and stops everything it started: ``run()`` to the end of the shape (its own default
timeout), ``stop()`` from another thread (Airflow's ``on_kill``), ``close()`` when the task
is done with it (it removes what only it used, e.g. a temporary work folder). Each launcher
class also owns its run policy: ``for_run(spec, deployment=..., try_number=..., log=...)``
builds it for a run (where its files go, how long it may take, what it samples),
``begin_try(spec)`` readies the run's load folder for a new try (a local try starts clean;
a GKE try re-attaches to the pods of the try before), and ``in_cloud`` says whether Locust
runs in Google Cloud (then its master writes its stats to Cloud Logging).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast


class Launcher(Protocol):
    #: Locust runs in Google Cloud: its master writes stats to Cloud Logging
    in_cloud: ClassVar[bool]
    #: this machine's CPU figures during the load (local runs), else None
    host_figures: dict[str, Any] | None

    @classmethod
    def for_run(cls, spec: Any, *, deployment: Mapping[str, Any] | None = None,
                try_number: int = 1, log: Any = None) -> Launcher:
        """The launcher of a run; its test config must already be written."""
        ...

    @classmethod
    def begin_try(cls, spec: Any, log: Any = None) -> None:
        """Ready the run's load folder for a new try (before its config is written)."""
        ...

    def run(self, timeout_s: float | None = None) -> dict[str, Any]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


_LAUNCHERS: dict[str, str] = {
    "local": "caio_operators.loadgen.local:LocalLauncher",
    "gke": "caio_operators.loadgen.gke:GkeLauncher",
}


def known_launchers() -> tuple[str, ...]:
    return tuple(sorted(_LAUNCHERS))


def launcher_type(load_runner: str) -> type[Launcher]:
    """The launcher class of ``load_runner``; its module is imported here."""
    factory = _LAUNCHERS.get(load_runner)
    if factory is None:
        raise ValueError(f"unknown load_runner {load_runner!r}; known load runners: "
                         f"{', '.join(known_launchers())}")
    module_name, _, attribute = factory.partition(":")
    return cast("type[Launcher]", getattr(importlib.import_module(module_name), attribute))


def launcher_for_run(spec: Any, deployment: Mapping[str, Any] | None = None, *,
                     try_number: int = 1, log: logging.Logger | Any = None) -> Launcher:
    """The launcher of ``spec.load_runner`` for this run and try."""
    return launcher_type(spec.load_runner).for_run(spec, deployment=deployment,
                                                   try_number=try_number, log=log)


if TYPE_CHECKING:  # mypy checks that each registered launcher keeps the port
    from caio_operators.loadgen.gke import GkeLauncher
    from caio_operators.loadgen.local import LocalLauncher

    _PORT: tuple[type[Launcher], ...] = (LocalLauncher, GkeLauncher)
