"""Several ranks per edit: diffusers' context parallelism (Ulysses, ring) and tensor parallelism.

diffusers carries the machinery itself; this module only refuses what cannot
work with the other settings and applies it to a loaded pipeline. Every
rank holds the whole pipeline and runs every pipeline call with the same
arguments; only the denoiser (the transformer) is split:

* ``IMGEDIT_ULYSSES_DEGREE``: Ulysses attention. Each rank keeps a slice of the
  token sequence and swaps it for a slice of the attention heads around each
  attention (all-to-all). ``ulysses_anything`` is always on, because a prompt
  can have any number of tokens: it pads heads and sequence slices that do not
  divide evenly. Every rank holds all weights: faster, not smaller.
* ``IMGEDIT_RING_DEGREE``: ring attention. Key and value slices travel round
  the ranks (``ring_anything`` on for the same reason). It needs an attention
  kernel that returns the log-sum-exp, which none on the CPU does.
* ``IMGEDIT_TP_DEGREE``: tensor parallelism. The transformer's linear layers
  are sharded while ``from_pretrained`` reads them, so each rank holds a
  fraction of them: for a transformer larger than one GPU. diffusers runs it
  on CUDA only.
* ``IMGEDIT_CFG_PARALLEL``: the two branches of classifier-free guidance on two
  groups of ranks, each group split as above by Ulysses or ring attention
  (:mod:`imgedit.model.branches`): twice the ranks, nearly half the time per step.

diffusers 0.42 combines neither ring with Ulysses for prompts of any length
(its "anything" modes need one of them alone) nor context with tensor
parallelism, so one degree at most is above 1 (besides ``IMGEDIT_CFG_PARALLEL``). On the CPU the ranks talk over
gloo, which needs two shims, both installed by :func:`enable_parallelism`:
diffusers derives each rank's device from ``rank % torch.accelerator.device_count()``,
which is 0 without an accelerator, so that count is 1 while it runs; and
gloo cannot gather slices of unequal sizes, which a degree that does not
divide the sequence makes (3 ranks, 127 tokens), so they are padded to one size.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh

from imgedit.errors import one_line
from imgedit.model.acceleration import AccelerationOptions
from imgedit.model.branches import BranchRanks, GuidanceKind, split_branches
from imgedit.model.pipeline import Pipeline, denoiser

#: Attention backends (of IMGEDIT_ATTENTION_BACKEND's) that diffusers 0.42 can split for context parallelism.
CONTEXT_PARALLEL_BACKENDS = frozenset({"native", "_native_cudnn", "_native_flash", "flash", "sage"})
#: Those that also return the log-sum-exp that ring attention merges its partial results with.
RING_BACKENDS = frozenset({"_native_cudnn", "_native_flash", "flash", "sage"})


class ParallelError(Exception):
    """The parallel settings cannot work here; the message is one line naming the variable."""


@dataclass(frozen=True)
class RankLayout:
    """How one edit is split over ranks.

    Attributes:
        ulysses: ``IMGEDIT_ULYSSES_DEGREE``.
        ring: ``IMGEDIT_RING_DEGREE``.
        tp: ``IMGEDIT_TP_DEGREE``.
        cfg: 2 with ``IMGEDIT_CFG_PARALLEL`` (the two branches of guidance on two groups of ranks), else 1.
    """

    ulysses: int = 1
    ring: int = 1
    tp: int = 1
    cfg: int = 1

    @property
    def ranks(self) -> int:
        """Processes (one device each) that run every pipeline call together."""
        return self.cfg * self.ulysses * self.ring * self.tp

    @property
    def context(self) -> bool:
        return self.ulysses * self.ring > 1

    @property
    def variable(self) -> str:
        """The setting that asks for several ranks (the first of them, when several do)."""
        for name, degree in (("ULYSSES", self.ulysses), ("RING", self.ring), ("TP", self.tp)):
            if degree > 1:
                return f"IMGEDIT_{name}_DEGREE"
        return "IMGEDIT_CFG_PARALLEL" if self.cfg > 1 else "IMGEDIT_ULYSSES_DEGREE"

    def describe(self) -> str:
        """``cfg=2,ulysses=2``, for logs and the model-info metric (empty with one rank)."""
        degrees = (("cfg", self.cfg), ("ulysses", self.ulysses), ("ring", self.ring), ("tp", self.tp))
        return ",".join(f"{name}={degree}" for name, degree in degrees if degree > 1)


def check_layout(
    layout: RankLayout,
    device: torch.device,
    gpus: int | None,
    *,
    workers: int | None = None,
    device_map: str = "none",
    offload: str = "none",
    acceleration: AccelerationOptions | None = None,
    fixed_loras: bool = False,
) -> None:
    """What can be checked before loading: combinations, the device, the number of GPUs.

    Args:
        device: the device the ranks run on (each its own, of the same type).
        gpus: CUDA devices visible to the server (ignored on the CPU); None in a worker,
            which sees only its own.
        workers: ``IMGEDIT_WORKERS``, when set.
        device_map: ``IMGEDIT_DEVICE_MAP``.
        offload: ``IMGEDIT_OFFLOAD``.
        acceleration: the attention backend and cache (None: neither is set).
        fixed_loras: whether ``IMGEDIT_LORA`` names LoRAs for every run.

    Raises:
        ParallelError: naming the variable at fault.
    """
    if layout.ranks == 1:
        return
    acceleration = acceleration or AccelerationOptions()
    variable = layout.variable
    if layout.ulysses > 1 and layout.ring > 1:
        raise ParallelError(
            "IMGEDIT_RING_DEGREE: ring and Ulysses attention together need sequence lengths that divide by both "
            "degrees, which prompts of any length do not have; set only one of IMGEDIT_RING_DEGREE and "
            "IMGEDIT_ULYSSES_DEGREE"
        )
    if layout.tp > 1 and layout.cfg > 1:
        raise ParallelError(
            "IMGEDIT_CFG_PARALLEL: the two branches of guidance run on groups of context-parallel ranks, "
            "which diffusers cannot combine with IMGEDIT_TP_DEGREE; choose one"
        )
    if layout.tp > 1 and layout.context:
        raise ParallelError(
            "IMGEDIT_TP_DEGREE: diffusers cannot combine tensor parallelism with context parallelism "
            "(IMGEDIT_ULYSSES_DEGREE, IMGEDIT_RING_DEGREE); choose one"
        )
    if device.type == "cpu":
        if layout.ring > 1:
            raise ParallelError(
                "IMGEDIT_RING_DEGREE: ring attention needs a CUDA attention kernel that returns the log-sum-exp, "
                "and this device is cpu; on the CPU use IMGEDIT_ULYSSES_DEGREE"
            )
        if layout.tp > 1:
            raise ParallelError(
                "IMGEDIT_TP_DEGREE: diffusers shards weights on CUDA devices only, and this device is cpu"
            )
    elif gpus is not None:
        if gpus % layout.ranks:
            raise ParallelError(f"{variable}: {layout.ranks} ranks per edit do not divide the {gpus} visible GPUs")
        if workers is not None and workers * layout.ranks > gpus:
            raise ParallelError(
                f"IMGEDIT_WORKERS: {workers} workers of {layout.ranks} ranks need "
                f"{workers * layout.ranks} GPUs, and {gpus} are visible"
            )
    if device_map != "none":
        raise ParallelError(f"IMGEDIT_DEVICE_MAP: a model spread with device_map cannot also run on {variable} ranks")
    if offload != "none":
        raise ParallelError(f"IMGEDIT_OFFLOAD: offloading cannot be combined with {variable}")
    if layout.context:
        backend = acceleration.attention_backend
        if backend is not None and backend not in CONTEXT_PARALLEL_BACKENDS:
            raise ParallelError(
                f"IMGEDIT_ATTENTION_BACKEND: {backend!r} cannot be split for context parallelism; "
                f"use one of {', '.join(sorted(CONTEXT_PARALLEL_BACKENDS))}"
            )
        if layout.ring > 1 and backend not in RING_BACKENDS:
            raise ParallelError(
                "IMGEDIT_RING_DEGREE: ring attention needs an attention backend that returns the log-sum-exp; "
                f"set IMGEDIT_ATTENTION_BACKEND to one of {', '.join(sorted(RING_BACKENDS))}"
            )
        if acceleration.cache == "first_block":
            raise ParallelError(
                "IMGEDIT_CACHE: 'first_block' decides on each rank's slice of the sequence, so ranks would skip "
                "different steps; use 'taylorseer' or one rank"
            )
    if layout.tp > 1 and fixed_loras:
        raise ParallelError(
            "IMGEDIT_LORA: diffusers' tensor parallelism shards the base layers only, so adapters would give "
            "wrong pictures; serve LoRAs without IMGEDIT_TP_DEGREE"
        )


def check_model(pipeline: Pipeline, layout: RankLayout) -> None:
    """Refuse a loaded model the layout does not suit: no parallel plan, too few attention heads.

    Raises:
        ParallelError: naming the variable.
    """
    if layout.ranks == 1:
        return
    model = denoiser(pipeline)
    name = type(model).__name__
    heads = getattr(model.config, "num_attention_heads", None)
    if layout.context and getattr(model, "_cp_plan", None) is None:
        raise ParallelError(
            f"{layout.variable}: {name} ({type(pipeline).__name__}) has no context-parallel plan in "
            f"diffusers {_diffusers_version()}; only transformer families (Qwen-Image, FLUX.1, FLUX.2) have one"
        )
    if layout.ulysses > 1 and isinstance(heads, int) and layout.ulysses > heads:
        raise ParallelError(
            f"IMGEDIT_ULYSSES_DEGREE: {layout.ulysses} ranks for the {heads} attention heads of {name} "
            "would leave a rank without a head"
        )
    if layout.tp > 1 and getattr(model, "_tp_plan", None) is None:
        raise ParallelError(
            f"IMGEDIT_TP_DEGREE: {name} ({type(pipeline).__name__}) has no tensor-parallel plan in "
            f"diffusers {_diffusers_version()}; only transformer families (Qwen-Image, FLUX.1, FLUX.2) have one"
        )
    if layout.tp > 1 and isinstance(heads, int) and heads % layout.tp:
        raise ParallelError(f"IMGEDIT_TP_DEGREE: {layout.tp} does not divide the {heads} attention heads of {name}")


def enable_parallelism(pipeline: Pipeline, layout: RankLayout, device: torch.device, guidance: GuidanceKind) -> None:
    """Split the pipeline's denoiser over the ranks of the (initialised) default process group.

    Context parallelism is applied here; tensor parallelism too for a model
    built in memory (a tiny one), while :func:`pretrained_components` shards a
    checkpoint as it is read. With ``IMGEDIT_CFG_PARALLEL`` the ranks form a
    mesh of two groups (``cfg``) of context-parallel ranks (``ring`` x
    ``ulysses``): ranks ``0..n-1`` run the conditional branch, ``n..2n-1`` the
    unconditional one, and rank ``i`` swaps its prediction with rank ``n + i``.

    Args:
        guidance: how the family's pipelines run guidance (:mod:`imgedit.model.branches`).

    Raises:
        ParallelError: ``IMGEDIT_CFG_PARALLEL`` for a family without guidance, or diffusers refused the split.
    """
    from diffusers import ContextParallelConfig, TensorParallelConfig

    model = denoiser(pipeline)
    mesh = None
    if layout.cfg > 1:
        if guidance == "none":
            raise ParallelError(
                f"IMGEDIT_CFG_PARALLEL: {type(pipeline).__name__} runs no classifier-free guidance, so there is no "
                "second branch to run on other ranks; unset IMGEDIT_CFG_PARALLEL"
            )
        mesh = init_device_mesh(
            device.type, (layout.cfg, layout.ring, layout.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
        )
        split_branches(model, BranchRanks(mesh.get_local_rank("cfg"), mesh.get_group("cfg"), guidance))
    if layout.context:
        config: Any = ContextParallelConfig(
            ulysses_degree=layout.ulysses,
            ring_degree=layout.ring,
            ulysses_anything=layout.ulysses > 1,
            ring_anything=layout.ring > 1,
            mesh=mesh,
        )
    elif layout.tp > 1 and getattr(model, "_parallel_config", None) is None:
        config = TensorParallelConfig(tp_degree=layout.tp)
    else:
        return
    if device.type == "cpu":
        _gather_unequal_slices_on_gloo()
    try:
        with _one_device_per_cpu_rank(device):
            model.enable_parallelism(config=config)
    except ValueError as error:  # e.g. an attention backend chosen with DIFFUSERS_ATTN_BACKEND that it cannot split
        raise ParallelError(f"{layout.variable}: {one_line(error)}") from None


@contextlib.contextmanager
def _one_device_per_cpu_rank(device: torch.device) -> Iterator[None]:
    """On the CPU, make ``torch.accelerator.device_count()`` 1 while diffusers derives each rank's device from it."""
    if device.type != "cpu":
        yield
        return
    counted = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = counted


