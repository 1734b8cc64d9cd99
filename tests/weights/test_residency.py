import pytest
import torch

from imgedit.weights.memory import GiB, MemoryPlanError
from imgedit.weights.residency import Residency, plan_residency, working_memory

SIZES = {"qwen": 40 * GiB, "klein": 16 * GiB, "sd": 4 * GiB}


def test_by_default_as_many_as_fit_stay_on_the_device_counting_the_largest_together():
    plan = plan_residency(SIZES, wanted=None, available=60 * GiB, where="cuda:0")
    assert plan.slots == 1  # qwen and klein together need 56 GiB and qwen's working memory
    assert plan.device_need == 40 * GiB + working_memory(40 * GiB)
    assert plan_residency(SIZES, wanted=None, available=80 * GiB, where="cuda:0").slots == 3
    assert plan_residency(SIZES, wanted=None, available=None, where="cpu").slots == 3


def test_a_resident_count_that_does_not_fit_is_refused_naming_the_models_and_what_fits():
    with pytest.raises(MemoryPlanError) as refused:
        plan_residency(SIZES, wanted=2, available=60 * GiB, where="cuda:0")
    message = str(refused.value)
    assert message.startswith("IMGEDIT_RESIDENT_MODELS=2: qwen (40.0 GiB), klein (16.0 GiB) may be on cuda:0 together")
    assert "60.0 GiB is available; at most 1 fit at once (IMGEDIT_RESIDENT_MODELS=1)" in message


def test_a_set_whose_largest_model_cannot_fit_is_refused_naming_it():
    with pytest.raises(MemoryPlanError, match=r"^IMGEDIT_MODELS: qwen \(40.0 GiB\) may be on cuda:0 .* not even"):
        plan_residency(SIZES, wanted=None, available=30 * GiB, where="cuda:0")


class Model:
    """A stand-in for a pipeline: records where it was moved."""

    def __init__(self, name: str, moves: list[tuple[str, str]]) -> None:
        self.name, self.moves = name, moves

    def to(self, device: torch.device) -> None:
        self.moves.append((self.name, device.type))


def test_bringing_a_model_sends_the_one_used_longest_ago_to_host_memory():
    moves: list[tuple[str, str]] = []
    swaps: list[str] = []
    residency = Residency(torch.device("meta"), on_swap=lambda name, seconds: swaps.append(name))
    for name in ("a", "b", "c"):
        residency.add(name, Model(name, moves))
        residency.park(name, 1)
    residency.keep(2, ["a", "b", "c"])
    assert residency.resident() == ["a", "b"]
    moves.clear()
    residency.bring("a")  # already there: nothing moves, but it is now the most recently used
    residency.bring("c")
    assert moves == [("b", "cpu"), ("c", "meta")]
    assert residency.resident() == ["a", "c"]
    assert [residency.on_device(name) for name in "abc"] == [True, False, True]
    assert swaps == ["a", "b", "c"]  # two at start-up, then one


def test_a_model_host_memory_cannot_hold_is_refused_naming_it():
    residency = Residency(torch.device("meta"))
    residency.add("huge", Model("huge", []))
    with pytest.raises(MemoryPlanError, match=r"^huge \(.*\) would wait in host memory"):
        residency.park("huge", 2**62)


def test_on_the_cpu_a_swap_moves_nothing_but_counts():
    moves: list[tuple[str, str]] = []
    swaps: list[str] = []
    residency = Residency(torch.device("cpu"), on_swap=lambda name, seconds: swaps.append(name))
    for name in ("a", "b"):
        residency.add(name, Model(name, moves))
        residency.park(name, 1)
    residency.keep(1, ["a", "b"])
    residency.bring("b")
    assert (moves, swaps, residency.resident()) == ([], ["a", "b"], ["b"])


class Failing(Model):
    """A model that runs out of device memory on its way in."""

    def to(self, device: torch.device) -> None:
        super().to(device)
        if device.type != "cpu":
            raise torch.OutOfMemoryError("no room")


def test_a_model_that_fails_to_arrive_goes_back_to_host_memory_and_the_others_stay_counted():
    moves: list[tuple[str, str]] = []
    residency = Residency(torch.device("meta"))
    residency.add("a", Model("a", moves))
    residency.add("big", Failing("big", moves))
    for name in ("a", "big"):
        residency.park(name, 1)
    residency.keep(1, ["a", "big"])
    moves.clear()
    with pytest.raises(torch.OutOfMemoryError):
        residency.bring("big")
    assert moves == [("a", "cpu"), ("big", "meta"), ("big", "cpu")]
    assert residency.resident() == []  # a left before big failed: nothing is on the device
    residency.bring("a")
    assert residency.resident() == ["a"]
