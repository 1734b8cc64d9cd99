import itertools
import random
from collections import deque
from types import SimpleNamespace

from imgedit.scheduling.order import OVERTAKE_BOUND, take_next


def job(model: str, resident: set[str], number: int) -> SimpleNamespace:
    return SimpleNamespace(
        number=number, model=model, overtaken=0, turn=SimpleNamespace(ready=lambda: model in resident)
    )


def test_a_job_whose_model_is_on_the_device_goes_ahead_and_those_it_passes_count_it():
    resident = {"b"}
    waiting = deque([job("a", resident, 0), job("c", resident, 1), job("b", resident, 2), job("b", resident, 3)])
    assert take_next(waiting).number == 2  # type: ignore[arg-type]
    assert [(each.number, each.overtaken) for each in waiting] == [(0, 1), (1, 1), (3, 0)]


def test_with_no_job_ready_the_first_runs():
    resident: set[str] = set()
    waiting = deque([job("a", resident, 0), job("c", resident, 1)])
    assert take_next(waiting).number == 0  # type: ignore[arg-type]


def test_a_job_overtaken_bound_times_runs_next_even_with_others_ready():
    resident = {"b"}
    waiting = deque([job("a", resident, 0)] + [job("b", resident, n) for n in range(1, 10)])
    order = [take_next(waiting).number for _ in range(OVERTAKE_BOUND + 1)]  # type: ignore[arg-type]
    assert order == [*range(1, OVERTAKE_BOUND + 1), 0]


def test_no_job_waits_behind_more_than_the_bound_of_later_jobs_whatever_the_mix():
    """A device with room for one of three models, jobs arriving in a random mix while the queue stays full: each
    job runs after at most OVERTAKE_BOUND jobs that arrived after it, and swaps are fewer than strict arrival order
    would make."""
    chooser = random.Random(20261206)
    resident = {"a"}
    waiting: deque[SimpleNamespace] = deque()
    started: list[SimpleNamespace] = []
    swaps = 0
    for number in range(2000):
        waiting.append(job(chooser.choice("aabc"), resident, number))
        if len(waiting) < 6:
            continue
        chosen = take_next(waiting)  # type: ignore[arg-type]
        if chosen.model not in resident:
            resident.clear()
            resident.add(chosen.model)
            swaps += 1
        started.append(chosen)
    for position, each in enumerate(started):
        later_before = sum(1 for other in started[:position] if other.number > each.number)
        assert later_before <= OVERTAKE_BOUND
        assert each.overtaken <= OVERTAKE_BOUND
    arrival = sorted(started, key=lambda each: each.number)
    in_order_swaps = sum(1 for before, after in itertools.pairwise(arrival) if before.model != after.model)
    assert swaps < in_order_swaps


def fusable(key: str, number: int) -> SimpleNamespace:
    return SimpleNamespace(number=number, fusion_key=key, overtaken=0, turn=None)


def test_jobs_fused_into_a_batch_count_as_going_ahead_and_never_past_the_bound():
    from imgedit.scheduling.order import take_fusable

    first = fusable("x", 0)
    waiting = deque([fusable("y", 1), fusable("x", 2), fusable("z", 3), fusable("x", 4), fusable("x", 5)])
    taken = take_fusable(waiting, first, 2)  # type: ignore[arg-type]
    assert [job.number for job in taken] == [2, 4]
    assert [(job.number, job.overtaken) for job in waiting] == [(1, 2), (3, 1), (5, 0)]
    waiting[0].overtaken = OVERTAKE_BOUND  # job 1 may be passed no more: nothing behind it joins
    assert take_fusable(waiting, first, 2) == []  # type: ignore[arg-type]
    assert [job.number for job in waiting] == [1, 3, 5]
