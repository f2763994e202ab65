"""``brigade deploy apply``: server-side apply of the rendered files through the Kubernetes API.

Thin on purpose: parsing and ordering are plain functions; the API calls are one loop over the dynamic client,
which resolves any kind (Deployments and KEDA's CRDs alike) from the cluster's discovery. No cluster exists on
the build machines, so only the parsing and the call shape are tested (with a recording fake); try it with
``--dry-run`` (``dryRun=All``: the API server validates, admission runs, nothing is persisted).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

FIELD_MANAGER = "brigade"

Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Applied:
    """One object the API server accepted (or would accept, under dry run)."""

    kind: str
    namespace: str | None
    name: str
    dry_run: bool

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}{' (dry run)' if self.dry_run else ''}"


class ResourceFinder(Protocol):
    def get(self, *, api_version: str, kind: str) -> Any: ...


class ApplyClient(Protocol):
    """What ``apply`` uses of ``kubernetes.dynamic.DynamicClient``; a fake in tests, the real one otherwise."""

    @property
    def resources(self) -> ResourceFinder: ...

    def server_side_apply(self, resource: Any, body: Document, **kwargs: Any) -> Any: ...


def load_documents(paths: Iterable[Path]) -> list[Document]:
    """Every non-empty YAML document in ``paths``, in file order then document order (the render's apply order)."""
    docs: list[Document] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                raise ValueError(f"{path}: not a Kubernetes object: {str(doc)[:80]!r}")
            docs.append(doc)
    return docs


def connect() -> ApplyClient:
    """A dynamic client for the current kubeconfig context, or the in-cluster service account."""
    from kubernetes import config as kube_config
    from kubernetes.client import ApiClient
    from kubernetes.dynamic import DynamicClient

    kube_config.load_config()  # type: ignore[no-untyped-call]
    client: ApplyClient = DynamicClient(ApiClient())  # type: ignore[no-untyped-call]
    return client


def apply(
    paths: Sequence[Path],
    *,
    dry_run: bool = False,
    client: ApplyClient | None = None,
    field_manager: str = FIELD_MANAGER,
) -> list[Applied]:
    """Server-side apply every object in ``paths``; ``force`` takes ownership of fields we manage.

    Forcing conflicts is deliberate: the generator is the source of truth for every field it renders, and the
    Deployments render no ``replicas``, so the HPA's ownership of that field is never contested.
    """
    docs = load_documents(paths)
    api = client or connect()
    applied = []
    for doc in docs:
        resource = api.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        meta = doc.get("metadata", {})
        api.server_side_apply(
            resource,
            body=doc,
            name=meta.get("name"),
            namespace=meta.get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
            dry_run="All" if dry_run else None,
        )
        applied.append(Applied(kind=doc["kind"], namespace=meta.get("namespace"), name=meta["name"], dry_run=dry_run))
    return applied
