"""Classifier-free guidance over two groups of ranks (``IMGEDIT_CFG_PARALLEL``): each computes one branch.

Guidance needs two predictions per step, the conditional and the
unconditional one, which do not depend on each other. With
``IMGEDIT_CFG_PARALLEL`` the ranks of an edit form two equal groups (each of
``IMGEDIT_ULYSSES_DEGREE`` ranks): group 0 computes the conditional branch,
group 1 the unconditional one, at the same time, and each rank swaps its
prediction with its twin in the other group (one all-gather of two ranks).
Every rank then holds both and the pipeline goes on exactly as on one rank.

How a branch is split off depends on how the family's pipelines run guidance
(:attr:`Family.guidance <imgedit.model.families.base.Family.guidance>`):

``batched``
    One denoiser call per step on the branches stacked along the batch
    dimension. Each group runs its half of the batch (every tensor argument
    whose first dimension is the batch's is cut the same way) and the halves
    are put back together.
``sequential``
    Two calls per step, conditional first. The pipeline's loop is the same on
    every rank, so group 1 needs the unconditional call's arguments when the
    conditional call is made. It learns them in the first guided step: the
    arguments whose value differs between the two calls (the prompt's
    embeddings, its mask and positions) belong to the unconditional branch and
    stay the same from step to step; the others (latents, timestep) are the
    step's own and equal in both calls. In that first step group 1 runs both
    calls; from then on it runs the unconditional branch in place of the
    conditional call, and hands the pipeline a buffer that the swap fills with
    the conditional prediction in place (the pipelines keep a view of what the
    conditional call returned, and read it only after the unconditional one).

Both rest on facts about diffusers' pipelines that the tests check on the real
classes: their denoiser calls take keyword arguments, and the branch arguments
are the same at every step.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

#: How a family's pipelines run guidance; see :attr:`imgedit.model.families.base.Family.guidance`.
GuidanceKind = Literal["none", "sequential", "batched"]


@dataclass(frozen=True)
class BranchRanks:
    """This rank's place when guidance is split over two groups of ranks.

    Attributes:
        branch: 0 (conditional) or 1 (unconditional).
        group: the process group of this rank and its twin in the other group, branch 0 first.
        kind: how the pipelines run guidance (``sequential`` or ``batched``).
    """

    branch: int
    group: Any
    kind: GuidanceKind


_split: weakref.WeakKeyDictionary[torch.nn.Module, BranchRanks] = weakref.WeakKeyDictionary()


def split_branches(model: torch.nn.Module, ranks: BranchRanks) -> None:
    """Have every pipeline call that runs ``model`` (a denoiser) compute only this rank's branch of guidance."""
    _split[model] = ranks


def branch_ranks(model: torch.nn.Module) -> BranchRanks | None:
    """How guidance is split for ``model`` (None: each rank computes both branches)."""
    return _split.get(model)


_checkpoints: weakref.WeakKeyDictionary[torch.nn.Module, Callable[[], None]] = weakref.WeakKeyDictionary()


def checkpoint_swaps(model: torch.nn.Module, checkpoint: Callable[[], None]) -> None:
    """Have ``checkpoint`` run before every swap of ``model``'s branches (the ranks agree there, see
    :mod:`imgedit.ranks.lockstep`): a rank whose pass failed must not leave its twin waiting in the swap."""
    _checkpoints[model] = checkpoint


def swap_checkpoint(model: torch.nn.Module) -> Callable[[], None]:
    """What runs before each swap of ``model``'s branches (nothing, outside a group of ranks)."""
    return _checkpoints.get(model, _nothing)


def _nothing() -> None:
    return None


def swap(prediction: torch.Tensor, group: Any) -> list[torch.Tensor]:
    """Both branches' predictions, branch 0 first: this rank's ``prediction`` gathered with its twin's."""
    gathered = [torch.empty_like(prediction) for _ in range(2)]
    dist.all_gather(gathered, prediction.contiguous(), group=group)
    return gathered


