"""VocabTextEncoder: the embedded default model's text encoder, a closed-vocabulary word encoder.

The default model is trained on a synthetic world whose prompts use a few dozen words, so a learned word
embedding (+ learned positions, + optionally one small pre-norm transformer layer) replaces umT5 there. It is
trained together with the teacher and reused frozen by the student. Words are lower-cased and split on
spaces, punctuation and control characters (`split_words`; non-ASCII letters and symbols belong to words); an
unknown word is an error that names it (the model has never seen it, so silently dropping it would generate
something the prompt did not ask for), and so is a non-empty prompt with no word at all.

Output [B, max_words, dim] with padding positions zeroed, like Wan's umT5 path; the empty prompt therefore
encodes to all zeros, which is the unconditional embedding used for classifier-free guidance.
Saved as <dir>/config.json, <dir>/vocab.json and <dir>/model.safetensors. No dependency on `train`.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from rfrt._checks import positive_int
from rfrt.checks import check_finite

FORMAT = "rfrt-vocab-text/1"
# A large finite negative (not -inf) so a row whose keys are all padding gives a finite softmax.
_MASK_VALUE = -1e4


@dataclass(frozen=True)
class VocabTextConfig:
    """dim: embedding width; max_words: positions per prompt; layers: 0 or 1 transformer layer; heads."""

    dim: int
    max_words: int
    layers: int = 0
    heads: int = 2

    def __post_init__(self) -> None:
        for name in ("dim", "max_words", "heads"):
            positive_int(f"VocabTextConfig.{name}", getattr(self, name))
        if self.layers not in (0, 1):
            raise ValueError(f"VocabTextConfig.layers must be 0 or 1, got {self.layers!r}")
        if self.dim % self.heads:
            raise ValueError(f"VocabTextConfig.dim {self.dim} is not divisible by heads {self.heads}")


def _word_char(ch: str) -> bool:
    """ASCII: letters, digits and the apostrophe. Beyond ASCII every letter, mark, digit and symbol (é, 赤, 🚀)
    is part of a word, so a word the encoder does not know is reported, not cut into pieces or dropped;
    spaces, punctuation and control characters separate words."""
    if ch < "\x80":
        return ch.isalnum() or ch == "'"
    return unicodedata.category(ch)[0] in "LMNS"


def split_words(prompt: str) -> list[str]:
    """Lower-case and split a prompt into words ("A Red circle, moves!" -> ["a", "red", "circle", "moves"];
    "a réd 🚀!" -> ["a", "réd", "🚀"])."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    words, current = [], []
    for ch in prompt.lower():
        if _word_char(ch):
            current.append(ch)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


class _Layer(nn.Module):
    """Pre-norm self-attention + MLP over the prompt's words; padding keys are masked."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim]; pad bool [B, L] (True = padding)."""
        bias = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, _MASK_VALUE)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=None, key_padding_mask=bias, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VocabTextEncoder(nn.Module):
    """Word embedding + learned positions (+ one optional transformer layer) over a fixed vocabulary.

    vocab: the known words (ids 1..len(vocab); 0 is padding). encode(prompts) -> [B, max_words, dim].
    """

    def __init__(self, vocab: list[str] | tuple[str, ...], dim: int, max_words: int, layers: int = 0,
                 heads: int = 2) -> None:
        super().__init__()
        words = [w.lower() for w in vocab]
        if not words:
            raise ValueError("VocabTextEncoder needs a non-empty vocabulary")
        bad = [w for w in words if split_words(w) != [w]]
        if bad:
            raise ValueError(f"vocabulary entries must be single lower-case words, got {bad[:5]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.config = VocabTextConfig(dim, max_words, layers, heads)
        self.vocab = tuple(words)
        self._index = {w: i + 1 for i, w in enumerate(words)}
        self.word_embedding = nn.Embedding(len(words) + 1, dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.randn(max_words, dim) * 0.02)
        self.layers = nn.ModuleList(_Layer(dim, heads) for _ in range(layers))

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def max_words(self) -> int:
        return self.config.max_words

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """LongTensor [B, max_words] of word ids (0 = padding). Unknown words or too long prompts raise."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, got a single str")
        ids = torch.zeros(len(prompts), self.max_words, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            words = split_words(prompt)
            unknown = sorted({w for w in words if w not in self._index})
            known = f"(it knows {len(self.vocab)} words, e.g. {', '.join(self.vocab[:8])}, ...)"
            if unknown:
                raise ValueError(f"prompt {prompt!r} has words outside this text encoder's vocabulary: {unknown} "
                                 f"{known}")
            if not words and prompt.strip():
                # Only the empty prompt means "unconditional" (training's classifier-free dropout uses it);
                # "!!!" would otherwise generate the same unconditional video without a word of warning.
                raise ValueError(f"prompt {prompt!r} has no word this text encoder knows {known}")
            if len(words) > self.max_words:
                raise ValueError(f"prompt {prompt!r} has {len(words)} words, more than max_words={self.max_words}")
            ids[b, : len(words)] = torch.tensor([self._index[w] for w in words], dtype=torch.long)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, max_words] -> [B, max_words, dim], padding rows zeroed."""
        pad = ids == 0
        x = self.word_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, pad)
        return x.masked_fill(pad[..., None], 0.0)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode prompts -> [B, max_words, dim] on the module's device and dtype."""
        return self(self.token_ids(prompts).to(self.position_embedding.device))

    def save(self, directory: str | Path) -> Path:
        """Write config.json, vocab.json and model.safetensors into `directory` (created)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"format": FORMAT, **asdict(self.config)}, indent=1))
        (d / "vocab.json").write_text(json.dumps(list(self.vocab)))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(d / "model.safetensors"))
        return d

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "VocabTextEncoder":
        """Read an encoder written by `save`; missing files or mismatched tensors raise with the path."""
        from safetensors.torch import load_file

        d = Path(directory)
        for name in ("config.json", "vocab.json", "model.safetensors"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"vocab text encoder at {d} lacks {name}")
        raw, vocab = _read_json(d / "config.json"), _read_json(d / "vocab.json")
        if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
            raise ValueError(f"{d / 'config.json'} is not a {FORMAT} config")
        try:
            cfg = VocabTextConfig(**raw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{d / 'config.json'}: {err}") from None
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise ValueError(f"{d / 'vocab.json'} must be a JSON list of words")
        enc = cls(vocab, cfg.dim, cfg.max_words, cfg.layers, cfg.heads)
        weights = d / "model.safetensors"
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read {weights} as safetensors (corrupt or truncated?): {err}") from None
        missing, unexpected = set(enc.state_dict()) - set(state), set(state) - set(enc.state_dict())
        if missing or unexpected:
            raise ValueError(f"{weights}: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for name, tensor in state.items():
            check_finite(name, tensor, weights)
        try:
            enc.load_state_dict(state)
        except RuntimeError as err:  # shapes that do not match config.json
            raise ValueError(f"{weights} does not match {d / 'config.json'}: {err}") from None
        return enc.to(device)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu") -> "VocabTextEncoder":
        """Alias of `load` (the name the runtime's model-directory loader looks for)."""
        return cls.load(directory, device)
