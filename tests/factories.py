from __future__ import annotations

import uuid

from bundles.models import ModelBundle, StoredObject


def make_bundle(team, name: str = "model", **fields) -> ModelBundle:
    artifact = StoredObject.objects.create(key=f"{team.id}/bundle/{uuid.uuid4().hex}", team=team, kind="bundle", size=1)
    return ModelBundle.objects.create(
        team=team, name=name, packaging_type="cloudpickle", flavor="cloudpickle_artifact", artifact=artifact,
        location=artifact.location, **fields,
    )


def endpoint_body(bundle_id: str, **fields) -> dict:
    return {
        "name": "my-endpoint", "model_bundle_id": bundle_id, "endpoint_type": "sync", "metadata": {},
        "cpus": 1, "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": 1, "max_workers": 2,
        "per_worker": 4, "labels": {}, **fields,
    }
