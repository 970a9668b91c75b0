"""Export a trained student as an `rfrt-model/1` model directory (e.g. the embedded default model):

    python -m train.export_default --student runs/default/redmd/export --out python/rfrt/default_model

The student's export is already an `rfrt-model/1` directory whose manifest the training stage wrote from the
config it trained with (cache: `rollout.cache`, sampler: `sampler`, video: the data size). This reads it back
through `rfrt.model_dir` (loading every component as StreamGenerator will), then writes it to --out with the
one atomic model-directory writer. Nothing here restates a release default, so a student trained with another
EMA alpha, window or step list ships with exactly those.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfrt.model_dir import ModelDirError, load_model_dir, read_manifest, write_model_dir


def export_model(student: str | Path, out: str | Path) -> Path:
    """Copy the model directory `student` (a training stage's export) to `out`, manifest included."""
    manifest = read_manifest(student)
    if (manifest.text_encoder.kind, manifest.decoder.kind) != ("vocab", "pixel"):
        raise ModelDirError(f"{student}: a training export has a vocab text encoder and the pixel decoder, this "
                            f"one {manifest.text_encoder.kind!r} / {manifest.decoder.kind!r}")
    model = load_model_dir(student)
    return write_model_dir(out, dit_config=model.dit.config, dit_weights=model.dit.state_dict(),
                           text_encoder=model.text_encoder, cache=model.cache, sampler=model.sampler,
                           video=model.video)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, type=Path, help="model directory exported by a training stage")
    ap.add_argument("--out", required=True, type=Path, help="model directory to write (replaced atomically)")
    args = ap.parse_args(argv)
    print(export_model(args.student, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