def prediction_of(output: Any) -> torch.Tensor:
    """The predicted noise in what a denoiser's forward returned: a tensor, a tuple, or a ``BaseOutput``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def with_prediction(output: Any, prediction: torch.Tensor) -> Any:
    """``output`` in its own shape with ``prediction`` in place of its predicted noise."""
    if isinstance(output, torch.Tensor):
        return prediction
    if isinstance(output, tuple):
        return (prediction, *output[1:])
    return type(output)(sample=prediction)


# -- batched guidance -------------------------------------------------------------------------------


def run_half_batch(
    forward: Any, ranks: BranchRanks, args: tuple[Any, ...], kwargs: dict[str, Any], checkpoint: Callable[[], None]
) -> Any:
    """Run this rank's half of a batched call of ``forward`` and return the whole batch's output.

    The batch is that of the first tensor argument (the latents); a batch of
    one is run whole on every rank. ``checkpoint`` runs between the half and the swap.
    """
    batch = _batch_size(args, kwargs)
    if batch < 2:
        return forward(*args, **kwargs)
    sizes = [len(part) for part in torch.arange(batch).tensor_split(2)]
    start = sum(sizes[: ranks.branch])
    cut = slice(start, start + sizes[ranks.branch])
    output = forward(*_cut(args, batch, cut), **_cut(kwargs, batch, cut))
    half = prediction_of(output)
    # The halves may differ by one (three branches on two ranks): gathered at the larger size, then trimmed.
    padded = half.new_zeros((max(sizes), *half.shape[1:]))
    padded[: half.shape[0]] = half
    checkpoint()
    gathered = swap(padded, ranks.group)
    whole = torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)])
    return with_prediction(output, whole)


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    first = next((value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)), None)
    return first.shape[0] if first is not None and first.dim() > 0 else 0


def _cut(value: Any, batch: int, cut: slice) -> Any:
    """``value`` with every tensor whose first dimension is ``batch`` cut to ``cut`` (in tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        return value[cut] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {key: _cut(item, batch, cut) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cut(item, batch, cut) for item in value)
    return value


# -- sequential guidance ----------------------------------------------------------------------------


@dataclass
class UnconditionalArguments:
    """The unconditional call's arguments as group 1 learnt them in the first guided step.

    Attributes:
        recorded: the unconditional call's keyword arguments in that step.
        shared: the names whose value was the same in both calls: the step's own, taken from each conditional call.
    """

    recorded: dict[str, Any]
    shared: frozenset[str]

    @classmethod
    def learn(cls, conditional: dict[str, Any], unconditional: dict[str, Any]) -> UnconditionalArguments:
        shared = frozenset(
            name for name in unconditional if name in conditional and _same(conditional[name], unconditional[name])
        )
        return cls(recorded=dict(unconditional), shared=shared)

    def for_step(self, conditional: dict[str, Any]) -> dict[str, Any]:
        """The unconditional call's arguments in the step whose conditional call takes ``conditional``."""
        return {**self.recorded, **{name: conditional[name] for name in self.shared}}


def _same(first: Any, second: Any) -> bool:
    """Whether two arguments hold the same value (tensors by content)."""
    if first is second:
        return True
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (
            isinstance(first, torch.Tensor)
            and isinstance(second, torch.Tensor)
            and first.shape == second.shape
            and first.dtype == second.dtype
            and bool(torch.equal(first, second))
        )
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[key], second[key]) for key in first)
    if isinstance(first, list | tuple) and isinstance(second, list | tuple):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second, strict=True))
    try:
        return bool(first == second)
    except Exception:  # a value without a plain equality
        return False


@contextlib.contextmanager
def unconditional_cache_context(model: torch.nn.Module) -> Iterator[None]:
    """Run the unconditional branch in the denoiser's ``uncond`` cache context, where its cached state lives.

    The pipeline opened ``cond`` around the conditional call that group 1 answers
    with the other branch; a step cache (``IMGEDIT_CACHE``) keeps its state per context.
    """
    cache_context = getattr(model, "cache_context", None)
    if cache_context is None:
        yield
        return
    with cache_context("uncond"):
        yield
