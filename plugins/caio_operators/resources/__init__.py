"""Files the package needs at run time besides its modules, shipped in the wheel for Cloud
Composer: the locustfile and its helpers (``locust/``), the Kustomize base of the Locust
pods (``locust/manifests/``), the Monitoring dashboard template (``dashboards/``), the
default price table (``pricing/``) and the sample images of the default payload
(``test_images/``), so that the DAG file plus the installed package is all a run needs.

In a checkout, ``resources/<name>`` are symlinks to the repository's top-level folders,
which stay the sources of truth (the Locust image is built from ``locust/``); building the
wheel copies their files in (package data in pyproject.toml), so an installed package
finds them without the repository.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent
_REPO = PACKAGED.parents[2]  # resources -> caio_operators -> plugins -> the repository


def find(*parts: str) -> Path:
    """``parts`` under the repository when running from a checkout, else the packaged copy.

    The result may not exist; callers say what is missing and how to point at it.
    """
    repo = _REPO.joinpath(*parts)
    if (_REPO / "pyproject.toml").is_file() and repo.exists():
        return repo
    return PACKAGED.joinpath(*parts)
