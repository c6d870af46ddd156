"""The native bundle routes (v1 and v2 of launch-openapi.json): the client's upload flow,
versioning by name, validation messages naming the field, and another team's bundle as 404."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.test import Client

from bundles.models import ModelBundle, StoredObject

pytestmark = pytest.mark.django_db

V1_FIELDS = {
    "id", "name", "location", "requirements", "env_params", "packaging_type", "metadata", "app_config",
    "created_at", "model_artifact_ids", "schema_location",
}  # fmt: skip
V2_FIELDS = {"id", "name", "metadata", "created_at", "model_artifact_ids", "schema_location", "flavor"}
ENV_PARAMS = {"framework_type": "pytorch", "pytorch_image_tag": "latest"}


@pytest.fixture(autouse=True)
def store_dir(settings, tmp_path) -> Path:
    settings.BUNDLE_STORE_DIR = tmp_path / "store"
    return settings.BUNDLE_STORE_DIR


def uploaded_location(persona, data: bytes = b"pickled bytes") -> str:
    target = persona.client.post("/v1/hosted_inference/model_bundle_upload", {}, format="json").json()
    response = Client().generic("PUT", urlparse(target["signedUrl"]).path, data=data, content_type="")
    assert response.status_code == 200, response.content
    return f"s3://{target['bucket']}/{target['key']}"


def v1_body(location: str, **fields) -> dict:
    return {
        "name": "my-model", "location": location, "requirements": ["numpy"], "env_params": ENV_PARAMS,
        "packaging_type": "cloudpickle", **fields,
    }  # fmt: skip


def v2_body(location: str, flavor: str = "cloudpickle_artifact", **flavor_fields) -> dict:
    return {
        "name": "my-model",
        "schema_location": "s3://launch-bundles/schema.json",
        "flavor": {
            "flavor": flavor, "requirements": [], "location": location, "load_predict_fn": "def f(): ...",
            "load_model_fn": "def g(): ...", "framework": {"framework_type": "tensorflow", "tensorflow_version": "2"},
            **flavor_fields,
        },
    }  # fmt: skip


def create_v1(persona, **fields) -> str:
    location = fields.pop("location", None) or uploaded_location(persona)
    response = persona.client.post("/v1/model-bundles", v1_body(location, **fields), format="json")
    assert response.status_code == 200, response.content
    return response.json()["model_bundle_id"]


def error_fields(response) -> list[str]:
    return [".".join(error["loc"][1:]) for error in response.json()["detail"]]


def error_message(response) -> str:
    return " ".join(error["msg"] for error in response.json()["detail"])


def test_client_flow_upload_put_create_list_latest(owner):
    location = uploaded_location(owner, b"the bundle")
    created = owner.client.post("/v1/model-bundles", v1_body(location), format="json")
    assert created.status_code == 200, created.content
    bundle_id = created.json()["model_bundle_id"]
    assert set(created.json()) == {"model_bundle_id"}

    listed = owner.client.get("/v1/model-bundles").json()["model_bundles"]
    assert [b["id"] for b in listed] == [bundle_id]
    latest = owner.client.get("/v1/model-bundles/latest", {"model_name": "my-model"})
    assert latest.status_code == 200
    body = latest.json()
    assert set(body) == V1_FIELDS
    assert body["id"] == bundle_id
    assert body["location"] == location
    assert body["requirements"] == ["numpy"]
    assert body["env_params"]["framework_type"] == "pytorch"
    assert body["packaging_type"] == "cloudpickle"
    assert body["model_artifact_ids"] == []
    assert owner.client.get(f"/v1/model-bundles/{bundle_id}").json() == body


def test_teammate_sees_the_teams_bundles(owner, teammate):
    bundle_id = create_v1(owner)
    assert teammate.client.get(f"/v1/model-bundles/{bundle_id}").status_code == 200


def test_bundles_are_versioned_by_name_and_latest_is_the_newest(owner):
    first = create_v1(owner, name="ranker")
    second = create_v1(owner, name="ranker")
    create_v1(owner, name="other")
    assert owner.client.get("/v1/model-bundles/latest", {"model_name": "ranker"}).json()["id"] == second
    newest = owner.client.get("/v1/model-bundles", {"model_name": "ranker"}).json()["model_bundles"]
    assert [b["id"] for b in newest] == [second, first]
    oldest = owner.client.get("/v1/model-bundles", {"model_name": "ranker", "order_by": "oldest"}).json()
    assert [b["id"] for b in oldest["model_bundles"]] == [first, second]
    assert len(owner.client.get("/v1/model-bundles").json()["model_bundles"]) == 3


def test_list_with_a_bad_order_by_is_422_naming_it(owner):
    response = owner.client.get("/v1/model-bundles", {"order_by": "sideways"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "order_by"]


def test_latest_without_model_name_is_422_naming_it(owner):
    response = owner.client.get("/v1/model-bundles/latest")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "model_name"]
    assert "model_name" in response.json()["detail"][0]["msg"]


def test_latest_of_an_unknown_name_is_404(owner):
    assert owner.client.get("/v1/model-bundles/latest", {"model_name": "nope"}).status_code == 404
    assert owner.client.get("/v2/model-bundles/latest", {"model_name": "nope"}).status_code == 404


def test_unknown_bundle_id_is_404(owner):
    assert owner.client.get("/v1/model-bundles/bun_nope").status_code == 404
    assert owner.client.get("/v2/model-bundles/bun_nope").status_code == 404


def test_other_teams_bundle_is_404_on_every_route(owner, outsider):
    bundle_id = create_v1(owner, name="secret")
    for version in ("v1", "v2"):
        assert outsider.client.get(f"/{version}/model-bundles/{bundle_id}").status_code == 404
        assert outsider.client.get(f"/{version}/model-bundles/latest", {"model_name": "secret"}).status_code == 404
        assert outsider.client.get(f"/{version}/model-bundles").json() == {"model_bundles": []}
        clone = outsider.client.post(
            f"/{version}/model-bundles/clone-with-changes", {"original_model_bundle_id": bundle_id}, format="json"
        )
        assert clone.status_code == 404
    assert ModelBundle.objects.count() == 1


def test_create_over_another_teams_upload_is_422_as_if_unknown(owner, outsider):
    location = uploaded_location(outsider)
    response = owner.client.post("/v1/model-bundles", v1_body(location), format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["location"]
    assert "no uploaded object" in error_message(response)


@pytest.mark.parametrize(
    "location, message",
    [
        ("not a location", "must look like s3://"),
        ("s3://someone-elses-bucket/1/bundle/abc", "unknown bucket"),
        ("s3://launch-bundles/1/bundle/0123456789abcdef", "no uploaded object"),
    ],
)
def test_bad_location_is_422_naming_location(owner, location, message):
    response = owner.client.post("/v1/model-bundles", v1_body(location), format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["location"]
    assert message in error_message(response)
    assert ModelBundle.objects.count() == 0


def test_location_with_nothing_uploaded_yet_is_422(owner):
    target = owner.client.post("/v1/hosted_inference/model_bundle_upload", {}, format="json").json()
    response = owner.client.post(
        "/v1/model-bundles", v1_body(f"s3://{target['bucket']}/{target['key']}"), format="json"
    )
    assert response.status_code == 422
    assert error_fields(response) == ["location"]
    assert "nothing was uploaded" in error_message(response)


def test_batch_input_upload_is_not_a_bundle_location(owner):
    target = owner.client.post("/v1/hosted_inference/batch_task_input_upload", {}, format="json").json()
    Client().generic("PUT", urlparse(target["signedUrl"]).path, data=b"id,args\n", content_type="")
    response = owner.client.post(
        "/v1/model-bundles", v1_body(f"s3://{target['bucket']}/{target['key']}"), format="json"
    )
    assert response.status_code == 422
    assert "batch_input" in error_message(response)


def test_malformed_json_is_422(owner):
    response = owner.client.post("/v1/model-bundles", data="{not json", content_type="application/json")
    assert response.status_code == 422
    assert "malformed" in error_message(response)


@pytest.mark.parametrize("field", ["name", "location", "requirements", "env_params", "packaging_type"])
def test_missing_v1_field_is_422_naming_it(owner, field):
    body = v1_body(uploaded_location(owner))
    del body[field]
    response = owner.client.post("/v1/model-bundles", body, format="json")
    assert response.status_code == 422
    assert error_fields(response) == [field]
    assert error_message(response).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"requirements": "numpy"}, "requirements"),
        ({"env_params": {"framework_type": "jax"}}, "env_params.framework_type"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"app_config": "x"}, "app_config"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"metadata": {"python_version": "three"}}, "metadata.python_version"),
    ],
)
def test_bad_v1_field_is_422_naming_it(owner, fields, field):
    response = owner.client.post("/v1/model-bundles", v1_body(uploaded_location(owner), **fields), format="json")
    assert response.status_code == 422, response.content
    assert error_fields(response) == [field]


@pytest.mark.parametrize("packaging_type", ["lira", "docker"])
def test_unsupported_packaging_type_is_422(owner, packaging_type):
    body = v1_body(uploaded_location(owner), packaging_type=packaging_type)
    response = owner.client.post("/v1/model-bundles", body, format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["packaging_type"]
    assert "not supported" in error_message(response)


def test_v1_zip_bundle_takes_module_paths_from_metadata(owner):
    metadata = {"load_predict_fn_module_path": "pkg.predict", "load_model_fn_module_path": "pkg.load"}
    bundle_id = create_v1(owner, packaging_type="zip", metadata=metadata)
    bundle = ModelBundle.objects.get(id=bundle_id)
    assert bundle.flavor == "zip_artifact"
    assert (bundle.load_predict_fn_module_path, bundle.load_model_fn_module_path) == ("pkg.predict", "pkg.load")
    flavor = owner.client.get(f"/v2/model-bundles/{bundle_id}").json()["flavor"]
    assert flavor["flavor"] == "zip_artifact"
    assert flavor["load_predict_fn_module_path"] == "pkg.predict"


def test_v1_zip_bundle_without_module_paths_is_422(owner):
    body = v1_body(uploaded_location(owner), packaging_type="zip", metadata={})
    response = owner.client.post("/v1/model-bundles", body, format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["load_predict_fn_module_path"]


def test_python_version_from_metadata_is_recorded(owner):
    bundle_id = create_v1(owner, metadata={"python_version": "3.11"})
    assert ModelBundle.objects.get(id=bundle_id).python_version == "3.11"
    patch_level = create_v1(owner, metadata={"python_version": "3.12.4"})
    assert ModelBundle.objects.get(id=patch_level).python_version == "3.12"


def test_v2_create_cloudpickle_and_read_back(owner):
    location = uploaded_location(owner)
    response = owner.client.post("/v2/model-bundles", v2_body(location, app_config={"k": 1}), format="json")
    assert response.status_code == 200, response.content
    bundle_id = response.json()["model_bundle_id"]
    body = owner.client.get(f"/v2/model-bundles/{bundle_id}").json()
    assert set(body) == V2_FIELDS
    assert body["flavor"] == {
        "flavor": "cloudpickle_artifact", "requirements": [], "location": location, "app_config": {"k": 1},
        "load_predict_fn": "def f(): ...", "load_model_fn": "def g(): ...",
        "framework": {"framework_type": "tensorflow", "tensorflow_version": "2"},
    }  # fmt: skip
    assert body["model_artifact_ids"] == []
    assert owner.client.get("/v2/model-bundles/latest", {"model_name": "my-model"}).json() == body
    assert owner.client.get("/v2/model-bundles").json() == {"model_bundles": [body]}
    # The same bundle through v1: env_params derived from the framework.
    v1 = owner.client.get(f"/v1/model-bundles/{bundle_id}").json()
    assert v1["packaging_type"] == "cloudpickle"
    assert v1["env_params"]["framework_type"] == "tensorflow"


def test_v2_zip_bundle_with_custom_framework(owner):
    body = v2_body(
        uploaded_location(owner),
        flavor="zip_artifact",
        load_predict_fn_module_path="m.predict",
        load_model_fn_module_path="m.load",
        framework={"framework_type": "custom_base_image", "image_repository": "repo", "image_tag": "t"},
    )
    response = owner.client.post("/v2/model-bundles", body, format="json")
    assert response.status_code == 200, response.content
    flavor = owner.client.get(f"/v2/model-bundles/{response.json()['model_bundle_id']}").json()["flavor"]
    assert flavor["load_model_fn_module_path"] == "m.load"
    assert flavor["framework"] == {"framework_type": "custom_base_image", "image_repository": "repo", "image_tag": "t"}


@pytest.mark.parametrize("flavor", ["mystery", "lira"])
def test_v2_unsupported_flavor_is_422_not_supported(owner, flavor):
    response = owner.client.post("/v2/model-bundles", v2_body(uploaded_location(owner), flavor=flavor), format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["flavor"]
    assert error_message(response).startswith("flavor: ") and "not supported" in error_message(response)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"location": None}, "flavor.location"),
        ({"framework": {"framework_type": "pytorch"}}, "flavor.framework.pytorch_image_tag"),
        ({"requirements": None}, "flavor.requirements"),
    ],
)
def test_v2_bad_flavor_field_is_422_naming_it(owner, change, field):
    body = v2_body(uploaded_location(owner))
    body["flavor"].update(change)
    body["flavor"] = {k: v for k, v in body["flavor"].items() if v is not None}
    response = owner.client.post("/v2/model-bundles", body, format="json")
    assert response.status_code == 422
    assert error_fields(response) == [field]


def test_v2_bad_location_names_flavor_location(owner):
    response = owner.client.post("/v2/model-bundles", v2_body("s3://launch-bundles/9/bundle/nothing"), format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["flavor.location"]


def test_clone_with_changes_makes_a_new_version_over_the_same_bytes(owner):
    original = create_v1(owner, app_config={"threshold": 1})
    response = owner.client.post(
        "/v1/model-bundles/clone-with-changes",
        {"original_model_bundle_id": original, "new_app_config": {"threshold": 2}},
        format="json",
    )
    assert response.status_code == 200, response.content
    clone_id = response.json()["model_bundle_id"]
    assert clone_id != original
    clone = owner.client.get(f"/v1/model-bundles/{clone_id}").json()
    first = owner.client.get(f"/v1/model-bundles/{original}").json()
    assert clone["app_config"] == {"threshold": 2}
    assert first["app_config"] == {"threshold": 1}
    assert clone["location"] == first["location"] and clone["name"] == first["name"]
    assert owner.client.get("/v1/model-bundles/latest", {"model_name": "my-model"}).json()["id"] == clone_id


def test_v2_clone_without_new_app_config_keeps_it(owner):
    original = create_v1(owner, app_config={"threshold": 1})
    response = owner.client.post(
        "/v2/model-bundles/clone-with-changes", {"original_model_bundle_id": original}, format="json"
    )
    clone = owner.client.get(f"/v2/model-bundles/{response.json()['model_bundle_id']}").json()
    assert clone["flavor"]["app_config"] == {"threshold": 1}


def test_clone_without_original_id_is_422_naming_it(owner):
    response = owner.client.post("/v1/model-bundles/clone-with-changes", {}, format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["original_model_bundle_id"]


def test_one_upload_may_back_several_bundles(owner):
    location = uploaded_location(owner)
    create_v1(owner, location=location, name="a")
    create_v1(owner, location=location, name="b")
    assert StoredObject.objects.filter(kind="bundle").count() == 1
