"""Which queued job runs next: the first in line, unless a later one can start without swapping models.

With several models on one device (``IMGEDIT_MODELS``), a run for a model that
is not on the device first waits for a swap (seconds for a large model). A job
whose model is on the device may therefore go ahead of one whose model is not,
but each job lets at most :data:`OVERTAKE_BOUND` later jobs go ahead of it; then
it runs next, swap or not. No job waits behind more than that many jobs that
arrived after it, so nothing starves whatever the mix of models. (Jobs fused into
one batch with the job chosen count as going ahead too.)
"""

from __future__ import annotations

from collections import deque

from imgedit.scheduling.jobs import Job

#: The most later jobs that may go ahead of a queued job.
OVERTAKE_BOUND = 4


def take_next(waiting: deque[Job], bound: int = OVERTAKE_BOUND) -> Job:
    """Remove and return the job to run next from ``waiting`` (not empty): the first that is ready (its model is
    on the device) or has been overtaken ``bound`` times, else the first; those it goes ahead of count it."""
    chosen = next((job for job in waiting if job.overtaken >= bound or _ready(job)), waiting[0])
    for job in waiting:
        if job is chosen:
            break
        job.overtaken += 1
    waiting.remove(chosen)
    return chosen


def take_fusable(waiting: deque[Job], first: Job, most: int, bound: int = OVERTAKE_BOUND) -> list[Job]:
    """Remove and return up to ``most`` queued jobs that can join ``first`` in one batched call (the same fusion
    key). Each goes ahead of the jobs before it, which count it as :func:`take_next` counts; a job is left in the
    queue rather than take one of them past ``bound``."""
    if first.fusion_key is None:
        return []
    taken: list[Job] = []
    ahead: list[Job] = []
    for job in waiting:
        if len(taken) == most:
            break
        if job.fusion_key == first.fusion_key and all(other.overtaken < bound for other in ahead):
            taken.append(job)
            for other in ahead:
                other.overtaken += 1
        else:
            ahead.append(job)
    for job in taken:
        waiting.remove(job)
    return taken


def _ready(job: Job) -> bool:
    return job.turn is None or job.turn.ready is None or job.turn.ready()
