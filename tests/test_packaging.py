"""The package installs as it says: pyproject.toml declares what a run needs, docs/cloud.md's
Composer step lists exactly that, and the pinned requirements.txt (what `make test` tests)
lies inside the declared ranges. (What the wheel carries: tests/cloud/test_wiring_package.py.)"""

from __future__ import annotations

import re
import tomllib

from caio_testing import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CLOUD_DOC = (REPO / "docs" / "cloud.md").read_text()
# The extras a Composer environment installs: export runs on its workers, gke launches
# the Locust pods (the local server and Locust processes are for one machine).
COMPOSER_EXTRAS = ("export", "gke")


def own(requirement: str) -> bool:
    return canonicalize_name(Requirement(requirement).name) == canonicalize_name(
        PROJECT["name"])


def composer_packages_markdown() -> str:
    """docs/cloud.md's list of what `pip install caio-operators[export,gke]` brings."""
    extras = PROJECT["optional-dependencies"]
    lines = [
        "```text",
        f"{PROJECT['name']}[{','.join(COMPOSER_EXTRAS)}]=={PROJECT['version']}",
        "```",
        "",
        "It declares (pyproject.toml; Composer's own Airflow and providers satisfy their "
        "ranges):",
        "",
        "| needed for | packages |",
        "|---|---|",
        "| every run | " + ", ".join(f"`{r}`" for r in PROJECT["dependencies"]) + " |",
    ]
    for extra, requirements in extras.items():
        lines.append(f"| extra `{extra}` | " + ", ".join(
            f"`{r}`" for r in requirements) + " |")
    return "\n".join(lines)


def test_cloud_doc_composer_packages_match_pyproject():
    section = re.search(r"<!-- composer-packages:start -->\n(.*)\n<!-- composer-packages:end -->",
                        CLOUD_DOC, re.S)
    assert section, "docs/cloud.md lost its composer-packages markers"
    assert section.group(1).strip() == composer_packages_markdown().strip(), (
        "docs/cloud.md's Composer package list is stale; paste tests.test_packaging."
        "composer_packages_markdown():\n" + composer_packages_markdown())


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_pinned_set_lies_inside_the_declared_ranges():
    pins = pinned()
    declared = PROJECT["dependencies"] + [
        r for extra in PROJECT["optional-dependencies"].values() for r in extra if not own(r)]
    outside = []
    for text in declared:
        requirement = Requirement(text)
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            outside.append(f"{text} (requirements.txt: {version or 'missing'})")
    assert not outside, "requirements.txt pins outside pyproject's ranges: " + "; ".join(
        outside)
