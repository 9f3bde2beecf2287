"""The package installs as it says: pyproject.toml declares what a run needs, the README's
Composer step lists exactly that, the pinned requirements.txt (what `make test` tests) lies
inside the declared ranges, and the wheel carries every file a run reads besides modules."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from caio_testing import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
README = (REPO / "README.md").read_text()
# The extras a Composer environment installs: export runs on its workers, gke launches
# the Locust pods (the local server and Locust processes are for one machine).
COMPOSER_EXTRAS = ("export", "gke")


def own(requirement: str) -> bool:
    return canonicalize_name(Requirement(requirement).name) == canonicalize_name(
        PROJECT["name"])


def composer_packages_markdown() -> str:
    """The README's list of what `pip install caio-operators[export,gke]` brings."""
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


def test_readme_composer_packages_match_pyproject():
    section = re.search(r"<!-- composer-packages:start -->\n(.*)\n<!-- composer-packages:end -->",
                        README, re.S)
    assert section, "README lost its composer-packages markers"
    assert section.group(1).strip() == composer_packages_markdown().strip(), (
        "README's Composer package list is stale; paste tests.test_packaging."
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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    uv = Path(sys.executable).parent / "uv"
    done = subprocess.run([str(uv), "build", "--wheel", "--out-dir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(out.glob("*.whl"))


def test_the_wheel_carries_every_file_a_run_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    resources = "caio_operators/resources/"
    wanted = [
        *(f"locust/{p.name}" for p in (REPO / "locust").glob("*.py")),
        *(f"locust/manifests/{p.name}" for p in (REPO / "locust" / "manifests").iterdir()),
        "locust/Dockerfile", "locust/requirements.txt",
        "dashboards/monitoring-template.json", "pricing/prices.json",
        *(f"test_images/{p.name}" for p in (REPO / "test_images").iterdir()
          if p.suffix in (".jpg", ".png")),
    ]
    missing = [name for name in wanted if resources + name not in names]
    assert not missing, f"the wheel lacks {missing}; add them to package-data in pyproject"
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    required = {Requirement(line.removeprefix("Requires-Dist: "))
                for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    always = {(r.name, r.specifier) for r in required if r.marker is None}
    assert always == {(r.name, r.specifier) for r in map(Requirement, PROJECT["dependencies"])}
