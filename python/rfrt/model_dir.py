"""Model directories: rfrt's own `rfrt.json` manifest, and the diffusers Wan2.1 layout.

rfrt format (`rfrt-model/1`), paths relative to the manifest's directory:

    {"format": "rfrt-model/1",
     "dit": {"config": "dit/config.json", "weights": "dit/model.safetensors"},
     "text_encoder": {"kind": "vocab" | "umt5", "path": "text"},
     "decoder": {"kind": "pixel" | "wan_vae" | "taehv", "path": "vae"},      (path optional for "pixel")
     "cache": {CachePolicy fields (frames, EMA alpha, RoPE rule, sink precision: no resolution)},
     "sampler": {SamplerConfig fields},
     "video": {"height": 480, "width": 832, "fps": 16},
     "continuation": {"weights": "continuation/model.safetensors"}}                    (optional)

"continuation" names a second weight set of the same DiT (same config) that a stream primed from a context
(`StreamGenerator.reset(..., context=...)`) runs on: weights trained to continue a given video, where the
"dit" weights were trained to start from noise (train/results/default_model.md: the default model ships both).
A DiT `checkpoint=` replacing the directory's weights drops them (they belong to the directory's DiT).
"cache" and "sampler" may be partial (missing fields take the release defaults). Unknown keys, a wrong format
tag and missing files are errors naming them (`ModelDirError`).

`write_model_dir` is the one writer (every training stage exports through it): it writes into a temporary
directory next to the target, verifies what it wrote by reading it back, and only then renames it into place,
so a kill at any moment leaves either the previous directory or the new one, never a partial one; it refuses
non-finite weights. `verify_model_dir` is the check a rerun uses to find an incomplete export.

diffusers layout (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`): umT5 text
encoder, Wan VAE decoder, the released cache and sampler configuration, 832x480 at 16 fps. A distilled
student (Reward Forcing / Self-Forcing .pt) replaces the transformer's weights via `checkpoint=`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rfrt._checks import positive_int
from rfrt.cache.policy import CachePolicy
from rfrt.sampling import SamplerConfig

if TYPE_CHECKING:  # the runtime types of LoadedModel's fields; imported lazily at run time (no import cost)
    from rfrt.decoders.base import StreamingDecoder
    from rfrt.models import CausalWanDiT, ModelConfig
    from rfrt.text import TextEncoder

__all__ = ["ModelDirError", "ModelManifest", "ComponentSpec", "VideoSpec", "LoadedModel", "read_manifest",
           "load_model_dir", "write_model_dir", "verify_model_dir", "DEFAULT_MODEL_DIR", "default_model_path",
           "FORMAT"]

FORMAT = "rfrt-model/1"
MANIFEST = "rfrt.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
TEXT_KINDS = ("vocab", "umt5")
DECODER_KINDS = ("pixel", "wan_vae", "taehv")
_TOP_KEYS = {"format", "dit", "text_encoder", "decoder", "cache", "sampler", "video", "continuation"}


class ModelDirError(ValueError):
    """A model directory or manifest that is malformed, incomplete or inconsistent."""


@dataclass(frozen=True)
class ComponentSpec:
    """A text encoder or decoder: its kind and (absolute) path, or None where the kind needs no files."""

    kind: str
    path: Path | None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise ModelDirError(f"component kind must be a string, got {self.kind!r}")


@dataclass(frozen=True)
class VideoSpec:
    """Default output size in pixels and the frame rate."""

    height: int = 480
    width: int = 832
    fps: int = 16

    def __post_init__(self) -> None:
        for name in ("height", "width", "fps"):
            positive_int(f"video.{name}", getattr(self, name), ModelDirError)


@dataclass(frozen=True)
class ModelManifest:
    """A parsed model directory. dit_weights is a file or a directory `load_model` reads; dit_config may be
    None when the weights carry their own config (diffusers)."""

    root: Path
    layout: str  # "rfrt" or "diffusers"
    dit_config: Path | None
    dit_weights: Path
    text_encoder: ComponentSpec
    tokenizer: Path | None
    decoder: ComponentSpec
    cache: CachePolicy
    sampler: SamplerConfig
    video: VideoSpec
    continuation_weights: Path | None = None

    def __post_init__(self) -> None:
        if self.text_encoder.kind not in TEXT_KINDS:
            raise ModelDirError(f"text_encoder.kind must be one of {TEXT_KINDS}, got {self.text_encoder.kind!r}")
        if self.decoder.kind not in DECODER_KINDS:
            raise ModelDirError(f"decoder.kind must be one of {DECODER_KINDS}, got {self.decoder.kind!r}")
        needed = [("dit weights", self.dit_weights), ("dit config", self.dit_config),
                  ("text encoder", self.text_encoder.path), ("tokenizer", self.tokenizer),
                  ("decoder", self.decoder.path), ("continuation weights", self.continuation_weights)]
        for what, path in needed:
            if path is not None and not path.exists():
                raise ModelDirError(f"{self.root}: the {what} {str(path)!r} does not exist")
        if self.text_encoder.path is None:
            raise ModelDirError(f"{self.root}: text_encoder.path is required for kind {self.text_encoder.kind!r}")
        if self.decoder.kind != "pixel" and self.decoder.path is None:
            raise ModelDirError(f"{self.root}: decoder.path is required for kind {self.decoder.kind!r}")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """Everything a StreamGenerator needs, in memory (tests and embedders can build one directly).

    dit: CausalWanDiT; text_encoder: TextEncoder; decoder: StreamingDecoder; cache: CachePolicy; sampler:
    SamplerConfig; video: VideoSpec; continuation: the state dict of the DiT's continuation weights (manifest
    "continuation", the DiT's names, shapes and dtype) or None.
    """

    dit: CausalWanDiT
    text_encoder: TextEncoder
    decoder: StreamingDecoder
    cache: CachePolicy = CachePolicy()
    sampler: SamplerConfig = SamplerConfig()
    video: VideoSpec = VideoSpec()
    continuation: Mapping[str, torch.Tensor] | None = None


def default_model_path() -> Path | None:
    """The embedded default model's manifest when it is shipped, else None."""
    path = DEFAULT_MODEL_DIR / MANIFEST
    return path if path.is_file() else None


