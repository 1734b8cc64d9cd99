"""Tiny Qwen-Image-Edit pipelines: ``tiny:qwen-image-edit-plus``, ``tiny:qwen-image-edit`` and its inpainting twin.

They share one set of tiny components: a byte-level tokenizer, a Qwen2.5-VL
text encoder 16 wide, a two-layer transformer (``zero_cond_t=True``, as in
2511) and a narrow VAE.

The real pipelines resize references to about 1 MP whatever the output size,
which would make every tiny call take seconds. Building a tiny Qwen model
therefore shrinks that area to ``TINY_REFERENCE_AREA`` in the pipelines'
modules: only ever build one in a process that serves no real model.
"""

from __future__ import annotations

from typing import Any

# diffusers' from_pretrained finds how to load a component by looking up its
# loadable base classes (here ProcessorMixin) as attributes of the module named
# in model_index.json, so this module must expose it.
from transformers import ProcessorMixin, Qwen2VLProcessor  # noqa: F401

from imgedit.model.tiny import TinyModel, finish, seeded
from imgedit.model.tiny.tokenizers import qwen_tokenizer

#: Pixel area the tiny multi-image pipeline resizes references to (the real
#: model uses 1024x1024 for the VAE and 384x384 for the vision encoder).
TINY_REFERENCE_AREA = 64 * 64


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor, the only part that needs torchvision.

    Defined at module level so that a saved tiny pipeline names it in its
    ``model_index.json`` and loads back with ``from_pretrained``.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template)


def _components() -> dict[str, Any]:
    """Tiny components of every Qwen-Image-Edit pipeline."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = qwen_tokenizer()
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
        # Top-level copies of the text model's sizes, which the tied embeddings read; transformers hides
        # configuration keywords in **kwargs, so mypy does not know them.
        hidden_size=16,  # type: ignore[call-arg]  # see above
        vocab_size=len(tokenizer),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": seeded(lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config).eval()),
        "tokenizer": tokenizer,
        "processor": ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer),
        "transformer": seeded(
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
        ),
        "vae": seeded(
            lambda: AutoencoderKLQwenImage(
                base_dim=8,
                z_dim=4,
                dim_mult=[1, 2, 4],
                num_res_blocks=1,
                temperal_downsample=[False, True],
                latents_mean=[0.0] * 4,
                latents_std=[1.0] * 4,
            )
        ),
    }


def _shrink_reference_area() -> None:
    """Make the Qwen edit pipelines resize references to ``TINY_REFERENCE_AREA`` instead of about 1 MP."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint as inpaint_module
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus_module

    edit_plus_module.VAE_IMAGE_SIZE = TINY_REFERENCE_AREA
    edit_plus_module.CONDITION_IMAGE_SIZE = TINY_REFERENCE_AREA
    patched: tuple[Any, ...] = (edit_module, inpaint_module)  # their module-level tables, rewritten for tiny sizes
    for module in patched:
        real = getattr(module.calculate_dimensions, "real", module.calculate_dimensions)

        def tiny_dimensions(target_area: int, ratio: float, real: Any = real) -> Any:
            return real(TINY_REFERENCE_AREA, ratio)

        tiny_dimensions.real = real  # type: ignore[attr-defined]  # the real one, kept for the next build
        module.calculate_dimensions = tiny_dimensions


def build_qwen_image_edit_plus() -> TinyModel:
    """A ``QwenImageEditPlusPipeline`` (several images) with tiny random components (float32, CPU)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import QwenImageEditPlusPipeline

    _shrink_reference_area()
    return finish(QwenImageEditPlusPipeline(**_components()))


def build_qwen_image_edit() -> TinyModel:
    """A ``QwenImageEditPipeline`` (one image) with tiny random components."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import QwenImageEditPipeline

    _shrink_reference_area()
    return finish(QwenImageEditPipeline(**_components()))


def build_qwen_image_edit_inpaint() -> TinyModel:
    """A ``QwenImageEditInpaintPipeline`` with the same tiny components as ``tiny:qwen-image-edit``."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint import QwenImageEditInpaintPipeline

    _shrink_reference_area()
    return finish(QwenImageEditInpaintPipeline(**_components()))
