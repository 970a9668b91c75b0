"""Text encoders: umT5 through transformers (tiny random model + tokenizer built here), prompt cache, validation."""
from __future__ import annotations

import pytest
import torch

from rfrt.text import MAX_PROMPT_CHARS, PromptCache, TextEncoder, UMT5TextEncoder, validate_prompt
from test_generator_tiny import HashTextEncoder, write_tokenizer_and_umt5


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory):
    return write_tokenizer_and_umt5(tmp_path_factory.mktemp("umt5"))


def test_umt5_pads_to_max_length_and_zeroes_padding(umt5_dir):
    from transformers import AutoTokenizer, UMT5EncoderModel

    enc = UMT5TextEncoder(umt5_dir, max_length=12)
    assert isinstance(enc, TextEncoder) and enc.dim == 16
    out = enc.encode(["a cat walks", "a red car drives through the city"])
    assert out.shape == (2, 12, 16)
    # Independent reference: unpadded encoding of each prompt alone, then zero rows up to 12 (Wan's layout).
    tok, model = AutoTokenizer.from_pretrained(str(umt5_dir)), UMT5EncoderModel.from_pretrained(str(umt5_dir))
    for row, prompt in zip(out, ["a cat walks", "a red car drives through the city"]):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        n = ids.shape[1]
        assert n == len(prompt.split()) + 1  # words + </s>
        with torch.no_grad():
            alone = model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(row[:n], alone, rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(row[n:]) == 0 and row[:n].abs().sum(-1).min() > 0


def test_umt5_rejects_over_long_and_empty_prompts(umt5_dir):
    enc = UMT5TextEncoder(umt5_dir, max_length=5)
    enc.encode(["a cat walks on"])  # 4 words + </s> = 5 tokens: fits exactly
    with pytest.raises(ValueError, match="too long: 6 tokens.*at most 5"):
        enc.encode(["a cat walks on the"])
    with pytest.raises(ValueError, match="empty"):
        enc.encode(["   "])
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        UMT5TextEncoder(umt5_dir, umt5_dir / "missing")


def test_validate_prompt():
    assert validate_prompt("a cat") == "a cat"
    for bad, why in (("", "empty"), (" \n\t", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "too long"),
                     (None, "must be a string"), (3, "must be a string")):
        with pytest.raises(ValueError, match=why):
            validate_prompt(bad)


def test_prompt_cache_memoises_and_evicts_least_recent():
    enc = HashTextEncoder()
    cache = PromptCache(enc, max_entries=2)
    a = cache.encode("a")
    assert cache.encode("a") is a and enc.calls == 1
    cache.encode("b")
    cache.encode("a")  # refresh "a": "b" is now the least recent
    cache.encode("c")
    assert len(cache) == 2 and enc.calls == 3
    assert cache.encode("a") is a and enc.calls == 3
    cache.encode("b")
    assert enc.calls == 4
    with pytest.raises(ValueError, match="empty"):
        cache.encode("")


def test_prompt_cache_rejects_a_wrong_shaped_encoder_output():
    class Bad:
        def encode(self, prompts):
            return torch.zeros(len(prompts), 4)

    with pytest.raises(ValueError, match=r"Bad.encode returned \(1, 4\), expected \[1, L, text_dim\]"):
        PromptCache(Bad()).encode("a cat")
