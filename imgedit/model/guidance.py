"""The denoiser's forward calls during one pipeline call: counted, and guidance kept to the first steps.

Classifier-free guidance costs a second denoiser call per step: the
conditional prediction, then the unconditional one, combined as
``uncond + scale * (cond - uncond)``. Late in the schedule the image is
mostly settled and guidance changes little, so ``IMGEDIT_CFG_UNTIL`` runs it
for the first ``round(fraction * steps)`` steps only.

The pipelines decide once per call whether guidance runs, so the steps after
those answer the unconditional call with the conditional prediction itself,
without running the denoiser: the pipeline's combination then gives the
conditional prediction exactly (``cond + scale * 0``; Qwen's rescaling by the
ratio of two equal norms is a factor of 1), which is what a step without
guidance computes. This holds for families whose pipelines make the two calls
one after the other, conditional first (:attr:`Family.guidance
<imgedit.model.families.base.Family.guidance>` is ``"sequential"``); every rank
of an edit does the same, so they stay in step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from imgedit.model.pipeline import Pipeline

#: Called once for every forward call the denoiser really runs (set in the worker, not in the extra ranks).
_observer: Callable[[], None] | None = None


def observe_denoiser_calls(observer: Callable[[], None] | None) -> None:
    """Have ``observer`` called for every denoiser forward call this process runs (None: stop).

    The worker counts them for ``imgedit_denoiser_calls_total``; the extra ranks
    of an edit run the same calls and do not, so each logical call counts once.
    """
    global _observer
    _observer = observer


def guided_steps(cfg_until: float, steps: int) -> int:
    """How many of ``steps`` run guidance under ``IMGEDIT_CFG_UNTIL=cfg_until``: ``round(cfg_until * steps)``.

    Python's rounding (half to even), so 0.5 of 5 steps is 2; a small enough fraction guides no step at all.
    """
    return round(cfg_until * steps)


class _Seam:
    """Wraps the denoiser's ``forward`` for one pipeline call; told of each step's end."""

    def __init__(self, forward: Callable[..., Any], cfg_until: float, total_steps: Callable[[], int]) -> None:
        self.forward = forward
        self.cfg_until = cfg_until
        self.total_steps = total_steps
        self.step = 0
        self.calls_in_step = 0
        self.conditional: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        second = self.calls_in_step == 1
        self.calls_in_step += 1
        if second and self.cfg_until < 1 and self.step >= guided_steps(self.cfg_until, self.total_steps()):
            return self.conditional  # the unconditional call of an unguided step: see the module's docstring
        output = self.forward(*args, **kwargs)
        if _observer is not None:
            _observer()
        if self.calls_in_step == 1:
            self.conditional = output
        return output

    def step_ended(self, step: int) -> None:
        self.step = step + 1
        self.calls_in_step = 0
        self.conditional = None


@contextlib.contextmanager
def denoiser_seam(
    pipeline: Pipeline, cfg_until: float, total_steps: Callable[[], int]
) -> Iterator[Callable[[int], None]]:
    """For the length of one call of ``pipeline``: count its denoiser calls and keep guidance to the first steps.

    Args:
        cfg_until: the fraction of the steps that run guidance (1: all).
        total_steps: the steps the call runs (asked when first needed: the pipeline knows once it started).

    Yields:
        What the pipeline's step callback must call with each finished step's index (from 0).
    """
    model = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    if model is None:  # nothing to count or spare
        yield lambda step: None
        return
    own = model.__dict__.get("forward")  # an instance attribute: diffusers' hooks put their own wrapper there
    seam = _Seam(model.forward, cfg_until, total_steps)
    model.forward = seam
    try:
        yield seam.step_ended
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own
