"""locust/manifests (the Kustomize base), the objects GkeLauncher derives from it, and the
Locust image's Dockerfile and pinned requirements.

The base is rendered by the real ``kubectl kustomize`` and every object is validated offline
against the Kubernetes schema (kubernetes-validate, strict: unknown fields fail). The Python
renderer GkeLauncher uses on Composer (no kubectl there) must print the same objects.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from caio_operators.loadgen import gke  # noqa: E402
from caio_operators.loadgen.launch import make_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LOCUST_DIR = REPO / "locust"
MANIFESTS = LOCUST_DIR / "manifests"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"


def kubectl_kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the Kustomize base "
                    "(install kubectl >= 1.27 to run this test)")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kubectl_kustomize(MANIFESTS)


def by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def validate(obj: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} is invalid for "
                                 f"Kubernetes {version} at {where}: {exc.message}") from None


# ---------------------------------------------------------------- the base


def test_base_renders_to_valid_kubernetes_objects(rendered):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == [("ConfigMap", "caio-locust-config"),
                     ("Deployment", "caio-locust-master"),
                     ("Deployment", "caio-locust-worker"),
                     ("Service", "caio-locust-master")]
    for obj in rendered:
        validate(obj)


def test_python_renderer_matches_kubectl_kustomize(rendered):
    assert by_key(gke.render_base(MANIFESTS)) == by_key(rendered)


def test_base_labels_image_and_resources(rendered):
    objects = by_key(rendered)
    for obj in rendered:
        assert obj["metadata"]["labels"][NAME_LABEL] == "caio-locust"
    for component in ("master", "worker"):
        deployment = objects[("Deployment", f"caio-locust-{component}")]
        assert deployment["metadata"]["labels"][COMPONENT] == component
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"][COMPONENT] == component
        # the selector picks this component only
        assert deployment["spec"]["selector"]["matchLabels"] == {
            NAME_LABEL: "caio-locust", COMPONENT: component}
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        # the placeholder was replaced by kustomization.yaml's `images:`
        assert container["image"] != "caio-locust"
        assert container["image"].endswith("/caio-locust:2.47.0")
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["envFrom"] == [{"configMapRef": {"name": "caio-locust-config"}}]
    service = objects[("Service", "caio-locust-master")]
    assert service["metadata"]["labels"][COMPONENT] == "master"
    assert service["spec"]["selector"] == {NAME_LABEL: "caio-locust", COMPONENT: "master"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"web": 8089,
                                                                         "master": 5557}
    assert service["spec"]["type"] == "ClusterIP"  # the UI through port-forward only
    worker = objects[("Deployment", "caio-locust-worker")]
    worker_args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert worker_args[worker_args.index("--master-host") + 1] == "caio-locust-master"
    assert worker_args[worker_args.index("--master-port") + 1] == "5557"


def test_base_gives_gke_launcher_what_it_derives_from():
    base = gke.load_base(MANIFESTS)
    assert base.locustfile == "/home/locust/locustfile.py"
    assert base.master_port == 5557
    assert base.work_dir == "/tmp"


@pytest.mark.parametrize("workers", [1, 5])
def test_objects_gke_launcher_derives_are_valid(workers):
    base = gke.load_base(MANIFESTS)
    target = gke.GkeTarget(namespace="load", image="us-docker.pkg.dev/p/caio/locust:1",
                           run_id="m-v1-scheduled-2024-05-01", dag_id="caio_load_test",
                           try_number=3, service_account="caio-locust")
    config = make_config(
        test_id=target.run_id, predict_url="https://example.com/v1/models/m:predict",
        protocol="tfserving", signature="serving_default",
        payload_uri="gs://b/runs/r/load/payload.json", output_uri="gs://b/runs/r/load",
        load_shape="constant", users=10, spawn_rate=5, duration_s=60)
    launch = gke.gke_launch_spec(config=config, config_uri="gs://b/runs/r/load/config.json",
                                 target=target, workers=workers,
                                 publish_uri="gs://b/runs/r/load", base=base)
    objects = gke.build_objects(launch, target, base, active_deadline_s=444.2)
    for obj in objects.all():
        validate(obj)
    owner = SimpleNamespace(metadata=SimpleNamespace(
        name=target.master_job, uid="0b4f1d9e-1111-2222-3333-444455556666"))
    owned = [gke.with_owner(o, owner) for o in (objects.service, objects.worker_job)]
    for obj in owned:
        validate(obj)
    master, worker = objects.master_job, objects.worker_job
    assert master["spec"]["activeDeadlineSeconds"] == 445
    assert worker["spec"]["parallelism"] == worker["spec"]["completions"] == workers
    for job in (master, worker):
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["serviceAccountName"] == "caio-locust"
        container = gke.container_of(job)
        assert "envFrom" not in container  # the interactive ConfigMap is not created
        assert container["image"] == target.image
    assert gke.container_of(master)["ports"] == [
        {"name": "master", "containerPort": 5557, "protocol": "TCP"}]


# ---------------------------------------------------------------- the Python renderer


IMAGE_CASES = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: images
  labels: {app.kubernetes.io/name: t}
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: t}
  template:
    metadata:
      labels: {app.kubernetes.io/name: t}
    spec:
      initContainers:
        - {name: init, image: "busybox:1.36"}
      containers:
        - {name: a, image: caio-locust}
        - {name: b, image: "caio-locust:old"}
        - {name: c, image: "localhost:5000/team/tool:1.0"}
        - {name: d, image: "other@sha256:DIGEST"}
        - {name: e, image: untouched}
"""


