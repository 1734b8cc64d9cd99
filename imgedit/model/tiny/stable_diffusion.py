"""Tiny Stable Diffusion pipelines: InstructPix2Pix (SD and SDXL), a text-to-image checkpoint and an inpainting one.

* ``tiny:instruct-pix2pix`` is a ``StableDiffusionInstructPix2PixPipeline``: its
  UNet takes 8 channels (noisy latents plus the input image's latents).
* ``tiny:sdxl-instruct-pix2pix`` is a ``StableDiffusionXLInstructPix2PixPipeline``:
  two CLIP text encoders and an 8-channel UNet with SDXL's ``text_time`` added
  conditioning.
* ``tiny:stable-diffusion`` is a plain ``StableDiffusionPipeline`` (4-channel
  UNet), the way text-to-image checkpoints are published; the family turns it
  into img2img and inpainting pipelines.
* ``tiny:stable-diffusion-inpaint`` is a ``StableDiffusionInpaintPipeline`` with a
  9-channel UNet (latents, mask, masked-image latents), like dedicated
  inpainting checkpoints.

Every VAE has four blocks, so its scale factor is 8 as in the real models and
sizes are multiples of 8; at 64x64 the UNets see 8x8 latents. Safety checker,
feature extractor and image encoder are left out, and nothing is downloaded.
:func:`build_stable_diffusion_xl` (an SDXL text-to-image checkpoint) is not in
the registry; the tests use it for the SDXL img2img and inpainting paths.
"""

from __future__ import annotations

from typing import Any

from imgedit.model.tiny import TinyModel, finish, seeded
from imgedit.model.tiny.tokenizers import clip_tokenizer

#: Width of the CLIP text encoders; SDXL's UNet attends to both, concatenated.
TEXT_WIDTH = 32
#: Width of each SDXL micro-conditioning embedding (six size numbers each).
TIME_EMBED_WIDTH = 8


def _text_encoder(tokenizer: Any, *, projection: bool = False) -> Any:
    """A two-layer CLIP text encoder over ``tokenizer``'s vocabulary (SDXL reads the next-to-last layer)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPTextConfig(
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=TEXT_WIDTH,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=end,
        pad_token_id=end,
    )
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return seeded(lambda: model_class(config).eval())


def _vae() -> Any:
    """An ``AutoencoderKL`` with four blocks of 8 channels: scale factor 8, 4 latent channels."""
    from diffusers import AutoencoderKL

    return seeded(
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
    )


def _unet(in_channels: int, *, xl: bool = False) -> Any:
    """A two-level ``UNet2DConditionModel`` taking ``in_channels`` and predicting 4-channel noise.

    With ``xl`` it attends to both text encoders (twice as wide) and takes SDXL's
    ``text_time`` conditioning: the pooled second encoder output plus six size numbers.
    """
    from diffusers import UNet2DConditionModel

    extra: dict[str, Any] = {}
    if xl:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": TIME_EMBED_WIDTH,
            "projection_class_embeddings_input_dim": 6 * TIME_EMBED_WIDTH + TEXT_WIDTH,
            "use_linear_projection": True,
        }
    return seeded(
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=in_channels,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=(2, 4),
            cross_attention_dim=TEXT_WIDTH * 2 if xl else TEXT_WIDTH,
            **extra,
        )
    )


def _sd_components(in_channels: int, scheduler: Any) -> dict[str, Any]:
    """Components of a Stable Diffusion 1.x pipeline, without safety checker or image encoder."""
    tokenizer = clip_tokenizer()
    return {
        "vae": _vae(),
        "text_encoder": _text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "unet": _unet(in_channels),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def _sdxl_components(in_channels: int) -> dict[str, Any]:
    """Components of an SDXL pipeline: two text encoders, the second with a projection."""
    from diffusers import EulerDiscreteScheduler

    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer()
    return {
        "vae": _vae(),
        "text_encoder": _text_encoder(tokenizer),
        "text_encoder_2": _text_encoder(tokenizer_2, projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": _unet(in_channels, xl=True),
        "scheduler": EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading"
        ),
        # The invisible watermark needs a package the server does not ship.
        "add_watermarker": False,
    }


def _sd_scheduler() -> Any:
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )


def build_instruct_pix2pix() -> TinyModel:
    """A ``StableDiffusionInstructPix2PixPipeline`` (8-channel UNet, Euler ancestral as the real one ships)."""
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import (
        StableDiffusionInstructPix2PixPipeline,
    )

    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return finish(StableDiffusionInstructPix2PixPipeline(**_sd_components(8, scheduler)))


def build_sdxl_instruct_pix2pix() -> TinyModel:
    """A ``StableDiffusionXLInstructPix2PixPipeline``: two text encoders, 8-channel UNet with ``text_time``."""
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_instruct_pix2pix import (
        StableDiffusionXLInstructPix2PixPipeline,
    )

    return finish(StableDiffusionXLInstructPix2PixPipeline(**_sdxl_components(8)))


def build_stable_diffusion() -> TinyModel:
    """A text-to-image ``StableDiffusionPipeline`` (4-channel UNet), served through img2img and inpainting."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

    return finish(StableDiffusionPipeline(**_sd_components(4, _sd_scheduler())))


def build_stable_diffusion_inpaint() -> TinyModel:
    """A ``StableDiffusionInpaintPipeline`` with a 9-channel UNet, as dedicated inpainting checkpoints have."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import StableDiffusionInpaintPipeline

    return finish(StableDiffusionInpaintPipeline(**_sd_components(9, _sd_scheduler())))


def build_stable_diffusion_xl() -> TinyModel:
    """A text-to-image ``StableDiffusionXLPipeline`` (4-channel UNet); not registered, used by the tests."""
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline

    return finish(StableDiffusionXLPipeline(**_sdxl_components(4)))
