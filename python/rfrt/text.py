"""Text encoders: the protocol the generator uses, the umT5 encoder of the release, and a per-prompt cache.

SPEC §1: the DiT reads umT5-XXL states of 512 positions with the padding positions zeroed; cross-attention
attends to all 512 (padding included), so the zeros matter. Prompts are encoded once and cached
(`PromptCache`), since a stream re-uses its prompt for every chunk and prompt switches often come back to an
earlier prompt.

transformers is imported only when a UMT5TextEncoder is constructed.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from rfrt._checks import MAX_PROMPT_CHARS, positive_int

__all__ = ["TextEncoder", "UMT5TextEncoder", "PromptCache", "validate_prompt", "MAX_PROMPT_CHARS"]



@runtime_checkable
class TextEncoder(Protocol):
    """encode(prompts) -> float [B, L, text_dim], one row per prompt, padding positions zero.

    Implementations raise ValueError for a prompt they cannot encode without truncation.
    """

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


def validate_prompt(prompt: object, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Return the prompt unchanged, or raise ValueError if it is not a non-empty, reasonably sized string."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty: describe the video to generate")
    if len(prompt) > max_chars:
        raise ValueError(f"prompt is too long: {len(prompt)} characters (at most {max_chars})")
    return prompt


class UMT5TextEncoder:
    """umT5 encoder through transformers (`UMT5EncoderModel` + `AutoTokenizer`), padded to `max_length` tokens.

    model_path:     directory of the encoder (`from_pretrained` layout; Wan2.1 diffusers: `text_encoder/`).
    tokenizer_path: directory of the tokenizer (default: model_path; Wan2.1 diffusers: `tokenizer/`).
    max_length:     positions produced (512 in the release). A prompt whose tokens (with the end-of-sequence
                    token) exceed it is rejected rather than silently truncated.
    encode(prompts) -> [B, max_length, d_model] in the encoder's dtype on its device, padding rows zero.
    """

    def __init__(self, model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None, *,
                 max_length: int = 512, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("UMT5TextEncoder needs transformers (pip install 'rfrt[hf]')") from err
        positive_int("UMT5TextEncoder.max_length", max_length)
        model_path = Path(model_path)
        tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else model_path
        for what, path in (("text encoder", model_path), ("tokenizer", tokenizer_path)):
            if not path.is_dir():
                raise FileNotFoundError(f"UMT5TextEncoder: {what} directory {str(path)!r} does not exist")
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        self.model = UMT5EncoderModel.from_pretrained(str(model_path), dtype=dtype or torch.float32)
        self.model.to(device or "cpu").eval().requires_grad_(False)
        self.max_length = max_length

    @property
    def dim(self) -> int:
        """Width of the states (d_model; 4096 for umT5-XXL)."""
        return int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        prompts = [validate_prompt(p) for p in prompts]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        too_long = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if too_long:
            i, n = too_long[0]
            raise ValueError(f"prompt {i} is too long: {n} tokens, the text encoder takes at most "
                             f"{self.max_length}; shorten it")
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=False,
                               add_special_tokens=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Wan keeps only the first seq_len rows and pads with zeros: zero the padding positions (SPEC §1).
        return states * mask[..., None].to(states.dtype)


class PromptCache:
    """Validates prompts and memoises encoder output per prompt (least recently used evicted first).

    encode(prompt) -> [1, L, text_dim] (the cached tensor; treat it as read-only).
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 16) -> None:
        if not callable(getattr(encoder, "encode", None)):
            raise TypeError(f"PromptCache needs a text encoder with encode(prompts), got {type(encoder).__name__}")
        if max_entries <= 0:
            raise ValueError(f"PromptCache.max_entries must be positive, got {max_entries}")
        self.encoder, self.max_entries = encoder, max_entries
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, prompt: str) -> torch.Tensor:
        prompt = validate_prompt(prompt)
        if prompt in self._entries:
            self._entries.move_to_end(prompt)
            return self._entries[prompt]
        states = self.encoder.encode([prompt])
        if not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[0] != 1:
            shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
            raise ValueError(f"{type(self.encoder).__name__}.encode returned {shape}, expected [1, L, text_dim]")
        self._entries[prompt] = states
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return states
