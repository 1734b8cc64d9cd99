"""The docs and the README stay true: generated tables current, every code block checked, every error listed."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools import doc_tables
from imgedit.api.responses import ImagesResponse
from imgedit.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"
#: The README is the front door; the rest is in the docs.
README_MAX_BYTES = 12 * 1024
#: The marker above every fenced block, and the ways a block is checked.
MARKER = re.compile(
    r"<!-- (example: [\w-]+|check: [\w-]+|benchmark|text|not run: [^>]+) -->\n(\s*)```(\w*)\n(.*?)\n\2```", re.S
)
FENCE = re.compile(r"^\s*```\w*$", re.M)
#: The examples run here (against no server); the rest run in tests/integration/test_docs_examples.py.
LOCAL_EXAMPLES = {"doc-tables", "webhook-verify"}
SERVER_EXAMPLES = {
    "make-serve",
    "curl-single",
    "curl-multi",
    "curl-json",
    "curl-stream",
    "openai-sdk",
    "openai-sdk-file",
    "openai-stream",
    "openai-url",
    "curl-url",
    "openai-job",
    "curl-job",
    "curl-idempotent",
}


def blocks() -> list[tuple[Path, str, str]]:
    """(page, marker, code) of every marked block of the README and the docs."""
    found = []
    for path in [README, *PAGES]:
        found += [(path, match[1], match[4]) for match in MARKER.finditer(path.read_text())]
    return found


def blocks_of(kind: str) -> list[str]:
    return [code for _, marker, code in blocks() if marker == kind]


def test_the_tables_that_mirror_code_are_current():
    assert doc_tables.stale() == []


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda path: path.name)
def test_every_code_block_says_how_it_is_checked(path):
    text = path.read_text()
    fences = len(FENCE.findall(text))
    assert fences % 2 == 0, path
    assert len(MARKER.findall(text)) == fences // 2, f"{path.name} has a code block without its marker"


def test_every_example_is_run_by_a_test():
    examples = {marker.removeprefix("example: ") for _, marker, _ in blocks() if marker.startswith("example: ")}
    assert examples == LOCAL_EXAMPLES | SERVER_EXAMPLES


def test_an_example_written_twice_is_the_same_example():
    seen: dict[str, str] = {}
    for _, marker, code in blocks():
        if marker.startswith("example: "):
            assert seen.setdefault(marker, code) == code, marker


def test_the_doc_tables_example(tmp_path):
    (code,) = set(blocks_of("example: doc-tables"))
    subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.parametrize("code", blocks_of("check: settings"), ids=lambda code: code.split("=")[0].split()[-1])
def test_the_settings_in_each_example_are_valid(code, monkeypatch):
    assignments = dict(re.findall(r"\b(IMGEDIT_[A-Z_]+)=(\S+)", code.replace("\\\n", " ")))
    assert assignments, code
    for name, value in assignments.items():
        monkeypatch.setenv(name, " ".join(shlex.split(value)))
    try:
        load_settings()
    except ConfigError as error:
        pytest.fail(f"{error}: {code}")


@pytest.mark.parametrize("code", blocks_of("check: response"))
def test_each_response_shown_is_a_valid_answer(code):
    ImagesResponse.model_validate_json(code)


@pytest.mark.parametrize("code", blocks_of("check: error"))
def test_each_error_shown_has_the_openai_shape(code):
    body = json.loads(code)
    assert set(body) == {"error", "detail"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["detail"] == body["error"]["message"]


def test_the_job_shown_is_a_job_as_the_server_writes_it(tmp_path):
    from imgedit.durable.database import Database
    from imgedit.durable.jobs import JobTable
    from imgedit.serving.background import Background

    (code,) = blocks_of("check: job")
    shown = json.loads(code)
    row = JobTable(Database(tmp_path), "r", 60, "m").create(
        owner="", body=b"", content_type="", webhook_url=None, now=1.0
    )
    written = Background._body(row)
    assert list(shown) == list(written)
    assert {key: type(value) for key, value in shown.items()} == {key: type(value) for key, value in written.items()}
    assert re.fullmatch(r"edit_[0-9a-f]{32}", shown["id"])


def test_the_event_shown_is_an_event_as_the_server_sends_it(tmp_path):
    from imgedit.durable.database import Database
    from imgedit.durable.jobs import JobTable

    (code,) = blocks_of("check: event")
    shown = json.loads(code)
    jobs = JobTable(Database(tmp_path), "r", 60, "m")
    job = jobs.create(owner="", body=b"", content_type="", webhook_url="https://x", now=1.0)
    jobs.end(job.id, "completed", 2.0, result={})
    (webhook,) = jobs.due_webhooks(3.0)
    assert list(shown) == list(webhook.event) and shown["type"] == webhook.event["type"]
    assert set(shown["data"]) == set(webhook.event["data"]) and re.fullmatch(r"evt_[0-9a-f]{32}", shown["id"])


def test_the_webhook_check_shown_verifies_a_signed_event_and_refuses_a_forged_one():
    import base64
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import WebhookVerificationError

    from imgedit.durable.jobs import Webhook
    from imgedit.durable.webhooks import WebhookSender
    from imgedit.media.fetch import Fetcher, FetchPolicy

    (code,) = blocks_of("example: webhook-verify")
    namespace: dict = {}
    exec(code, namespace)
    secret = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes....").decode()
    event = {"object": "event", "id": "evt_1", "type": "image.edit.failed", "created_at": 1, "data": {"id": "edit_1"}}
    body = json.dumps(event).encode()
    sender = WebhookSender(secret, Fetcher(FetchPolicy()))
    webhook = Webhook(job_id="edit_1", url="https://x", event=event, attempts=0)
    headers = sender.headers(webhook, body, datetime.now(UTC))
    assert namespace["on_imgedit_event"](body, headers, secret) == event
    with pytest.raises(WebhookVerificationError):
        namespace["on_imgedit_event"](body.replace(b"failed", b"completed"), headers, secret)


def test_the_scaling_query_shown_is_the_one_deployed():
    (query,) = blocks_of("check: scaling-query")
    deployed = yaml.safe_load_all((ROOT / "deploy/kubernetes/components/autoscaling/scaledobject.yaml").read_text())
    queries = [trigger["metadata"]["query"] for document in deployed for trigger in document["spec"]["triggers"]]
    assert query.strip() in queries


def test_every_benchmark_shown_is_run_by_the_smoke_tests():
    runners = (
        "tests/integration/test_bench_smoke.py",
        "tests/test_bench_gpu_qwen.py",
        "tests/deploy/test_routing.py",
        "tests/integration/test_soak.py",
    )
    smoke = "".join((ROOT / runner).read_text() for runner in runners)
    for code in blocks_of("benchmark"):
        module = re.search(r"bench\.(\w+)", code)
        assert module, code
        assert f'"{module[1]}"' in smoke or f"bench.{module[1]}" in smoke, module[1]


def test_every_error_code_is_on_the_errors_page():
    codes = {"invalid_value"}
    for path in (ROOT / "imgedit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
                codes.add(node.value.value)
    page = (ROOT / "docs/errors.md").read_text()
    assert sorted(code for code in codes if f"| `{code}` |" not in page) == []


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    assert sorted(path.name for path in PAGES if f": {path.name}\n" not in config) == []


def test_the_readme_is_a_front_door_into_the_docs():
    text = README.read_text()
    assert len(text.encode()) <= README_MAX_BYTES
    links = re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", text)
    assert {Path(link).name for link in links} == {path.name for path in PAGES}
    assert all((ROOT / link).is_file() for link in links)
