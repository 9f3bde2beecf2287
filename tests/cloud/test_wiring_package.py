"""The wheel Cloud Composer installs carries what runs outside Python imports: the
locustfile and its helpers, the Locust pods' Kustomize base, the dashboard template, the
price table and the sample images of the default payload; and an installed package (no
repository around it) finds and uses those packaged copies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from caio_testing import INSTALLED

REPO = Path(__file__).resolve().parents[2]

PACKAGED = {
    "caio_operators/resources/locust/locustfile.py",
    "caio_operators/resources/locust/caio_load.py",
    "caio_operators/resources/locust/shapes.py",
    "caio_operators/resources/locust/Dockerfile",
    "caio_operators/resources/locust/requirements.txt",
    "caio_operators/resources/locust/manifests/kustomization.yaml",
    "caio_operators/resources/locust/manifests/master-deployment.yaml",
    "caio_operators/resources/locust/manifests/master-service.yaml",
    "caio_operators/resources/locust/manifests/worker-deployment.yaml",
    "caio_operators/resources/dashboards/monitoring-template.json",
    "caio_operators/resources/pricing/prices.json",
    "caio_operators/resources/report/uPlot.iife.min.js",
    "caio_operators/resources/report/uPlot.min.css",
    "caio_operators/resources/report/uPlot.LICENSE",
    "caio_operators/resources/report/charts.js",
    *(f"caio_operators/resources/test_images/{p.name}"
      for p in (REPO / "test_images").iterdir() if p.suffix in (".jpg", ".png")),
}

PROBE = """
import json, sys
from caio_operators import resources
from caio_operators.loadgen import gke, local
from caio_operators.metrics import dashboard
from caio_operators.analysis import charts
base = gke.load_base()
print(json.dumps({
    "manifests": str(gke.default_manifests_dir()),
    "locustfile": str(local.default_locustfile()),
    "template": str(dashboard.DEFAULT_TEMPLATE),
    "packaged": str(resources.PACKAGED),
    "images": str(resources.find("test_images")),
    "report": str(resources.find("report")),
    "uplot_embedded": charts.assets([])[1].count("var uPlot="),
    "master_port": base.master_port,
    "tiles": len(dashboard.render_dashboard(dashboard.dashboard_values({
        "project": "proj-1", "target": "caip", "model_name": "m", "model_version": "v1",
        "run_id": "r"}))["mosaicLayout"]["tiles"]),
}))
"""


def test_the_wheel_ships_the_resources_and_the_installed_package_uses_them(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and egg-info in the repository.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "locust", "dashboards", "pricing",
                 "test_images"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name)
    shutil.copytree(REPO / "plugins" / "caio_operators", src / "plugins" / "caio_operators",
                    symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    assert (src / "plugins/caio_operators/resources/locust").is_symlink()
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel, = dist.glob("caio_operators-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert names >= PACKAGED, sorted(PACKAGED - names)
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        for name in PACKAGED:  # real files, equal to the repository's
            relative = name.removeprefix("caio_operators/resources/")
            source = REPO / relative  # a symlinked folder's source, or the package's own
            if not source.exists():
                source = REPO / "plugins" / name
            assert archive.read(name) == source.read_bytes(), name
        installed = tmp_path / "site"
        archive.extractall(installed)

    # The installed package alone (no repository next to it, no symlinks)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(installed),
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    packaged = installed / "caio_operators" / "resources"
    assert found["packaged"] == str(packaged)
    assert found["manifests"] == str(packaged / "locust" / "manifests")
    assert found["locustfile"] == str(packaged / "locust" / "locustfile.py")
    assert found["template"] == str(packaged / "dashboards" / "monitoring-template.json")
    assert found["images"] == str(packaged / "test_images")
    assert found["report"] == str(packaged / "report") and found["uplot_embedded"] == 1
    assert found["master_port"] == 5557 and found["tiles"] > 0


@pytest.mark.skipif(INSTALLED, reason="make test-compat tests the installed wheel, not a checkout")
def test_a_checkout_uses_the_repository_copies():
    from caio_operators import resources
    from caio_operators.loadgen.gke import default_manifests_dir
    from caio_operators.loadgen.local import default_locustfile
    from caio_operators.metrics.dashboard import DEFAULT_TEMPLATE

    assert default_manifests_dir() == REPO / "locust" / "manifests"
    assert default_locustfile() == REPO / "locust" / "locustfile.py"
    assert DEFAULT_TEMPLATE == REPO / "dashboards" / "monitoring-template.json"
    # the packaged paths are the same files here (symlinks to the sources of truth)
    assert (resources.PACKAGED / "locust" / "locustfile.py").resolve() == default_locustfile()
