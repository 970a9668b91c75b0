"""VideoReward (VideoAlign): a Qwen2-VL backbone plus a linear head scoring VQ / MQ / TA; Re-DMD uses MQ.

Architecture (arXiv 2501.13918, the public VideoAlign model): Qwen2-VL reads the video and a prompt that ends
in three special tokens <|VQ_reward|> <|MQ_reward|> <|TA_reward|>; a bias-free linear head `rm_head` maps the
last hidden state at each of those positions to one score (output_dim 1). A head with output_dim 3 read at the
last token is accepted too. Scores are z-scored with the model's own mean / std (from reward_config.json).

Pixel inputs are built here, not by the HF processor (its video processor needs torchvision, which has no CPU
build here): frames in [0, 1] are resized to height x width, normalised with the CLIP mean/std Qwen2-VL uses,
padded in time to a multiple of temporal_patch_size by repeating the last frame, and cut into
(temporal_patch_size x patch_size x patch_size) patches ordered merge-window by merge-window, the layout
documented for Qwen2VLImageProcessor (checked against it in the tests).

Weights directory (user-provided; nothing is ever downloaded):
  config.json          a Qwen2VLConfig
  *.safetensors        backbone weights in Qwen2VLForConditionalGeneration ("model.visual.*",
                       "model.language_model.*") or the older ("visual.*", "model.*") layout, plus rm_head.weight
  reward_config.json   {"special_token_ids": {"VQ": id, "MQ": id, "TA": id} (omit for output_dim 3),
                        "mean": {"VQ": m, "MQ": m, "TA": m}, "std": {...},
                        "height": 336, "width": 588, "max_frames": null, "prompt_template": "... {prompt} ..."}
  tokenizer files      optional; without them the prompt text is left out (only the special tokens follow
                       the video), which is enough for MQ with a head trained that way but not for TA.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .base import RewardModel, check_unit_frames

HEADS = ("VQ", "MQ", "TA")
# Normalisation constants of Qwen2-VL's image processor (the OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_VIDEO_TOKEN_TYPE = 2  # transformers' mm_token_type_ids: text 0, image 1, video 2


def frames_to_patches(frames: torch.Tensor, height: int, width: int, patch_size: int = 14,
                      temporal_patch_size: int = 2, merge_size: int = 2,
                      mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                      ) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """One video [T, 3, H, W] in [0, 1] -> (pixel_values [gt*gh*gw, 3*tp*ps*ps] float32, (gt, gh, gw)).

    height and width must be multiples of patch_size * merge_size (336 x 588 = 12 x 21 windows of 28).
    """
    unit = patch_size * merge_size
    if height % unit or width % unit:
        raise ValueError(f"height x width {height}x{width} must be multiples of {unit}")
    x = frames.float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pad = (-x.shape[0]) % temporal_patch_size
    if pad:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)
    gt, gh, gw = x.shape[0] // temporal_patch_size, height // patch_size, width // patch_size
    x = x.reshape(gt, temporal_patch_size, 3, gh // merge_size, merge_size, patch_size,
                  gw // merge_size, merge_size, patch_size)
    # -> [gt, gh/m, gw/m, m, m, C, tp, ps, ps]: patches of one merge window are adjacent, as the merger expects.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * temporal_patch_size * patch_size * patch_size), (gt, gh, gw)


class VideoRewardModel(RewardModel):
    """VideoReward scorer. `score` -> raw MQ [B]; `score_all` -> raw (VQ, MQ, TA) [B, 3].

    backbone: a transformers `Qwen2VLModel`; head: nn.Linear(hidden, 1 or 3, bias=False);
    special_token_ids: ids of the VQ/MQ/TA reward tokens (required when the head has one output);
    mean/std: per-head z-score statistics; head_name: which head `score` returns (MQ for Re-DMD).
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear, *, mean: dict[str, float],
                 std: dict[str, float], special_token_ids: dict[str, int] | None = None, height: int = 336,
                 width: int = 588, max_frames: int | None = None, head_name: str = "MQ", tokenizer: Any = None,
                 prompt_template: str = "{prompt}"):
        if head_name not in HEADS:
            raise ValueError(f"head_name must be one of {HEADS}, got {head_name!r}")
        for name, stats in (("mean", mean), ("std", std)):
            if set(stats) != set(HEADS):
                raise ValueError(f"{name} must give {HEADS}, got {sorted(stats)}")
        super().__init__(mean[head_name], std[head_name])
        if head.out_features == 1 and (special_token_ids is None or set(special_token_ids) != set(HEADS)):
            raise ValueError(f"a one-output head reads the special tokens {HEADS}: give special_token_ids for each")
        if head.out_features not in (1, 3):
            raise ValueError(f"head must have 1 or 3 outputs, got {head.out_features}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        self.backbone, self.head = backbone.eval(), head.eval()
        for p in list(backbone.parameters()) + list(head.parameters()):
            p.requires_grad_(False)  # the reward model is never trained here
        self.means, self.stds = dict(mean), dict(std)
        self.special_token_ids = dict(special_token_ids) if special_token_ids else None
        self.height, self.width, self.max_frames = height, width, max_frames
        self.head_name, self.tokenizer, self.prompt_template = head_name, tokenizer, prompt_template
        self._accepts_token_types = "mm_token_type_ids" in inspect.signature(backbone.forward).parameters

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, head_name: str = "MQ") -> "VideoRewardModel":
        """Load user-provided weights from a local directory (layout in the module docstring)."""
        try:
            from safetensors.torch import load_file
            from transformers import Qwen2VLConfig, Qwen2VLModel
        except ImportError as e:
            raise ImportError("VideoRewardModel needs transformers and safetensors (the [hf] extra)") from e
        d = Path(weights_dir)
        shards = sorted(d.glob("*.safetensors")) if d.is_dir() else []
        missing = [n for n in ("config.json", "reward_config.json") if not (d / n).is_file()]
        if not d.is_dir() or missing or not shards:
            raise FileNotFoundError(
                f"VideoReward weights not found in {str(d)!r} (missing: {missing + ([] if shards else ['*.safetensors'])}). "
                "Provide a local directory with config.json, reward_config.json and *.safetensors; "
                "rfrt never downloads weights.")
        rcfg = json.loads((d / "reward_config.json").read_text())
        config = Qwen2VLConfig.from_pretrained(str(d), local_files_only=True)
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        if "rm_head.weight" not in state:
            raise KeyError(f"{d}: no 'rm_head.weight' in the safetensors files")
        head_w = state.pop("rm_head.weight")
        backbone = Qwen2VLModel(config)
        result = backbone.load_state_dict(_backbone_state(state), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise KeyError(f"{d}: backbone weights do not match the config: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
        head = torch.nn.Linear(head_w.shape[1], head_w.shape[0], bias=False)
        head.weight.data.copy_(head_w.float())
        tokenizer = None
        if any((d / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        return cls(backbone.to(device, dtype), head.to(device), mean=rcfg["mean"], std=rcfg["std"],
                   special_token_ids=rcfg.get("special_token_ids"), height=rcfg.get("height", 336),
                   width=rcfg.get("width", 588), max_frames=rcfg.get("max_frames"), head_name=head_name,
                   tokenizer=tokenizer, prompt_template=rcfg.get("prompt_template", "{prompt}"))

    # ------------------------------------------------------------------------------------------ scoring

    def _input_ids(self, n_video_tokens: int, prompt: str | None) -> torch.Tensor:
        cfg = self.backbone.config
        text: list[int] = []
        if self.tokenizer is not None and prompt is not None:
            text = self.tokenizer(self.prompt_template.format(prompt=prompt), add_special_tokens=False)["input_ids"]
        tail = [self.special_token_ids[h] for h in HEADS] if self.special_token_ids else []
        ids = [cfg.vision_start_token_id] + [cfg.video_token_id] * n_video_tokens + [cfg.vision_end_token_id]
        return torch.tensor([ids + list(text) + tail], dtype=torch.long)

    @torch.no_grad()
    def score_all(self, frames: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """frames [B, T, 3, H, W] in [0, 1] -> raw (VQ, MQ, TA) float32 [B, 3]. One forward per video."""
        check_unit_frames(frames)
        if prompts is not None and len(prompts) != frames.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {frames.shape[0]} videos")
        vcfg = self.backbone.config.vision_config
        device = next(self.backbone.parameters()).device
        dtype = next(self.backbone.parameters()).dtype
        out = []
        for i, video in enumerate(frames):
            if self.max_frames is not None and video.shape[0] > self.max_frames:
                idx = torch.linspace(0, video.shape[0] - 1, self.max_frames).round().long()
                video = video[idx]  # uniform subsampling in time
            pixels, grid = frames_to_patches(video.cpu(), self.height, self.width, vcfg.patch_size,
                                             vcfg.temporal_patch_size, vcfg.spatial_merge_size)
            n_tokens = pixels.shape[0] // vcfg.spatial_merge_size ** 2
            ids = self._input_ids(n_tokens, None if prompts is None else prompts[i]).to(device)
            kwargs = {}
            if self._accepts_token_types:
                kwargs["mm_token_type_ids"] = (ids == self.backbone.config.video_token_id).int() * _VIDEO_TOKEN_TYPE
            hidden = self.backbone(input_ids=ids, pixel_values_videos=pixels.to(device, dtype),
                                   video_grid_thw=torch.tensor([grid], device=device), **kwargs).last_hidden_state
            logits = self.head(hidden[0].float())  # [L, out]; the head runs in fp32
            if self.special_token_ids:
                pos = [int((ids[0] == self.special_token_ids[h]).nonzero()[-1]) for h in HEADS]
                out.append(logits[pos, 0])
            else:
                out.append(logits[-1])
        return torch.stack(out).float().cpu()

    def score(self, frames: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Raw score of `head_name` (MQ by default) [B]."""
        return self.score_all(frames, prompts)[:, HEADS.index(self.head_name)]

    def zscore_all(self, raw: torch.Tensor) -> torch.Tensor:
        """z-score a [B, 3] (VQ, MQ, TA) tensor with each head's own statistics."""
        m = torch.tensor([self.means[h] for h in HEADS])
        s = torch.tensor([self.stds[h] for h in HEADS])
        return (raw - m) / s


def _backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint keys of either Qwen2-VL layout onto `Qwen2VLModel` ("visual.*", "language_model.*")."""
    out = {}
    for k, v in state.items():
        if k.startswith("lm_head."):
            continue  # the language-model head is unused by a reward model
        if k.startswith("model.visual.") or k.startswith("model.language_model."):
            out[k[len("model."):]] = v
        elif k.startswith("visual.") or k.startswith("language_model."):
            out[k] = v
        elif k.startswith("model."):
            out["language_model." + k[len("model."):]] = v
        else:
            out[k] = v  # surfaces as an "unexpected" key with a clear message
    return out
