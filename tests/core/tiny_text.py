"""A tiny UMT5 text encoder and tokenizer built locally (no download), as WanPipeline takes them."""

from __future__ import annotations

from typing import Any

import torch


def tiny_tokenizer(texts: list[str]) -> Any:
    """A word-level fast tokenizer over the words of ``texts`` (+ pad, eos, unk), T5-style eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_text_encoder(dim: int) -> Any:
    """A one-layer random ``UMT5EncoderModel`` whose outputs have width ``dim`` (the Wan text_dim)."""
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=64, d_model=dim, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8
    )
    torch.manual_seed(0)
    return UMT5EncoderModel(cfg).eval()
