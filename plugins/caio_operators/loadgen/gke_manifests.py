"""The Locust Kustomize base (``locust/manifests``) read in Python, and the run's names.

The Composer worker has no kubectl, so :func:`render_base` applies the few Kustomize
features the base uses (resources, images, a ConfigMap generator) itself; a test checks
the result equals ``kubectl kustomize``. Names and labels derive from the run id only, so a
retry finds the objects of the try before.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MANIFESTS_ENV = "CAIO_MANIFESTS"
CONTAINER = "locust"
LOCUST_COMMAND = ("locust",)  # the image's ENTRYPOINT (locust/Dockerfile)
PUBLISH_ENV = "CAIO_PUBLISH_URI"  # read by the locustfile on the master

RUN_LABEL = "caio.dev/run-id"
DAG_LABEL = "caio.dev/dag-id"
TRY_LABEL = "caio.dev/try-number"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_PREFIX = "caio-locust-"
MAX_BASE_NAME = 56  # + "-worker" = 63, the longest Job name Kubernetes accepts

_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "images", "configMapGenerator"}


class GkeError(RuntimeError):
    """A Kubernetes call failed or an object is not what this run expects; the message says
    what and what to do."""


class ManifestError(ValueError):
    """locust/manifests cannot be rendered or lacks what GkeLauncher derives from it."""


# ---------------------------------------------------------------- the Kustomize base


def default_manifests_dir() -> Path:
    """``$CAIO_MANIFESTS``, the repository's ``locust/manifests``, or the packaged copy."""
    from caio_operators import resources

    explicit = os.environ.get(MANIFESTS_ENV)
    path = Path(explicit) if explicit else resources.find("locust", "manifests")
    if not (path / "kustomization.yaml").is_file():
        raise ManifestError(
            f"no kustomization.yaml in {path}; set {MANIFESTS_ENV} to the path of "
            "caio-bench's locust/manifests")
    return path


def render_base(manifests_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize <manifests_dir>`` prints, rendered in Python.

    Supports what the base uses: ``resources`` (files), ``images`` and a
    ``configMapGenerator`` of literals without a name hash. Anything else raises
    ManifestError: put it in an overlay, which GkeLauncher does not read.
    """
    root = Path(manifests_dir) if manifests_dir else default_manifests_dir()
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text()) or {}
    extra = sorted(set(kustomization) - _KUSTOMIZE_KEYS)
    if extra:
        raise ManifestError(
            f"{root / 'kustomization.yaml'} uses {', '.join(extra)}; GkeLauncher renders only "
            f"{', '.join(sorted(_KUSTOMIZE_KEYS))}. Move the rest to an overlay.")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources") or []:
        path = root / resource
        if not path.is_file():
            raise ManifestError(f"resource {resource} of {root} is not a file")
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    objects.extend(_generated_config_map(gen) for gen in
                   kustomization.get("configMapGenerator") or [])
    images = kustomization.get("images") or []
    for obj in objects:
        for container in _containers(obj):
            container["image"] = _new_image(container.get("image", ""), images)
    return objects


def _generated_config_map(gen: Mapping[str, Any]) -> dict[str, Any]:
    options = gen.get("options") or {}
    extra = sorted(set(gen) - {"name", "literals", "options"}) + sorted(
        set(options) - {"disableNameSuffixHash", "labels"})
    if extra or not options.get("disableNameSuffixHash"):
        raise ManifestError(
            f"configMapGenerator {gen.get('name')!r}: GkeLauncher supports literals, "
            "options.labels and options.disableNameSuffixHash: true only")
    data = {}
    for literal in gen.get("literals") or []:
        key, sep, value = str(literal).partition("=")
        if not sep:
            raise ManifestError(f"configMapGenerator literal {literal!r} is not KEY=VALUE")
        data[key] = value
    metadata: dict[str, Any] = {"name": gen["name"]}
    if options.get("labels"):
        metadata["labels"] = dict(options["labels"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _containers(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or spec
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def _split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:  # a colon after the last slash is a tag, not a registry port
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _new_image(image: str, images: Sequence[Mapping[str, Any]]) -> str:
    name, tag, digest = _split_image(image)
    for rule in images:
        if rule.get("name") != name:
            continue
        new = str(rule.get("newName") or name)
        if rule.get("digest"):
            return f"{new}@{rule['digest']}"
        if rule.get("newTag") is not None:
            return f"{new}:{rule['newTag']}"
        return new + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return image


@dataclass(frozen=True)
class LocustBase:
    """The parts of the rendered base GkeLauncher derives its objects from."""

    master: dict[str, Any]  # Deployment, component master
    worker: dict[str, Any]  # Deployment, component worker
    service: dict[str, Any]  # Service selecting the master

    def check(self) -> None:
        """Raise ManifestError now if anything GkeLauncher needs is missing."""
        for value in (self.locustfile, self.master_port, self.work_dir):
            assert value is not None
        container_of(self.worker)

    @property
    def locustfile(self) -> str:
        """Where the image holds the locustfile: the master's ``-f`` argument."""
        args = list(container_of(self.master)["args"])
        try:
            return args[args.index("-f") + 1]
        except (ValueError, IndexError):
            raise ManifestError("the master container's args have no `-f <locustfile>`") from None

    @property
    def master_port_spec(self) -> dict[str, Any]:
        for port in self.service["spec"].get("ports") or []:
            if port.get("name") == "master":
                return port
        raise ManifestError("the master Service has no port named `master`")

    @property
    def master_port(self) -> int:
        return int(self.master_port_spec["port"])

    @property
    def work_dir(self) -> str:
        """A writable folder in the master pod (its emptyDir mount) for Locust's CSV/HTML."""
        pod = self.master["spec"]["template"]["spec"]
        empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
        for mount in container_of(self.master).get("volumeMounts") or []:
            if mount["name"] in empty:
                return mount["mountPath"]
        raise ManifestError("the master container mounts no emptyDir volume for its files")


def load_base(manifests_dir: str | os.PathLike | None = None) -> LocustBase:
    """Render ``locust/manifests`` and pick the master/worker Deployments and the Service."""
    objects = render_base(manifests_dir)

    def pick(kind: str, component: str) -> dict[str, Any]:
        found = [o for o in objects if o.get("kind") == kind and
                 (o.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL) == component]
        if len(found) != 1:
            raise ManifestError(f"locust/manifests must hold exactly one {kind} labelled "
                                f"{COMPONENT_LABEL}={component}; found {len(found)}")
        return found[0]

    base = LocustBase(master=pick("Deployment", "master"), worker=pick("Deployment", "worker"),
                      service=pick("Service", "master"))
    base.check()
    return base


def container_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``locust`` container of a Deployment or Job."""
    for container in obj["spec"]["template"]["spec"].get("containers") or []:
        if container.get("name") == CONTAINER:
            return container
    raise ManifestError(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')} has no "
                        f"container named {CONTAINER!r}")


# ---------------------------------------------------------------- names and labels


def label_value(text: str) -> str:
    """``text`` made a valid label value (63 chars of ``[A-Za-z0-9_.-]``, alphanumeric ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def base_name(run_id: str) -> str:
    """``caio-locust-<run id>``: a DNS-1035 label short enough for ``-master``/``-worker``,
    the same for every try of a run."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    name = NAME_PREFIX + slug
    if slug and len(name) <= MAX_BASE_NAME and slug == run_id:
        return name
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:8]  # noqa: S324 (a name, not security)
    keep = MAX_BASE_NAME - len(NAME_PREFIX) - 9
    return f"{NAME_PREFIX}{slug[:keep].rstrip('-')}-{digest}".replace("--", "-")
