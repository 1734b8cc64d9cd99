"""Built-in tiny models: real diffusers pipelines with tiny random weights.

``tiny:qwen-image-edit-plus`` is the real ``QwenImageEditPlusPipeline`` with
every component (transformer, VAE, Qwen2.5-VL text encoder, tokenizer,
processor) built in code from a fixed seed: no download, under a second to
build, and a 64x64 edit in a fraction of a second on a CPU. Its pictures are
noise, but every code path of the real model runs, which makes it the model
for trying the server without a GPU and for the test suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# diffusers' from_pretrained finds how to load a component by looking up its
# loadable base classes (here ProcessorMixin) as attributes of the module named
# in model_index.json, so this module must expose it.
from transformers import ProcessorMixin, Qwen2VLProcessor  # noqa: F401

PREFIX = "tiny:"

#: Pixel area the tiny Qwen pipeline resizes references to (the real model uses
#: 1024x1024 for the VAE and 384x384 for the vision encoder).
TINY_REFERENCE_AREA = 64 * 64

_QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@dataclass(frozen=True)
class TinyModel:
    """A built tiny pipeline and the step count it defaults to."""

    pipeline: Any
    default_steps: int


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor, the only part that needs torchvision.

    Defined at module level so that a saved tiny pipeline names it in its
    ``model_index.json`` and loads back with ``from_pretrained``.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template)


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2-style byte-level BPE uses for the bytes 0..255.

    Printable Latin-1 bytes stand for themselves; the others are mapped, in
    order, to code points from 256 upwards.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    alphabet, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def build_qwen_image_edit_plus() -> TinyModel:
    """A ``QwenImageEditPlusPipeline`` with tiny random components (float32, CPU).

    The byte-level tokenizer has one token per byte plus Qwen's special tokens,
    so the real prompt template encodes to hundreds of tokens (the pipeline
    drops the first 64). The processor is built without a video processor, the
    only part of ``Qwen2VLProcessor`` that needs torchvision.

    Side effect: the pipeline module's reference-image areas are set to
    ``TINY_REFERENCE_AREA``; with the real 1024x1024 they would make every tiny
    call take tens of seconds. Only ever build a tiny model in a process that
    serves no real one.
    """
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus_module
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {symbol: index for index, symbol in enumerate(byte_level_alphabet())}
    for token in _QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        additional_special_tokens=list(_QWEN_SPECIAL_TOKENS),
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    token_id = tokenizer.convert_tokens_to_ids
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    text_encoder_config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [1, 1, 2]},
            "vocab_size": len(tokenizer),
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        hidden_size=16,
        vocab_size=len(tokenizer),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )

    def seeded(build: Callable[[], Any]) -> Any:
        torch.manual_seed(0)
        return build()

    text_encoder = seeded(lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config).eval())
    transformer = seeded(
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            axes_dims_rope=(8, 4, 4),
            zero_cond_t=True,
        )
    )
    vae = seeded(
        lambda: AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
    )
    pipeline = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer),
        transformer=transformer,
    )
    pipeline.set_progress_bar_config(disable=True)
    edit_plus_module.VAE_IMAGE_SIZE = TINY_REFERENCE_AREA
    edit_plus_module.CONDITION_IMAGE_SIZE = TINY_REFERENCE_AREA
    return TinyModel(pipeline=pipeline, default_steps=4)


TINY_MODELS: dict[str, Callable[[], TinyModel]] = {
    "qwen-image-edit-plus": build_qwen_image_edit_plus,
}


def is_tiny(model: str) -> bool:
    return model.startswith(PREFIX)


def build_tiny(model: str) -> TinyModel:
    """Build ``tiny:NAME``.

    Raises:
        KeyError: with the known names, when NAME is not one of them.
    """
    name = model[len(PREFIX) :]
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {model!r}; known: " + ", ".join(PREFIX + known for known in TINY_MODELS))
    return TINY_MODELS[name]()
