from __future__ import annotations

import base64

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, Team
from accounts.services import api_key_revoke

pytestmark = pytest.mark.django_db


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_basic_auth_with_key_as_username_is_accepted(owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=_basic(owner.key))
    response = client.get("/v1/model-bundles")
    assert response.status_code == 200, response.content


def test_bearer_auth_is_accepted(owner):
    response = owner.client.get("/v1/model-bundles")
    assert response.status_code == 200


def test_no_key_is_401_with_json_error():
    response = APIClient().get("/v1/model-bundles")
    assert response.status_code == 401
    assert "detail" in response.json()


@pytest.mark.parametrize("header", ["Bearer lk_nope_nope", "Bearer garbage", "Basic !!!notbase64", "Token abc"])
def test_bad_key_is_401(header, owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/v1/model-bundles")
    assert response.status_code == 401
    assert response.json()["detail"]


def test_key_with_right_prefix_but_wrong_secret_is_401(owner):
    prefix = owner.key.split("_")[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer lk_{prefix}_{'x' * 43}")
    assert client.get("/v1/model-bundles").status_code == 401


def test_revoked_key_is_401(owner):
    api_key = ApiKey.objects.get(team=owner.team)
    api_key_revoke(api_key=api_key)
    assert owner.client.get("/v1/model-bundles").status_code == 401


def test_key_is_stored_hashed_with_visible_prefix_and_last_used_time(owner):
    api_key = ApiKey.objects.get(team=owner.team)
    assert owner.key not in (api_key.hashed_key, api_key.prefix)
    assert owner.key.startswith(f"lk_{api_key.prefix}_")
    assert api_key.last_used_at is None
    owner.client.get("/v1/model-bundles")
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None


def test_create_api_key_command_prints_a_working_key_last(capsys):
    call_command("create_api_key", "newbie", "--team", "research")
    key = capsys.readouterr().out.strip().splitlines()[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=_basic(key))
    assert client.get("/v1/model-bundles").status_code == 200
    assert ApiKey.objects.get(prefix=key.split("_")[1]).team.name == "research"


def test_create_api_key_without_a_team_gives_a_key_that_sees_the_users_objects(owner, capsys):
    # What the first-start banner tells the admin to run: `create_api_key admin`.
    call_command("create_api_key", owner.user.username)
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert ApiKey.objects.get(prefix=key.split("_")[1]).team == owner.team
    assert not Team.objects.filter(name=owner.user.username).exists()


def test_health_routes_answer_without_auth():
    client = APIClient()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_openapi_schema_and_swagger_page_are_served():
    client = APIClient()
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    assert b"/v1/model-bundles" in schema.content
    assert client.get("/api/docs/").status_code == 200


def test_the_authenticated_key_carries_its_own_user_team_and_fields(owner, teammate):
    from accounts.authentication import authenticate_key

    api_key = authenticate_key(teammate.key)
    stored = ApiKey.objects.get(prefix=teammate.key.split("_")[1])
    assert (api_key.pk, api_key.team_id, api_key.user_id) == (stored.pk, teammate.team.id, teammate.user.id)
    # Fields the query did not load come from the database on access, not as blanks.
    assert (api_key.prefix, api_key.team.name, api_key.user.username) == (
        stored.prefix, teammate.team.name, teammate.user.username,
    )


# A user who left the team and a revoked key, tried on a route of each family: every one 401
# at once, while the teammate who stayed keeps working.
LEFT_ROUTES = [
    ("get", "/v1/model-bundles"),
    ("get", "/v2/model-bundles"),
    ("get", "/v1/model-endpoints"),
    ("post", "/v1/async-tasks?model_endpoint_id={endpoint}"),
    ("get", "/v1/model-endpoints/{endpoint}"),
    ("get", "/v1/hosted_inference/endpoints"),
    ("post", "/v1/hosted_inference/task_async/my-endpoint"),
    ("get", "/v1/batch-jobs/bj_missing"),
    ("post", "/v1/hosted_inference/model_bundle_upload"),
]


@pytest.fixture
def endpoint_of_acme(owner):
    from tests.factories import endpoint_body, make_bundle

    created = owner.client.post(
        "/v1/model-endpoints", endpoint_body(make_bundle(owner.team).id, endpoint_type="async", min_workers=0), format="json"
    )
    return created.json()["endpoint_creation_task_id"]


@pytest.mark.parametrize(("method", "path"), LEFT_ROUTES)
def test_keys_of_a_user_who_left_the_team_stop_working_at_once(owner, teammate, endpoint_of_acme, method, path):
    from accounts.models import Membership

    path = path.format(endpoint=endpoint_of_acme)
    body = {"args": {"x": 1}}
    assert getattr(teammate.client, method)(path, body, format="json").status_code not in (401, 403)
    Membership.objects.filter(user=teammate.user, team=teammate.team).delete()
    response = getattr(teammate.client, method)(path, body, format="json")
    assert response.status_code == 401, response.content
    assert getattr(owner.client, method)(path, body, format="json").status_code not in (401, 403)


@pytest.mark.parametrize(("method", "path"), LEFT_ROUTES)
def test_a_revoked_key_is_401_on_every_route_family(owner, endpoint_of_acme, method, path):
    api_key_revoke(api_key=ApiKey.objects.get(team=owner.team))
    response = getattr(owner.client, method)(path.format(endpoint=endpoint_of_acme), {"args": {}}, format="json")
    assert response.status_code == 401, response.content


def test_no_key_can_be_made_for_a_team_the_user_is_not_in(owner, outsider):
    from accounts.services import api_key_create
    from launch_site.errors import FieldError

    with pytest.raises(FieldError):
        api_key_create(user=outsider.user, team=owner.team)


def test_the_keys_page_shows_a_team_owner_whose_keys_are_whose(owner, teammate, client):
    from accounts.models import Membership

    Membership.objects.filter(user=owner.user, team=owner.team).update(role=Membership.Role.OWNER)
    Membership.objects.filter(user=teammate.user, team=teammate.team).update(role=Membership.Role.MEMBER)
    client.force_login(owner.user)
    html = client.get("/api-keys/").content.decode()
    assert f"lk_{teammate.key.split('_')[1]}_" in html and "tom" in html and "olivia" in html
    Membership.objects.filter(user=teammate.user, team=teammate.team).delete()
    assert "owner left the team" in client.get("/api-keys/").content.decode()
    # A member sees only their own keys.
    other = _member_client(owner)
    assert "olivia" not in other.get("/api-keys/").content.decode()


def _member_client(owner):
    from django.test import Client

    from accounts.services import team_get_or_create_for_user

    user, _ = team_get_or_create_for_user(username="mia", team_name="mia-solo")
    from accounts.models import Membership

    Membership.objects.filter(user=user).delete()
    Membership.objects.create(user=user, team=owner.team, role=Membership.Role.MEMBER)
    client = Client()
    client.force_login(user)
    return client


def test_the_schema_declares_basic_and_bearer_key_auth_and_the_error_answers():
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["apiKeyBasic"]["scheme"] == "basic" and schemes["apiKeyBearer"]["scheme"] == "bearer"
    create = schema["paths"]["/v1/model-endpoints"]["post"]
    assert {"apiKeyBasic": []} in create["security"] and {"apiKeyBearer": []} in create["security"]
    assert {"401", "404", "413", "422", "429"} <= set(create["responses"])
    assert {"401", "422", "429"} <= set(schema["paths"]["/v1/hosted_inference/task_sync/{endpoint_name}"]["post"]["responses"])