def _object(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ModelDirError(f"{where} must be a JSON object, got {type(raw).__name__}")
    return raw


def _keys(raw: dict, allowed: set[str], required: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ModelDirError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    missing = sorted(required - set(raw))
    if missing:
        raise ModelDirError(f"{where}: missing keys {missing}")


def _config(cls, raw: Any, where: str, exclude: set[str] = frozenset()):
    raw = _object(raw, where)
    fields = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    _keys(raw, fields, set(), where)
    if "denoising_steps" in raw and isinstance(raw["denoising_steps"], list):
        raw = {**raw, "denoising_steps": tuple(raw["denoising_steps"])}
    try:
        return cls(**raw)
    except (TypeError, ValueError) as err:
        raise ModelDirError(f"{where}: {err}") from None


def _rfrt_manifest(path: Path) -> ModelManifest:
    root = path.parent
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"cannot read model manifest {path}: {err}") from None
    raw = _object(raw, str(path))
    _keys(raw, _TOP_KEYS, {"format", "dit", "text_encoder", "decoder"}, str(path))
    if raw["format"] != FORMAT:
        raise ModelDirError(f"{path}: format {raw['format']!r} is not supported (expected {FORMAT!r})")
    dit = _object(raw["dit"], f"{path}: dit")
    _keys(dit, {"config", "weights"}, {"config", "weights"}, f"{path}: dit")
    continuation = None
    if "continuation" in raw:
        spec = _object(raw["continuation"], f"{path}: continuation")
        _keys(spec, {"weights"}, {"weights"}, f"{path}: continuation")
        continuation = root / spec["weights"]
    comps = {}
    for name in ("text_encoder", "decoder"):
        spec = _object(raw[name], f"{path}: {name}")
        _keys(spec, {"kind", "path"}, {"kind"}, f"{path}: {name}")
        comps[name] = ComponentSpec(spec["kind"], root / spec["path"] if spec.get("path") is not None else None)
    return ModelManifest(
        root=root, layout="rfrt", dit_config=root / dit["config"], dit_weights=root / dit["weights"],
        text_encoder=comps["text_encoder"], tokenizer=None, decoder=comps["decoder"],
        cache=_config(CachePolicy, raw.get("cache", {}), f"{path}: cache"),
        sampler=_config(SamplerConfig, raw.get("sampler", {}), f"{path}: sampler"),
        video=_config(VideoSpec, raw.get("video", {}), f"{path}: video"), continuation_weights=continuation)


def _diffusers_manifest(root: Path) -> ModelManifest:
    sub = {name: root / name for name in ("transformer", "vae", "text_encoder", "tokenizer")}
    missing = [name for name, p in sub.items() if not p.is_dir()]
    if missing:
        raise ModelDirError(f"{root}: diffusers model directory lacks {missing}")
    config = sub["transformer"] / "config.json"
    return ModelManifest(root=root, layout="diffusers", dit_config=config if config.is_file() else None,
                         dit_weights=sub["transformer"],
                         text_encoder=ComponentSpec("umt5", sub["text_encoder"]), tokenizer=sub["tokenizer"],
                         decoder=ComponentSpec("wan_vae", sub["vae"]), cache=CachePolicy(),
                         sampler=SamplerConfig(), video=VideoSpec())


def read_manifest(path: str | os.PathLike) -> ModelManifest:
    """Parse a model directory (or its rfrt.json) without loading any weights."""
    path = Path(path)
    if not path.exists():
        raise ModelDirError(f"model directory {str(path)!r} does not exist")
    if path.is_file():
        if path.name != MANIFEST:
            raise ModelDirError(f"{path} is not a model directory or an {MANIFEST} manifest; pass a checkpoint "
                                "file with checkpoint= and its model directory with model=")
        return _rfrt_manifest(path)
    if (path / MANIFEST).is_file():
        return _rfrt_manifest(path / MANIFEST)
    if (path / "model_index.json").is_file():
        return _diffusers_manifest(path)
    raise ModelDirError(f"{path} is not a model directory: it has neither {MANIFEST} nor model_index.json")


def _text_encoder(m: ModelManifest, text_len: int, device, dtype):
    if m.text_encoder.kind == "umt5":
        from rfrt.text import UMT5TextEncoder
        return UMT5TextEncoder(m.text_encoder.path, m.tokenizer, max_length=text_len, device=device, dtype=dtype)
    from rfrt.text_vocab import VocabTextEncoder  # the default model's encoder; imported only when used
    return VocabTextEncoder.from_pretrained(m.text_encoder.path, device=device).eval().requires_grad_(False)


def _decoder(m: ModelManifest, device, dtype):
    from rfrt import decoders
    if m.decoder.kind == "pixel":
        return decoders.PixelDecoder()
    if m.decoder.kind == "wan_vae":
        return decoders.WanVAEDecoder(m.decoder.path, device=device, dtype=dtype)
    return decoders.TAEHVDecoder.from_file(m.decoder.path, device=device, dtype=dtype or torch.float32)


def load_model_dir(path: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
                   use_ema: bool = False, device: torch.device | str = "cpu",
                   dtype: torch.dtype | None = None) -> LoadedModel:
    """Load every component of a model directory.

    checkpoint: a DiT checkpoint (any layout `rfrt.models.load_model` reads, e.g. a Reward Forcing or
                Self-Forcing .pt) replacing the directory's DiT weights; the directory's config still applies,
                its continuation weights do not.
    use_ema:    with a Self-Forcing checkpoint, take `generator_ema`.
    dtype:      DiT (and decoder / text encoder) dtype; default the checkpoint's.
    A DiT whose config does not match its weights raises `rfrt.models.CheckpointError`.
    """
    from rfrt.models import ModelConfig, load_model

    m = read_manifest(path)
    config = ModelConfig.from_json(m.dit_config) if m.dit_config is not None else None
    source = Path(checkpoint) if checkpoint is not None else m.dit_weights
    dit = load_model(source, use_ema=use_ema, config=config, dtype=dtype, device=device).eval()
    dit.requires_grad_(False)
    text_encoder = _text_encoder(m, dit.config.text_len, device, dtype)
    decoder = _decoder(m, device, dtype)
    enc_dim = getattr(text_encoder, "dim", None)
    if enc_dim is not None and enc_dim != dit.config.text_dim:
        raise ModelDirError(f"{m.root}: the text encoder produces width {enc_dim}, the DiT takes "
                            f"text_dim={dit.config.text_dim}")
    if decoder.latent_channels != dit.config.out_dim:
        raise ModelDirError(f"{m.root}: the decoder takes {decoder.latent_channels} latent channels, the DiT "
                            f"produces out_dim={dit.config.out_dim}")
    continuation = None
    if m.continuation_weights is not None and checkpoint is None:
        continuation = load_model(m.continuation_weights, config=dit.config, dtype=next(dit.parameters()).dtype,
                                  device=device).state_dict()
    return LoadedModel(dit=dit, text_encoder=text_encoder, decoder=decoder, cache=m.cache, sampler=m.sampler,
                       video=m.video, continuation=continuation)


# ---- the writer ----
def write_model_dir(directory: str | os.PathLike, *, dit_config: ModelConfig, dit_weights: Mapping[str, torch.Tensor],
                    text_encoder, cache: CachePolicy, sampler: SamplerConfig, video: VideoSpec,
                    continuation_weights: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write an `rfrt-model/1` directory (the default model's layout: vocab text encoder, pixel decoder).

    dit_config / dit_weights: the DiT's ModelConfig and state dict (stored as fp32 safetensors).
    text_encoder: a `rfrt.text_vocab.VocabTextEncoder` (its own save() layout). cache, sampler, video: the
    manifest's sections, i.e. what the model streams with (training passes the config it trained with).
    continuation_weights: a second state dict of the same DiT for primed streams (manifest "continuation").
    Atomic: everything goes into a temporary directory beside `directory`, is read back and checked, then
    renamed into place (an existing directory is replaced only then). Non-finite weights raise ModelDirError
    before anything is written. Returns the directory.
    """
    for name, value, cls in (("cache", cache, CachePolicy), ("sampler", sampler, SamplerConfig),
                             ("video", video, VideoSpec)):
        if not isinstance(value, cls):
            raise TypeError(f"write_model_dir: {name} must be a {cls.__name__}, got {type(value).__name__}")
    target = Path(directory)
    _refuse_non_finite(dit_weights, "DiT", target)
    if continuation_weights is not None:
        _refuse_non_finite(continuation_weights, "continuation", target)
    _refuse_non_finite(text_encoder.state_dict(), "text encoder", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{target.name}.partial-*", f".{target.name}.old-*"):  # left by a writer that was killed
        for stale in target.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        _write_contents(tmp, dit_config, dit_weights, text_encoder, cache, sampler, video, continuation_weights)
        verify_model_dir(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def verify_model_dir(path: str | os.PathLike) -> None:
    """Raise ModelDirError unless `path` is a complete rfrt-model/1 directory: a valid manifest whose files all
    exist, DiT (and continuation) weights that load, match their config and are finite, a text encoder that
    loads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from rfrt.models import CausalWanDiT, ModelConfig

    m = read_manifest(path)
    if m.layout != "rfrt" or m.dit_config is None:
        raise ModelDirError(f"{path}: not an {FORMAT} directory")
    try:
        config = ModelConfig.from_json(m.dit_config)
    except ValueError as err:
        raise ModelDirError(str(err)) from None
    with torch.device("meta"):
        names = set(CausalWanDiT(config).state_dict())
    for what, file in (("DiT", m.dit_weights), ("continuation", m.continuation_weights)):
        if file is None:
            continue
        try:
            weights = load_file(str(file))
        except (OSError, SafetensorError) as err:
            raise ModelDirError(f"{file}: unreadable ({err})") from None
        if set(weights) != names:
            raise ModelDirError(f"{file}: tensors do not match {m.dit_config} (missing "
                                f"{sorted(names - set(weights))[:3]}, unexpected {sorted(set(weights) - names)[:3]})")
        _refuse_non_finite(weights, what, m.root)
    if m.text_encoder.kind == "vocab":
        from rfrt.text_vocab import VocabTextEncoder

        try:
            VocabTextEncoder.load(m.text_encoder.path)
        except (OSError, ValueError, SafetensorError) as err:
            raise ModelDirError(f"{m.text_encoder.path}: {err}") from None


def _refuse_non_finite(weights: Mapping[str, torch.Tensor], what: str, where: Path) -> None:
    bad = [n for n, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelDirError(f"{where}: {len(bad)} of {len(weights)} {what} tensors hold NaN or inf (first: "
                            f"{bad[:3]}); the weights are unusable (did training diverge?), nothing was written")


def _write_contents(d: Path, dit_config, dit_weights, text_encoder, cache, sampler, video, continuation) -> None:
    from safetensors.torch import save_file

    (d / "dit").mkdir()
    _write_json(d / "dit" / "config.json", _plain(dataclasses.asdict(dit_config)))
    sets = {"dit": dit_weights} if continuation is None else {"dit": dit_weights, "continuation": continuation}
    for name, weights in sets.items():
        (d / name).mkdir(exist_ok=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in weights.items()},
                  str(d / name / "model.safetensors"))
    text_encoder.save(d / "text_encoder")
    manifest = {
        "format": FORMAT, "dit": {"config": "dit/config.json", "weights": "dit/model.safetensors"},
        "text_encoder": {"kind": "vocab", "path": "text_encoder"}, "decoder": {"kind": "pixel"},
        "cache": _plain(dataclasses.asdict(cache)), "sampler": _plain(dataclasses.asdict(sampler)),
        "video": dataclasses.asdict(video)}
    if continuation is not None:
        manifest["continuation"] = {"weights": "continuation/model.safetensors"}
    _write_json(d / MANIFEST, manifest)
    for f in d.rglob("*"):  # on disk before the rename makes them visible under the target's name
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move `tmp` to `target`. A directory cannot be renamed over a non-empty one, so an existing target is
    first renamed aside; a kill between the two renames leaves no target, which a rerun re-exports."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _plain(obj: Any) -> Any:
    """JSON-ready copy: tuples become lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