def _gather_unequal_slices_on_gloo() -> None:
    """Let ``torch.distributed.all_gather`` take slices of different sizes on gloo, as it does on NCCL.

    With ``ulysses_anything``, a sequence that the degree does not divide (3
    ranks for 127 tokens) leaves the ranks with slices of 43, 42 and 42
    tokens, which diffusers gathers with one ``all_gather`` into outputs of
    those sizes. NCCL gathers unequal tensors (it falls back to broadcasts);
    gloo refuses them ("invalid tensor size"). Here each slice is padded to
    the largest, gathered, and cut back. Tensors of one size take the
    original path; installing it twice does nothing.
    """
    import torch.distributed as dist

    gather = dist.all_gather
    if getattr(gather, "pads_unequal_slices", False):
        return

    def all_gather(
        tensor_list: list[torch.Tensor], tensor: torch.Tensor, group: Any = None, async_op: Any = False
    ) -> Any:
        sizes = {output.numel() for output in tensor_list}
        if async_op or len(sizes) <= 1 or dist.get_backend(group) != "gloo":
            return gather(tensor_list, tensor, group=group, async_op=async_op)
        padded = torch.zeros(max(sizes), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.numel()] = tensor.reshape(-1)
        slices = [torch.empty_like(padded) for _ in tensor_list]
        gather(slices, padded, group=group)
        for output, gathered in zip(tensor_list, slices, strict=True):
            output.copy_(gathered[: output.numel()].view(output.shape))
        return None

    all_gather.pads_unequal_slices = True  # type: ignore[attr-defined]  # marks the wrapper, see above
    dist.all_gather = all_gather


