"""Production settings: LAUNCH_SECURE, the CSP, URLs from LAUNCH_PUBLIC_URL, no secret in
LAUNCH_HOME in clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _settings_of(tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("ALLOWED_HOSTS", "LAUNCH_PUBLIC_URL")}
    environment.update(LAUNCH_HOME=str(tmp_path), **env)
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.ALLOWED_HOSTS]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**environment, "DJANGO_SETTINGS_MODULE": "launch_site.settings"},
    )


def test_launch_secure_requires_allowed_hosts_and_a_public_url(tmp_path):
    refused = _settings_of(tmp_path, LAUNCH_SECURE="1")
    assert refused.returncode != 0 and "requires ALLOWED_HOSTS" in refused.stderr
    refused = _settings_of(tmp_path, LAUNCH_SECURE="1", ALLOWED_HOSTS="*", LAUNCH_PUBLIC_URL="https://x")
    assert refused.returncode != 0 and "requires ALLOWED_HOSTS" in refused.stderr
    refused = _settings_of(tmp_path, LAUNCH_SECURE="1", ALLOWED_HOSTS="launch.example.com")
    assert refused.returncode != 0 and "requires LAUNCH_PUBLIC_URL" in refused.stderr
    ok = _settings_of(tmp_path, LAUNCH_SECURE="1", ALLOWED_HOSTS="launch.example.com",
                      LAUNCH_PUBLIC_URL="https://launch.example.com")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == '[true, true, 31536000, ["launch.example.com"]]'


@pytest.mark.django_db
def test_dashboard_pages_carry_a_csp_without_inline_scripts(owner, client):
    client.force_login(owner.user)
    for path in ("/endpoints/", "/api-keys/", "/accounts/login/"):
        response = client.get(path)
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        html = response.content.decode()
        assert " onsubmit=" not in html and " onclick=" not in html and "<script>" not in html


@pytest.mark.django_db
def test_signed_urls_follow_the_public_url_not_the_host_header(owner, settings):
    settings.LAUNCH_PUBLIC_URL = "https://launch.example.com"
    settings.ALLOWED_HOSTS = ["*"]
    response = owner.client.post("/v1/hosted_inference/model_bundle_upload", {}, format="json",
                                 HTTP_HOST="evil.example.net")
    assert response.json()["signedUrl"].startswith("https://launch.example.com/v1/store/objects/")


def test_a_redis_url_given_as_a_file_means_no_embedded_redis(tmp_path, monkeypatch):
    """One rule for settings and the supervisor (which starts the embedded Redis only when
    none is named): REDIS_URL_FILE names one as REDIS_URL does."""
    from launch_site.env import external_redis_url

    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL_FILE", raising=False)
    assert external_redis_url() is None
    secret = tmp_path / "redis_url"
    secret.write_text("redis://:pw@127.0.0.1:6379/5\n")
    monkeypatch.setenv("REDIS_URL_FILE", str(secret))
    assert external_redis_url() == "redis://:pw@127.0.0.1:6379/5"
