"""deploy.keda.apply without a cluster: documents parsed in render order, one server-side apply each.

A recording stand-in replaces the dynamic client; what it checks is the call shape we send to the API server
(dry run, field manager, force). Whether the server accepts it is for ``brigade deploy apply --dry-run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy.keda.apply import apply, load_documents
from deploy.keda.config import reference_settings
from deploy.keda.render import render_all


@dataclass
class _Finder:
    def get(self, *, api_version: str, kind: str) -> Any:
        return (api_version, kind)


@dataclass
class _Recorder:
    calls: list[tuple[Any, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    resources: _Finder = field(default_factory=_Finder)

    def server_side_apply(self, resource: Any, body: dict[str, Any], **kwargs: Any) -> Any:
        self.calls.append((resource, body, kwargs))
        return body


@pytest.mark.parametrize("dry_run", [True, False])
def test_apply_sends_every_document(tmp_path: Path, dry_run: bool) -> None:
    paths = render_all(reference_settings(), tmp_path)
    recorder = _Recorder()
    applied = apply(paths, dry_run=dry_run, client=recorder)
    kinds = [a.kind for a in applied]
    assert kinds[0] == "TriggerAuthentication", "auth before the ScaledObjects that reference it"
    assert kinds.count("ScaledObject") == 3 and kinds.count("Deployment") == 4
    for resource, body, kwargs in recorder.calls:
        assert resource == (body["apiVersion"], body["kind"])
        assert kwargs["dry_run"] == ("All" if dry_run else None)
        assert kwargs["field_manager"] == "brigade" and kwargs["force_conflicts"] is True
        assert kwargs["namespace"] == "brigade"
    assert all(str(a).endswith("(dry run)") == dry_run for a in applied)


def test_load_documents_rejects_non_objects(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("---\n- just a list\n")
    with pytest.raises(ValueError, match="not a Kubernetes object"):
        load_documents([bad])
