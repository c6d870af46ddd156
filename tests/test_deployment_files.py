"""The compose file and the web image, as a newcomer uses them (docker compose up --build;
register_host ssh://... from the controller)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_every_service_that_runs_our_image_can_build_it():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ours = {name: service for name, service in services.items() if service.get("image") == "launch-web"}
    assert set(ours) == {"web", "controller"}
    for name, service in ours.items():
        assert service.get("build") == {"context": ".", "dockerfile": "docker/web.Dockerfile"}, name
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_the_web_image_has_an_ssh_client_for_ssh_hosts():
    dockerfile = (ROOT / "docker" / "web.Dockerfile").read_text()
    install = re.search(r"apt-get install[^\n]*(?:\\\n[^\n]*)*", dockerfile)
    assert install and "openssh-client" in install.group(0)
    # Installed as root, before the image drops to the unprivileged user.
    assert dockerfile.index("openssh-client") < dockerfile.index("USER launch")
