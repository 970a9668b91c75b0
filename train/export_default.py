"""Export a trained student as an `rfrt-model/1` model directory (the embedded default model's layout).

    python train/export_default.py --student runs/default/redmd/export --out python/rfrt/default_model \
        --height 16 --width 16

Copies the student's DiT (dit/config.json, dit/model.safetensors: the generator EMA weights the DMD stage
exported) and its VocabTextEncoder, and writes rfrt.json with the streaming cache (chunk 3, sink 3, window 9,
EMA alpha 0.999 as released), the sampler (warped steps 1000/750/500/250, shift 5) and the video size.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# Runnable from a source checkout: appended, never prepended, so an installed rfrt (with its compiled core)
# wins over the source tree, also in the subprocesses of whoever imports this module.
for _p in (_ROOT, _ROOT / "python"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

from rfrt.cache import CachePolicy  # noqa: E402
from rfrt.sampling import SamplerConfig  # noqa: E402


def write_model_dir(student: Path, out: Path, height: int, width: int, cache: CachePolicy,
                    sampler: SamplerConfig, fps: int = 16) -> Path:
    """Copy the student's dit/ and text_encoder/ into `out` and write its rfrt.json manifest."""
    for part in ("dit/config.json", "dit/model.safetensors", "text_encoder/config.json",
                 "text_encoder/vocab.json", "text_encoder/model.safetensors"):
        if not (student / part).is_file():
            raise FileNotFoundError(f"student model directory {student} lacks {part}")
    out.mkdir(parents=True, exist_ok=True)
    for part in ("dit", "text_encoder"):
        shutil.copytree(student / part, out / part, dirs_exist_ok=True)
    cache_fields = dataclasses.asdict(cache)
    sampler_fields = dataclasses.asdict(sampler)
    sampler_fields["denoising_steps"] = list(sampler_fields["denoising_steps"])
    manifest = {"format": "rfrt-model/1",
                "dit": {"config": "dit/config.json", "weights": "dit/model.safetensors"},
                "text_encoder": {"kind": "vocab", "path": "text_encoder"},
                "decoder": {"kind": "pixel"},
                "cache": cache_fields,
                "sampler": sampler_fields,
                "video": {"height": height, "width": width, "fps": fps}}
    (out / "rfrt.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, type=Path, help="model directory exported by the DMD stage")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--height", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--sink-frames", type=int, default=3)
    ap.add_argument("--window-frames", type=int, default=9)
    ap.add_argument("--chunk-frames", type=int, default=3)
    args = ap.parse_args()
    cache = CachePolicy(sink_frames=args.sink_frames, window_frames=args.window_frames,
                        chunk_frames=args.chunk_frames)
    print(write_model_dir(args.student, args.out, args.height, args.width, cache, SamplerConfig()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