def pretrained_components(
    location: str, revision: str | None, dtype: torch.dtype, layout: RankLayout
) -> dict[str, Any]:
    """Components to pass to ``DiffusionPipeline.from_pretrained``: the transformer, sharded as it is read, with TP.

    Args:
        location: a local pipeline directory or a hub repo id.

    Raises:
        ParallelError: the pipeline has no transformer that diffusers can shard this way.
    """
    if layout.tp == 1:
        return {}
    import diffusers

    index = _model_index(location, revision)
    entry = index.get("transformer")
    if not (isinstance(entry, list) and len(entry) == 2 and hasattr(diffusers, str(entry[1]))):
        raise ParallelError(
            f"IMGEDIT_TP_DEGREE: {index.get('_class_name', 'this pipeline')} has no diffusers transformer to shard"
        )
    model_class = getattr(diffusers, entry[1])
    if getattr(model_class, "_tp_plan", None) is None:
        raise ParallelError(
            f"IMGEDIT_TP_DEGREE: {entry[1]} has no tensor-parallel plan in diffusers {_diffusers_version()}"
        )
    options: dict[str, Any] = {"subfolder": "transformer", "dtype": dtype}
    if revision is not None:
        options["revision"] = revision
    try:
        transformer = model_class.from_pretrained(
            location, parallel_config=diffusers.TensorParallelConfig(tp_degree=layout.tp), **options
        )
    except ValueError as error:  # diffusers' own refusals: heads, uneven blocks, a format it cannot slice
        raise ParallelError(f"IMGEDIT_TP_DEGREE: {one_line(error)}") from None
    return {"transformer": transformer}


def _model_index(location: str, revision: str | None) -> dict[str, Any]:
    path = Path(location) / "model_index.json"
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(location, "model_index.json", revision=revision))
    return json.loads(path.read_text())


def _diffusers_version() -> str:
    return importlib.metadata.version("diffusers")
