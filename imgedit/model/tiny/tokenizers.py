"""Tokenizers for the tiny models, built in memory: no vocabulary files, no download.

They are byte-level (one token per byte, plus each family's special tokens), so
any prompt encodes, and prompt templates keep realistic lengths.
"""

from __future__ import annotations

from typing import Any

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


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


def qwen_tokenizer(chat_template: str | None = None, extra_special_tokens: tuple[str, ...] = ()) -> Any:
    """A byte-level ``Qwen2Tokenizer`` with Qwen's special tokens (264 tokens and any extras)."""
    from transformers import Qwen2Tokenizer

    specials = (*QWEN_SPECIAL_TOKENS, *extra_special_tokens)
    vocab = {symbol: index for index, symbol in enumerate(byte_level_alphabet())}
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        additional_special_tokens=list(specials),
        unk_token=None,  # type: ignore[arg-type]  # Qwen's vocabulary has none; transformers hints a str
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def clip_tokenizer() -> Any:
    """A byte-level ``CLIPTokenizer`` (514 tokens) padding to 77 like the real one.

    ``model_max_length`` must be set: Stable Diffusion and Flux pad CLIP input to
    it, and a tokenizer built in code would otherwise report about 1e30.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for symbol in byte_level_alphabet():
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    """A character-level ``T5Tokenizer`` with ASCII letters, digits and punctuation."""
    import string

    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581", *string.ascii_letters, *string.digits, *string.punctuation]
    return T5Tokenizer(vocab=[(piece, 0.0) for piece in pieces], extra_ids=0)
