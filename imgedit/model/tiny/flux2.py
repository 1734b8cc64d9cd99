"""Tiny FLUX.2 pipelines: ``tiny:flux2``, ``tiny:flux2-klein`` and its inpainting twin ``tiny:flux2-klein-inpaint``.

What they share: a ``Flux2Transformer2DModel`` 32 wide with one double-stream
and one single-stream block, and an ``AutoencoderKLFlux2`` with four 4-channel
blocks and no mid-block attention, so the VAE scale factor is 8 and sizes are
multiples of 16, as with the real VAE, and even a 1 MP image decodes in about a
second. The VAE's batch-norm statistics (which the pipelines use to normalise
patchified latents) are set to seeded non-trivial values, so that a decode
which forgets them shows.

The text encoders keep the depth the pipelines read hidden states from, so the
pipelines run with their default ``text_encoder_out_layers``:

* FLUX.2-dev: a ``Mistral3ForConditionalGeneration`` with a 30-layer, 16-wide
  text model (layers 10, 20 and 30 are read) and a one-layer vision tower. Its
  ``tokenizer`` component is :class:`TinyMistralProcessor`, a text-only
  processor over a byte-level tokenizer with Mistral's control tokens and a
  Mistral-style chat template. The real one is a ``PixtralProcessor``, which
  cannot even be imported without torchvision; the pipeline only ever calls the
  processor's ``apply_chat_template`` with text, except for caption upsampling
  with images, which this tiny processor does not support.
* FLUX.2-klein: a ``Qwen3ForCausalLM`` with 27 layers, 16 wide (layers 9, 18
  and 27 are read) and a byte-level ``Qwen2Tokenizer`` whose chat template
  honours ``enable_thinking=False`` as Qwen3's does. The tiny Klein is a *base*
  (not step-distilled) model, ``is_distilled=False``, so its classifier-free
  guidance path runs.

Each builds in about a second and a 64x64 edit with a couple of references
takes a fraction of a second on a CPU. Saved with ``save_pretrained``, each loads
back with ``DiffusionPipeline.from_pretrained`` offline.
"""

from __future__ import annotations

from typing import Any

import torch

# diffusers' from_pretrained finds how to load a component by looking up its
# loadable base classes (here ProcessorMixin) as attributes of the module named
# in model_index.json, so this module must expose it.
from transformers import ProcessorMixin

from imgedit.model.tiny import TinyModel, finish, seeded
from imgedit.model.tiny.tokenizers import qwen_tokenizer

#: Width of both tiny text models; the transformer's joint attention dim is three times this.
TEXT_WIDTH = 16
#: Layers of the tiny text models: the deepest hidden state each pipeline reads by default.
MISTRAL_LAYERS = 30
QWEN3_LAYERS = 27

MISTRAL_SPECIAL_TOKENS = (
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
)

#: Mistral-Small-3.1-style template: message content is a string or a list of
#: ``{"type": "text"|"image", ...}`` parts, as the FLUX.2 pipeline sends.
MISTRAL_CHAT_TEMPLATE = (
    "<s>"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{%- else %}"
    "{%- set parts = message['content'] %}"
    "{%- endif %}"
    "{%- if message['role'] == 'system' %}"
    "[SYSTEM_PROMPT]{% for part in parts %}{{ part['text'] }}{% endfor %}[/SYSTEM_PROMPT]"
    "{%- elif message['role'] == 'user' %}"
    "[INST]{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% else %}[IMG]{% endif %}"
    "{% endfor %}[/INST]"
    "{%- else %}"
    "{% for part in parts %}{{ part['text'] }}{% endfor %}</s>"
    "{%- endif %}"
    "{%- endfor %}"
)

#: Qwen3-style template: with ``enable_thinking=False`` the generation prompt
#: carries an empty think block, exactly what FLUX.2-klein encodes.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


class TinyMistralProcessor(ProcessorMixin):
    """A text-only stand-in for FLUX.2's ``PixtralProcessor``: a tokenizer and a chat template.

    Defined at module level so that a saved tiny pipeline names it in its
    ``model_index.json`` and loads back with ``from_pretrained``.
    """

    def __init__(self, tokenizer: Any = None, chat_template: str | None = None) -> None:
        super().__init__(tokenizer, chat_template=chat_template)


def _vae() -> Any:
    """A four-block (scale factor 8) ``AutoencoderKLFlux2``, 2 latent channels, non-trivial batch-norm statistics."""
    from diffusers.models.autoencoders.autoencoder_kl_flux2 import (
        AutoencoderKLFlux2,
    )  # the real class, not the lazy root's

    vae = AutoencoderKLFlux2(
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    ).eval()
    # The real VAE's statistics are far from (0, 1); keep them away from the
    # identity so that previews must undo the normalisation to match.
    generator = torch.Generator().manual_seed(1)
    channels = vae.bn.running_mean.shape[0]
    vae.bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
    vae.bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return vae


def _transformer(guidance_embeds: bool) -> Any:
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=8,  # 2 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,  # three hidden-state layers stacked
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _flux2_components() -> dict[str, Any]:
    """Tiny components of ``Flux2Pipeline`` (FLUX.2-dev: Mistral 3 text encoder, guidance-embedding transformer)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = qwen_tokenizer(extra_special_tokens=MISTRAL_SPECIAL_TOKENS)
    token_id = tokenizer.convert_tokens_to_ids
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": TEXT_WIDTH,
            "num_hidden_layers": MISTRAL_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": TEXT_WIDTH // 2,
            "max_position_embeddings": 1024,
            "sliding_window": None,
            "bos_token_id": token_id("<s>"),
            "eos_token_id": token_id("</s>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": TEXT_WIDTH,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": TEXT_WIDTH // 2,
            "image_size": 64,
            "patch_size": 8,
        },
        image_token_index=token_id("[IMG]"),
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": seeded(_vae),
        "text_encoder": seeded(lambda: Mistral3ForConditionalGeneration(config).eval()),
        "tokenizer": TinyMistralProcessor(tokenizer=tokenizer, chat_template=MISTRAL_CHAT_TEMPLATE),
        "transformer": seeded(lambda: _transformer(guidance_embeds=True)),
    }


def _klein_components() -> dict[str, Any]:
    """Tiny components of the FLUX.2-klein pipelines (Qwen3 text encoder, no guidance embedding)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer(chat_template=QWEN3_CHAT_TEMPLATE, extra_special_tokens=("<think>", "</think>"))
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=TEXT_WIDTH,
        num_hidden_layers=QWEN3_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=TEXT_WIDTH // 2,
        max_position_embeddings=1024,
        bos_token_id=token_id("<|endoftext|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": seeded(_vae),
        "text_encoder": seeded(lambda: Qwen3ForCausalLM(config).eval()),
        "tokenizer": tokenizer,
        "transformer": seeded(lambda: _transformer(guidance_embeds=False)),
    }


def build_flux2() -> TinyModel:
    """A ``Flux2Pipeline`` (FLUX.2-dev: several references, embedded guidance) with tiny random components."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    return finish(Flux2Pipeline(**_flux2_components()))


def build_flux2_klein() -> TinyModel:
    """A ``Flux2KleinPipeline`` (a base, not step-distilled, FLUX.2-klein) with tiny random components."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline

    return finish(Flux2KleinPipeline(**_klein_components(), is_distilled=False))


def build_flux2_klein_inpaint() -> TinyModel:
    """A ``Flux2KleinInpaintPipeline`` with the same tiny components as ``tiny:flux2-klein``."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein_inpaint import Flux2KleinInpaintPipeline

    return finish(Flux2KleinInpaintPipeline(**_klein_components(), is_distilled=False))
