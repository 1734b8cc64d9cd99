"""Tiny FLUX.1 Kontext pipelines: ``tiny:flux-kontext`` and its inpainting twin ``tiny:flux-kontext-inpaint``.

Both share one set of tiny components, built from a fixed seed: a byte-level
CLIP tokenizer and CLIP text encoder 32 wide, a character-level T5 tokenizer
and T5 encoder 32 wide, a transformer with one double-stream and one
single-stream block (``guidance_embeds=True``, as in Kontext-dev), and a VAE
with four resolution levels of 8 channels. Four levels give a VAE scale factor
of 8, as in the real model, so sizes are multiples of 16 (Flux packs latents
in 2x2 patches) and the size arithmetic the family relies on is the real one.

The real pipelines resize the reference image to one of about 1 MP
(``PREFERRED_KONTEXT_RESOLUTIONS``) whatever the output size, which would make
each tiny call process a thousand times more reference than output. Building
a tiny Kontext model therefore divides that table by ``TINY_REFERENCE_SHRINK``
in the pipelines' modules: only ever build one in a process that serves no
real model. A saved tiny pipeline loaded back in a process that built none
runs with the real table: correct, only slower (about 0.5 s per 64x64 edit).
"""

from __future__ import annotations

from typing import Any

from imgedit.model.tiny import TinyModel, finish, seeded
from imgedit.model.tiny.tokenizers import clip_tokenizer, t5_tokenizer

#: The preferred reference resolutions are divided by this (1024x1024 becomes 128x128).
TINY_REFERENCE_SHRINK = 8
#: Width of both text encoders, the transformer's text input and its pooled projection.
TEXT_WIDTH = 32
#: Latent channels of the tiny VAE (the real one has 16); the transformer sees 4x as many per packed token.
LATENT_CHANNELS = 4


def _components() -> dict[str, Any]:
    """Tiny components of both Kontext pipelines."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    clip_config = CLIPTextConfig(
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        vocab_size=len(tokenizer),
        # The pooled output is read at the first end-of-text token, so this id must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    t5_config = T5Config(  # type: ignore[call-arg]  # decoder_start_token_id: a keyword transformers hides in **kwargs
        vocab_size=len(tokenizer_2),
        d_model=TEXT_WIDTH,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        decoder_start_token_id=tokenizer_2.pad_token_id,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": seeded(lambda: CLIPTextModel(clip_config).eval()),
        "tokenizer": tokenizer,
        "text_encoder_2": seeded(lambda: T5EncoderModel(t5_config).eval()),
        "tokenizer_2": tokenizer_2,
        "transformer": seeded(
            lambda: FluxTransformer2DModel(
                patch_size=1,
                in_channels=LATENT_CHANNELS * 4,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=TEXT_WIDTH,
                pooled_projection_dim=TEXT_WIDTH,
                axes_dims_rope=(4, 4, 8),
                guidance_embeds=True,
            )
        ),
        "vae": seeded(
            lambda: AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(8, 8, 8, 8),
                layers_per_block=1,
                latent_channels=LATENT_CHANNELS,
                norm_num_groups=2,
                sample_size=64,
                # Flux's own normalisation constants, so that previews must undo a real scale and shift.
                scaling_factor=0.3611,
                shift_factor=0.1159,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
        ),
        "image_encoder": None,
        "feature_extractor": None,
    }


def _shrink_reference_resolutions() -> None:
    """Make both Kontext pipelines snap references to resolutions ``TINY_REFERENCE_SHRINK`` times smaller."""
    import diffusers.pipelines.flux.pipeline_flux_kontext as edit_module
    import diffusers.pipelines.flux.pipeline_flux_kontext_inpaint as inpaint_module

    patched: tuple[Any, ...] = (edit_module, inpaint_module)  # their module-level tables, rewritten for tiny sizes
    for module in patched:
        # Keep the real table aside so that building twice does not shrink twice.
        real = getattr(module, "REAL_PREFERRED_KONTEXT_RESOLUTIONS", module.PREFERRED_KONTEXT_RESOLUTIONS)
        module.REAL_PREFERRED_KONTEXT_RESOLUTIONS = real
        module.PREFERRED_KONTEXT_RESOLUTIONS = [
            (width // TINY_REFERENCE_SHRINK, height // TINY_REFERENCE_SHRINK) for width, height in real
        ]


def build_flux_kontext() -> TinyModel:
    """A ``FluxKontextPipeline`` with tiny random components (float32, CPU)."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import FluxKontextPipeline

    _shrink_reference_resolutions()
    return finish(FluxKontextPipeline(**_components()))


def build_flux_kontext_inpaint() -> TinyModel:
    """A ``FluxKontextInpaintPipeline`` with the same tiny components as ``tiny:flux-kontext``."""
    from diffusers.pipelines.flux.pipeline_flux_kontext_inpaint import FluxKontextInpaintPipeline

    _shrink_reference_resolutions()
    return finish(FluxKontextInpaintPipeline(**_components()))
