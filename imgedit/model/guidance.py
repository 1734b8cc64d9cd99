"""The denoiser's forward calls during one pipeline call: counted, guidance kept to the first steps, and
its branches split over two groups of ranks.

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

With ``IMGEDIT_CFG_PARALLEL`` the same seam runs only this rank's branch of
each guided step and swaps predictions with the other group
(:mod:`imgedit.model.branches`). Calls are counted once per logical call, by
the worker: the other group's unconditional calls when the swap brings them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from imgedit.model.branches import (
    BranchRanks,
    UnconditionalArguments,
    branch_ranks,
    prediction_of,
    run_half_batch,
    swap,
    swap_checkpoint,
    unconditional_cache_context,
    with_prediction,
)
from imgedit.model.events import denoiser_call
from imgedit.model.pipeline import Pipeline, denoiser


def guided_steps(cfg_until: float, steps: int) -> int:
    """How many of ``steps`` run guidance under ``IMGEDIT_CFG_UNTIL=cfg_until``: ``round(cfg_until * steps)``.

    Python's rounding (half to even), so 0.5 of 5 steps is 2; a small enough fraction guides no step at all.
    """
    return round(cfg_until * steps)


class _Seam:
    """Wraps the denoiser's ``forward`` for one pipeline call; told of each step's end.

    Args:
        model: the denoiser.
        cfg_until: the fraction of the steps that run guidance.
        total_steps: the steps the call runs.
        ranks: this rank's branch when guidance is split over two groups of ranks (None: not split).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg_until: float,
        total_steps: Callable[[], int],
        ranks: BranchRanks | None,
    ) -> None:
        self.model = model
        self.forward = model.forward
        self.cfg_until = cfg_until
        self.total_steps = total_steps
        self.ranks = ranks
        #: The ranks' agreement before each swap (see :mod:`imgedit.ranks.lockstep`).
        self.checkpoint = swap_checkpoint(model)
        self.step = 0
        self.calls_in_step = 0
        #: What the pipeline got from this step's conditional call.
        self.conditional: Any = None
        #: This rank's branch of the step, computed ahead (group 1 of a sequential split).
        self.branch: torch.Tensor | None = None
        #: The first guided step's conditional arguments, until group 1 learns the unconditional ones.
        self.first_arguments: dict[str, Any] | None = None
        self.unconditional: UnconditionalArguments | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        index = self.calls_in_step
        self.calls_in_step += 1
        ranks = self.ranks
        if ranks is not None and ranks.kind == "batched":
            return self._run(lambda: run_half_batch(self.forward, ranks, args, kwargs, self.checkpoint))
        guided = self.cfg_until >= 1 or self.step < guided_steps(self.cfg_until, self.total_steps())
        if index == 1 and not guided:
            return self.conditional  # the unconditional call of an unguided step: see the module's docstring
        if ranks is None or args or index > 1 or not guided:  # not split: a pipeline calling with positions is not
            output = self._run(lambda: self.forward(*args, **kwargs))
            if index == 0:
                self.conditional = output
            return output
        if index == 0:
            return self._conditional_call(ranks, kwargs)
        return self._unconditional_call(ranks, kwargs)

    def _conditional_call(self, ranks: BranchRanks, kwargs: dict[str, Any]) -> Any:
        if ranks.branch == 0 or self.unconditional is None:
            output = self._run(lambda: self.forward(**kwargs))
            if ranks.branch == 1:  # the first guided step: keep its arguments to learn from
                self.first_arguments = kwargs
            self.conditional = output
            return output
        arguments = self.unconditional.for_step(kwargs)
        with unconditional_cache_context(self.model):
            output = self.forward(**arguments)
        self.branch = prediction_of(output)
        # Filled with the conditional prediction in place when the branches are swapped.
        self.conditional = with_prediction(output, torch.empty_like(self.branch))
        return self.conditional

    def _unconditional_call(self, ranks: BranchRanks, kwargs: dict[str, Any]) -> Any:
        if ranks.branch == 0:
            own = prediction_of(self.conditional)
            denoiser_call()  # the other group ran this logical call
        elif self.branch is None:  # the first guided step: group 1 runs the unconditional call as it comes
            assert self.first_arguments is not None, "a conditional call came first"
            self.unconditional = UnconditionalArguments.learn(self.first_arguments, kwargs)
            self.first_arguments = None
            own = prediction_of(self.forward(**kwargs))
        else:
            own = self.branch
        self.checkpoint()  # group 1 may have just run a pass: if it failed, both groups leave here
        conditional, unconditional = swap(own, ranks.group)
        if ranks.branch == 1:
            prediction_of(self.conditional).copy_(conditional)
        return with_prediction(self.conditional, unconditional)

    def _run(self, forward: Callable[[], Any]) -> Any:
        output = forward()
        denoiser_call()
        return output

    def step_ended(self, step: int) -> None:
        self.step = step + 1
        self.calls_in_step = 0
        self.conditional = None
        self.branch = None


@contextlib.contextmanager
def denoiser_seam(
    pipeline: Pipeline, cfg_until: float, total_steps: Callable[[], int]
) -> Iterator[Callable[[int], None]]:
    """For the length of one call of ``pipeline``: count its denoiser calls, keep guidance to the first steps,
    and compute only this rank's branch of guidance when it is split (:mod:`imgedit.model.branches`).

    Args:
        cfg_until: the fraction of the steps that run guidance (1: all).
        total_steps: the steps the call runs (asked when first needed: the pipeline knows once it started).

    Yields:
        What the pipeline's step callback must call with each finished step's index (from 0).
    """
    try:
        model = denoiser(pipeline)
    except ValueError:  # nothing to count or spare
        yield lambda step: None
        return
    own = model.__dict__.get("forward")  # an instance attribute: diffusers' hooks put their own wrapper there
    seam = _Seam(model, cfg_until, total_steps, branch_ranks(model))
    model.forward = seam
    try:
        yield seam.step_ended
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own
