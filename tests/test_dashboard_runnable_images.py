"""The dashboard's "from an image" bundle page: a runnable-image bundle created from a form,
its errors next to the field they concern, and the bundle page showing the image's setup."""

from __future__ import annotations

import pytest

from bundles.models import ModelBundle
from tests.test_dashboard import browser, field_errors  # noqa: F401 - the fixture and a helper

pytestmark = pytest.mark.django_db


def image_form(**fields) -> dict:
    return {
        "name": "my-server", "flavor": "runnable_image", "repository": "registry.example.com/acme/server",
        "tag": "1.2.0", "command": '["python", "server.py", "--port", "5005"]', "env": '{"MODEL": "small"}',
        "predict_route": "/v1/predict", "healthcheck_route": "/healthz", "readiness_initial_delay_seconds": 30,
        "streaming_command": "", "streaming_predict_route": "", **fields,
    }  # fmt: skip


def test_the_image_form_creates_a_runnable_image_bundle_and_its_page_shows_it(browser, owner):  # noqa: F811
    assert browser.get("/bundles/new-image/").status_code == 200
    assert b'href="/bundles/new-image/"' in browser.get("/bundles/").content

    response = browser.post("/bundles/new-image/", image_form(), follow=True)
    bundle = ModelBundle.objects.get(team=owner.team)
    assert response.redirect_chain[-1][0] == f"/bundles/{bundle.id}/"
    assert bundle.flavor == "runnable_image" and bundle.artifact is None
    config = bundle.image_config
    assert (config["repository"], config["tag"]) == ("registry.example.com/acme/server", "1.2.0")
    assert config["command"] == ["python", "server.py", "--port", "5005"] and config["env"] == {"MODEL": "small"}
    assert (config["predict_route"], config["healthcheck_route"]) == ("/v1/predict", "/healthz")
    assert config["readiness_initial_delay_seconds"] == 30

    page = response.content.decode()
    assert "<code>registry.example.com/acme/server:1.2.0</code>" in page
    assert "<code>python server.py --port 5005</code>" in page
    assert "<code>POST /v1/predict</code>" in page and "<code>GET /healthz</code>, ready within 30 s" in page
    assert "&quot;MODEL&quot;: &quot;small&quot;" in page
    assert "Streaming route" not in page and "not uploaded yet" not in page


def test_the_streaming_flavor_keeps_its_streaming_command_and_route(browser, owner):  # noqa: F811
    form = image_form(flavor="streaming_enhanced_runnable_image", command="",
                      streaming_command='["python", "stream_server.py"]', streaming_predict_route="/generate")
    response = browser.post("/bundles/new-image/", form, follow=True)
    bundle = ModelBundle.objects.get(team=owner.team)
    assert bundle.flavor == "streaming_enhanced_runnable_image"
    assert bundle.image_config["streaming_command"] == ["python", "stream_server.py"]
    assert bundle.image_config["streaming_predict_route"] == "/generate"
    assert "<code>POST /generate</code> (server-sent events)" in response.content.decode()


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"repository": "Not An Image!"}, "repository", "must be an image repository"),
        ({"tag": "-bad"}, "tag", "must be an image tag"),
        ({"command": '"python server.py"'}, "command", "must be a JSON list"),
        ({"command": "[1, 2]"}, "command", "must be a list of strings"),
        ({"env": '{"A": 1}'}, "env", "must be an object of strings"),
        ({"predict_route": "predict"}, "predict_route", "must be a path starting with"),
        ({"readiness_initial_delay_seconds": 100000}, "readiness_initial_delay_seconds", "from 0 to 86400"),
        ({"name": "a/b"}, "name", "the name is part of URLs"),
        # Refused, not dropped: a runnable_image has no streaming route.
        ({"streaming_command": '["python", "s.py"]'}, "streaming_command", "is not a field of the runnable_image"),
        ({"flavor": "streaming_enhanced_runnable_image"}, "streaming_command", "This field is required"),
        ({"flavor": "triton"}, "flavor", "Select a valid choice"),
    ],
)
def test_the_image_form_shows_errors_next_to_the_field_and_creates_nothing(browser, fields, field, message):  # noqa: F811
    response = browser.post("/bundles/new-image/", image_form(**fields))
    assert response.status_code == 422
    assert message in field_errors(response, field)
    assert not ModelBundle.objects.exists()


def test_another_teams_image_bundle_page_is_404(outsider, owner):
    from django.test import Client

    from bundles.services import bundle_create_runnable_image

    bundle = bundle_create_runnable_image(team=owner.team, user=owner.user, name="mine", flavor="runnable_image",
                                          values={"repository": "acme/s", "tag": "1", "command": ["s"],
                                                  "protocol": "http"})
    client = Client()
    client.force_login(outsider.user)
    assert client.get(f"/bundles/{bundle.id}/").status_code == 404
