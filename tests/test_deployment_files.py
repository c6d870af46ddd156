"""The compose file and the web image, as a newcomer uses them (docker compose up --build;
register_host ssh://... from the controller)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
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


def test_the_web_image_runs_as_many_web_workers_as_launch_up_when_nobody_says():
    """One rule (launch_site/env.py): the Dockerfile's default is computed by it, not written
    down a second time."""
    import subprocess
    import sys

    from launch_site.env import default_web_workers

    dockerfile = (ROOT / "docker" / "web.Dockerfile").read_text()
    default = re.search(r"--web-workers \$\{WEB_WORKERS:-(\$\(python -c '[^']*'\))\}", dockerfile)
    assert default, "the web image's --web-workers default"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    printed = subprocess.run(["sh", "-c", f"echo {default.group(1)}"], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == str(default_web_workers())
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "WEB_WORKERS" not in services["web"]["environment"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: a cpuset of its own")
def test_default_web_workers_is_half_the_cpus_this_process_may_use_and_at_least_one():
    import subprocess
    import sys

    probe = ("import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1:]}); "
             "from launch_site.env import default_web_workers; print(default_web_workers())")
    cpus = sorted(os.sched_getaffinity(0))
    for allowed in ([cpus[0]], cpus):
        printed = subprocess.run([sys.executable, "-c", probe, *map(str, allowed)], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout.strip()
        assert printed == str(max(1, len(allowed) // 2)), allowed
