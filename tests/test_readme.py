"""The README's shell blocks marked `<!-- tested -->` run, as written and in order, in one bash
against a live stack (the key and URL put in for the placeholders): a doc that drifts from the
server fails here. Every curl fails the script on an HTTP error (--fail-with-body)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from batchjobs.models import BatchJob
from endpoints.models import ModelEndpoint

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("readme")]

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- tested -->"


def marked_blocks(text: str) -> list[str]:
    return re.findall(re.escape(MARK) + r"\n```(?:sh|bash)\n(.*?)\n```", text, flags=re.S)


def json_values(text: str) -> list:
    """Every JSON object or list printed, in order (answers may span lines)."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index] in "{[":
            try:
                value, index = decoder.raw_decode(text, index)
            except ValueError:
                index += 1
            else:
                values.append(value)
        else:
            index += 1
    return values


def script_for(blocks: list[str], *, key: str, url: str) -> str:
    script = "\n".join(blocks)
    script, keys = re.subn(r"^KEY=\S+", f"KEY={key}", script, flags=re.M)
    script, urls = re.subn(r"^URL=\S+", f"URL={url}", script, flags=re.M)
    assert (keys, urls) == (1, 1), "the README's first tested block sets KEY= and URL= once each"
    prelude = "set -eo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\n"
    return prelude + script


def test_the_marked_blocks_are_found():
    blocks = marked_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 3
    assert "model-endpoints" in blocks[0] and "batch-jobs/upload" in blocks[1] and "input_path" in blocks[2]


def test_readme_shell_blocks_run_against_a_live_stack(asgi_server, owner, tmp_path):
    # Through the web server `make run` starts (uvicorn, ASGI), with the live stack's controller.
    blocks = marked_blocks((ROOT / "README.md").read_text())
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    run = subprocess.run(
        ["bash", "-c", script_for(blocks, key=owner.key, url=asgi_server)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    lines = run.stdout.splitlines()

    # The wait loops ended on the statuses the README promises.
    assert "READY" in lines and "UPDATE_FAILED" not in lines
    assert "SUCCESS" in lines
    # The answers it shows are the answers given.
    answers = json_values(run.stdout)
    assert {"status": "SUCCESS", "result": {"result": "42"}, "traceback": None, "status_code": None} in answers
    assert [{"id": "a", "result": 2}, {"id": "b", "result": 4}] in answers
    created = [a for a in answers if isinstance(a, dict) and set(a) == {"job_id"}]
    assert len(created) == 1

    endpoint = ModelEndpoint.objects.get(team=owner.team, name="doubler")
    assert endpoint.status == "READY"
    two_step = BatchJob.objects.get(pk=created[0]["job_id"])
    assert two_step.labels == {"project": "readme"}
    assert (two_step.cpus, two_step.memory, two_step.max_workers) == ("1", "1Gi", 2)
    assert BatchJob.objects.filter(team=owner.team).count() == 2
    # Let it end before the stack goes (its loop runs in the controller thread).
    deadline = time.monotonic() + 60
    while not BatchJob.objects.get(pk=two_step.pk).is_terminal:
        assert time.monotonic() < deadline, "the two-step job never ended"
        time.sleep(0.2)
    assert BatchJob.objects.get(pk=two_step.pk).status == "SUCCESS"