def test_python_renderer_matches_kubectl_on_image_rules(tmp_path):
    (tmp_path / "deploy.yaml").write_text(IMAGE_CASES.replace("DIGEST", "0123456789abcdef" * 4))
    digest = "sha256:" + "f" * 64
    (tmp_path / "kustomization.yaml").write_text(json.dumps({
        "resources": ["deploy.yaml"],
        "images": [
            {"name": "caio-locust", "newName": "us-docker.pkg.dev/p/r/caio-locust",
             "newTag": "2.47.0"},
            {"name": "localhost:5000/team/tool", "newTag": "2.0"},
            {"name": "other", "newName": "registry.example.com/other"},
            {"name": "busybox", "digest": digest},
        ],
        "configMapGenerator": [{"name": "cfg", "literals": ["A=1", "B=x=y"],
                                "options": {"disableNameSuffixHash": True}}],
    }))
    assert by_key(gke.render_base(tmp_path)) == by_key(kubectl_kustomize(tmp_path))


def test_python_renderer_refuses_what_it_cannot_render(tmp_path):
    for name in ("kustomization.yaml", "master-deployment.yaml", "master-service.yaml",
                 "worker-deployment.yaml"):
        shutil.copy(MANIFESTS / name, tmp_path / name)
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    kustomization["namePrefix"] = "x-"
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(gke.ManifestError, match="namePrefix"):
        gke.render_base(tmp_path)
    del kustomization["namePrefix"]
    kustomization["configMapGenerator"][0]["options"]["disableNameSuffixHash"] = False
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(gke.ManifestError, match="disableNameSuffixHash"):
        gke.render_base(tmp_path)


def test_manifests_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(gke.MANIFESTS_ENV, str(tmp_path))
    with pytest.raises(gke.ManifestError, match=gke.MANIFESTS_ENV):
        gke.default_manifests_dir()
    monkeypatch.setenv(gke.MANIFESTS_ENV, str(MANIFESTS))
    assert gke.default_manifests_dir() == MANIFESTS


def test_readme_explains_apply_and_port_forward():
    text = (MANIFESTS / "README.md").read_text()
    assert "kubectl apply -k" in text
    assert "kubectl port-forward service/caio-locust-master 8089:8089" in text


