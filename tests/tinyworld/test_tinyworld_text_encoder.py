"""The fixed text encoder: deterministic, right shape, prompts distinguishable."""

from __future__ import annotations

import pytest
import torch

from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder


def test_deterministic_across_instances() -> None:
    prompts = ["a red circle moving left", "a blue square moving up and a white triangle moving down", ""]
    a, b = TinyTextEncoder().encode(prompts), TinyTextEncoder().encode(prompts)
    assert torch.equal(a, b)


def test_shape_padding_and_empty_prompt() -> None:
    te = TinyTextEncoder(TextEncoderConfig(dim=32, max_len=12))
    x = te.encode(["a red circle moving left", ""])
    assert x.shape == (2, 12, 32) and x.dtype == torch.float32
    assert torch.all(x[0, 6:] == 0) and torch.all(x[0, :6].abs().sum(-1) > 0)  # <bos> + 5 words, zero pad
    assert torch.all(x[1, 1:] == 0) and x[1, 0].abs().sum() > 0  # the empty prompt is <bos> only
    assert torch.equal(te.encode("a red circle moving left"), x[:1])


def test_different_prompts_differ() -> None:
    te = TinyTextEncoder()
    base = te.encode("a red circle moving left")
    for other in ("a blue circle moving left", "a red square moving left", "a red circle moving up", ""):
        assert (te.encode(other) - base).abs().max() > 0.5
    # Word order matters through the positional term.
    a = te.encode("a red circle moving left and a blue square moving up")
    b = te.encode("a blue square moving up and a red circle moving left")
    assert (a - b).abs().max() > 0.5
    # A different seed is a different table.
    assert not torch.equal(TinyTextEncoder(TextEncoderConfig(seed=1)).encode("a"), te.encode("a"))


def test_bad_input() -> None:
    te = TinyTextEncoder(TextEncoderConfig(max_len=6))
    with pytest.raises(ValueError, match="vocabulary"):
        te.encode(["a purple circle"])
    with pytest.raises(ValueError, match="max_len"):
        te.encode(["a red circle moving left and"])
    with pytest.raises(ValueError, match="dim"):
        TextEncoderConfig(dim=7)
