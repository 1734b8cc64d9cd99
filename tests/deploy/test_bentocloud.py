"""BentoCloud: the Bento declares how many requests a replica takes, and the deployment scales with room to load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from imgedit.config import Settings
from imgedit.scheduling.capacity import replica_concurrency
from tests.integration.test_bento import build_bento

ROOT = Path(__file__).resolve().parents[2]


def test_a_replica_takes_one_request_per_gpu_unless_it_fuses():
    defaults = Settings()
    assert replica_concurrency(1, defaults.max_queue, defaults.max_batch) == 1
    assert replica_concurrency(4, 8, 1) == 4
    assert replica_concurrency(2, 8, 4) == 8  # fusion needs the requests in hand
    assert replica_concurrency(2, 1, 4) == 4  # but never more than run + queue, which would be 429s
    assert replica_concurrency(3, 0, 1) == 3


@pytest.mark.parametrize("workers", [1, 2, 5])
@pytest.mark.parametrize("max_queue", [0, 1, 3, 8])
@pytest.mark.parametrize("max_batch", [1, 2, 4, 16])
def test_concurrency_fills_every_gpu_and_never_overflows_a_queue(workers, max_queue, max_batch):
    concurrency = replica_concurrency(workers, max_queue, max_batch)
    assert concurrency >= workers  # every GPU can be busy
    assert concurrency <= workers * (1 + max_queue)  # at most what the workers admit together


@pytest.mark.parametrize("bad", [(0, 8, 1), (1, -1, 1), (1, 8, 0)])
def test_impossible_replicas_are_refused(bad):
    with pytest.raises(ValueError):
        replica_concurrency(*bad)


def test_the_built_bento_carries_concurrency_and_the_external_queue(tmp_path):
    """``bentoml build`` records the traffic settings, computed from the settings given as build arguments."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IMGEDIT_")}
    environment.update(BENTOML_HOME=str(tmp_path), BENTOML_DO_NOT_TRACK="true", HF_HUB_OFFLINE="1")
    name, version = build_bento(environment, "--arg", "workers=2", "--arg", "max_batch=4").split(":")
    info = yaml.safe_load((tmp_path / "bentos" / name / version / "bento.yaml").read_text())
    (service,) = info["services"]
    config = service["config"]
    assert config["workers"] == 2 and config["resources"]["gpu"] == 2
    assert config["traffic"]["concurrency"] == replica_concurrency(2, Settings().max_queue, 4) == 8
    assert config["traffic"]["external_queue"] is True
    assert config["traffic"]["timeout"] > Settings().request_timeout


def test_the_deployment_scales_slowly_enough_for_model_loads():
    config = yaml.safe_load((ROOT / "deploy" / "bentocloud.yaml").read_text())
    scaling = config["services"]["imgedit"]["scaling"]
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    policy = scaling["policy"]
    assert set(policy) == {"scale_up_stabilization_window", "scale_down_stabilization_window"}
    # BentoCloud accepts 0 to 3600 s. Loading Qwen-Image-Edit-2511 takes minutes: a replica is kept well
    # beyond that, and is added only for load that outlasts a short burst.
    assert 60 <= policy["scale_up_stabilization_window"] <= 600
    assert 600 <= policy["scale_down_stabilization_window"] <= 3600