def test_readme_overlay_example_renders(tmp_path):
    """The overlay the README shows really retargets the image, config and workers."""
    text = (MANIFESTS / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(# overlay: .*?)```", text, flags=re.S)
    shutil.copytree(MANIFESTS, tmp_path / "locust" / "manifests")
    overlay = tmp_path / "locust" / "overlays" / "my-run"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(block)
    objects = by_key(kubectl_kustomize(overlay))
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == "caio-load"
        validate(obj)
    for name in ("caio-locust-master", "caio-locust-worker"):
        (container,) = objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "us-central1-docker.pkg.dev/PROJECT/caio/caio-locust:2.47.0"
    assert objects[("Deployment", "caio-locust-worker")]["spec"]["replicas"] == 4
    assert objects[("ConfigMap", "caio-locust-config")]["data"] == {
        "CAIO_CONFIG": "gs://BUCKET/runs/RUN_ID/load/config.json"}


# ---------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (LOCUST_DIR / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def repo_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if found:
            pins[found[1].lower()] = found[2]
    return pins


def image_requirements() -> dict[str, str]:
    pins = {}
    for line in (LOCUST_DIR / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"locust/requirements.txt: {line!r} is not pinned with =="
            pins[name.strip().lower()] = version.strip()
    return pins


def sibling_modules(path: Path, seen: set[str] | None = None) -> set[str]:
    """locust/<name>.py modules ``path`` imports, directly or through each other."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module.split(".")[0]]
        for name in names:
            if (LOCUST_DIR / f"{name}.py").is_file() and name not in seen:
                seen.add(name)
                sibling_modules(LOCUST_DIR / f"{name}.py", seen)
    return seen


def test_dockerfile_builds_on_the_pinned_locust_image():
    froms = [rest for kw, rest in dockerfile_instructions() if kw == "FROM"]
    assert froms == [f"locustio/locust:{repo_pins()['locust']}"]


def test_dockerfile_copies_files_that_exist_and_everything_the_locustfile_imports():
    copies = [rest.split() for kw, rest in dockerfile_instructions() if kw == "COPY"]
    sources: dict[str, str] = {}
    for args in copies:
        args = [a for a in args if not a.startswith("--")]
        *srcs, dest = args
        for src in srcs:
            assert (LOCUST_DIR / src).is_file(), f"COPY {src}: no such file in locust/"
            sources[src] = dest.rstrip("/") + "/" + src if dest.endswith("/") else dest
    needed = {"locustfile.py", *(f"{m}.py" for m in sibling_modules(LOCUST_DIR / "locustfile.py"))}
    assert needed <= set(sources), f"not copied: {sorted(needed - set(sources))}"
    # the manifests and GkeLauncher run the locustfile where the image puts it
    assert sources["locustfile.py"] == gke.load_base(MANIFESTS).locustfile
    # siblings sit next to it (locust puts the locustfile's folder on sys.path)
    folder = sources["locustfile.py"].rsplit("/", 1)[0]
    assert all(sources[f].rsplit("/", 1)[0] == folder for f in needed)
    assert "requirements.txt" in sources
    installs = [rest for kw, rest in dockerfile_instructions() if kw == "RUN"]
    assert any("pip" in r and sources["requirements.txt"] in r for r in installs)


def test_dockerfile_runs_locust_as_a_non_root_user():
    instructions = dockerfile_instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    (entrypoint,) = [rest for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert json.loads(entrypoint) == list(gke.LOCUST_COMMAND)


def test_image_requirements_are_pinned_like_the_repository():
    pins, repo = image_requirements(), repo_pins()
    assert {"google-auth", "google-cloud-storage", "google-cloud-logging"} <= set(pins)
    for name, version in pins.items():
        assert repo.get(name) == version, (
            f"locust/requirements.txt pins {name}=={version}, requirements.txt has "
            f"{repo.get(name)}")
