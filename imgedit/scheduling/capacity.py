"""How many requests one replica of the service should hold at once, for autoscalers and load balancers.

One number serves BentoCloud's ``traffic.concurrency`` and the per-pod target
of the Kubernetes autoscaler (``deploy/kubernetes``): the edits a replica can
work on at this moment, not the ones it could keep waiting. With BentoCloud's
external queue, a replica is sent no more than this many requests; the rest
wait in BentoCloud's queue, which feeds whichever replica frees up first and
is what the autoscaler counts to add replicas.
"""

from __future__ import annotations


def replica_concurrency(workers: int, max_queue: int, max_batch: int) -> int:
    """Requests one replica should be given at once: what its GPUs can run now, never what would get a 429.

    Each worker runs one pipeline call at a time. With ``max_batch`` above 1
    it fuses up to ``max_batch`` waiting requests into one call, so it needs
    that many in hand; but it never holds more than ``1 + max_queue`` (one
    running, ``max_queue`` waiting) without answering 429.

    Args:
        workers: BentoML workers in the replica (one per GPU).
        max_queue: ``IMGEDIT_MAX_QUEUE``, requests that may wait per worker.
        max_batch: ``IMGEDIT_MAX_BATCH``, requests fused into one call at most.

    Returns:
        ``workers * min(max_batch, 1 + max_queue)``: with the defaults (no
        fusion), one request per GPU.
    """
    if workers < 1 or max_queue < 0 or max_batch < 1:
        raise ValueError(f"no replica has workers={workers}, max_queue={max_queue}, max_batch={max_batch}")
    return workers * min(max_batch, 1 + max_queue)
