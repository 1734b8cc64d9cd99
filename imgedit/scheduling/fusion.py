"""Batch fusion: queued single-image calls that differ only per request run as one batched call.

diffusers pipelines take lists of prompts, images and generators, so calls
whose every other argument is equal can share one forward pass per step.
Whether a family's calls may be fused at all is the family's to say
(:attr:`~imgedit.model.families.base.Family.fusable`); which calls match,
and how they are joined, is decided here, for every family alike. A fused
image matches its single run to within one level per pixel (batched
arithmetic adds in another order), so requests that name a seed are never
fused by the handler: the same seed always gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

from PIL import Image

from imgedit.model.call import PipelineCall

#: Arguments that may differ between calls fused into one batch; they become lists.
PER_REQUEST_ARGUMENTS = ("prompt", "negative_prompt", "image", "generator")


def fusion_key(call: PipelineCall) -> Hashable | None:
    """Calls with equal keys can run as one batch; None when ``call`` cannot be batched.

    Only single-image calls fuse, and only when every argument but the
    per-request ones (:data:`PER_REQUEST_ARGUMENTS`) is equal; images must have
    the same size. Masks and tensors are too costly to compare, so calls with
    them never fuse.
    """
    if type(call) is not PipelineCall or call.num_images != 1:  # a subclass does more than its arguments say
        return None
    parts: list[tuple[str, Hashable]] = []
    for name, value in sorted(call.kwargs.items()):
        if name == "image":
            if not isinstance(value, Image.Image):
                return None
            parts.append((name, value.size))
        elif name in PER_REQUEST_ARGUMENTS:
            parts.append((name, "given"))
        elif isinstance(value, str | int | float | bool | tuple):
            parts.append((name, value))
        else:
            return None
    return (id(call.pipeline), call.generated_size, call.cfg_until, call.cache, tuple(parts))


def fuse(calls: Sequence[PipelineCall]) -> PipelineCall:
    """One batched call making the images of ``calls`` (which share a :func:`fusion_key`), in order."""
    first = calls[0]
    kwargs = dict(first.kwargs)
    for name in PER_REQUEST_ARGUMENTS:
        if name in kwargs:
            values = [call.kwargs[name] for call in calls]
            # Each call has one generator list of one; the batch wants one list.
            kwargs[name] = [item for value in values for item in value] if name == "generator" else values
    return dataclasses.replace(first, kwargs=kwargs, num_images=len(calls))
