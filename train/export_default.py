"""Export a trained student as an `rfrt-model/1` model directory (e.g. the embedded default model):

    python -m train.export_default --student runs/default/redmd/export --out python/rfrt/default_model \
        [--continuation runs/default/continue_obj3/export | --keep-continuation]

The student's export is already an `rfrt-model/1` directory whose manifest the training stage wrote from the
config it trained with (cache: `rollout.cache`, sampler: `sampler`, video: the data size). This reads it back
through `rfrt.model_dir` (loading every component as StreamGenerator will), then writes it to --out with the
one atomic model-directory writer. Nothing here restates a release default, so a student trained with another
EMA alpha, window or step list ships with exactly those.

--continuation adds a second student's DiT weights as the directory's continuation weights (manifest
"continuation": what a stream primed from a context runs on). It must be the same DiT (config) with the same
text encoder and stream settings, i.e. a student regressed from --student (stage regress, model.student_init).
--keep-continuation instead keeps the continuation weights --out already has, when only the stream weights change.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from rfrt.model_dir import ModelDirError, load_model_dir, read_manifest, write_model_dir


def _training_export(path: str | Path):
    manifest = read_manifest(path)
    if (manifest.text_encoder.kind, manifest.decoder.kind) != ("vocab", "pixel"):
        raise ModelDirError(f"{path}: a training export has a vocab text encoder and the pixel decoder, this "
                            f"one {manifest.text_encoder.kind!r} / {manifest.decoder.kind!r}")
    return load_model_dir(path)


def _check_same_stream(model, other, student: str | Path, source: str | Path) -> None:
    """ModelDirError unless `other` (where the continuation weights come from) has `model`'s DiT config, text
    encoder, cache, sampler and size: a primed stream swaps the DiT's weights and nothing else."""
    mine, theirs = model.text_encoder.state_dict(), other.text_encoder.state_dict()
    same_text = (list(model.text_encoder.vocab) == list(other.text_encoder.vocab) and mine.keys() == theirs.keys()
                 and all(torch.equal(mine[k], theirs[k]) for k in mine))
    for what, a, b in (("DiT config", model.dit.config, other.dit.config), ("cache", model.cache, other.cache),
                       ("sampler", model.sampler, other.sampler), ("video", model.video, other.video),
                       ("text encoder", True, same_text)):
        if a != b:
            raise ModelDirError(f"{source}: its {what} differs from {student}'s; continuation weights must be the "
                                "same DiT with the same text encoder and stream settings")


def export_model(student: str | Path, out: str | Path, continuation: str | Path | None = None,
                 keep_continuation: bool = False) -> Path:
    """Copy the model directory `student` (a training stage's export) to `out`, manifest included, with
    `continuation`'s DiT weights as its continuation weights when given, or with `keep_continuation` the
    continuation weights `out` already has (new stream weights beside the same primed-stream weights). Either
    must be the same DiT, text encoder, cache, sampler and size, else ModelDirError."""
    if continuation is not None and keep_continuation:
        raise ValueError("give --continuation or --keep-continuation, not both")
    model = _training_export(student)
    extra = None
    if continuation is not None:
        other = _training_export(continuation)
        _check_same_stream(model, other, student, continuation)
        extra = other.dit.state_dict()
    elif keep_continuation:
        current = load_model_dir(out)
        if current.continuation is None:
            raise ModelDirError(f"{out}: --keep-continuation, but it has no continuation weights to keep")
        _check_same_stream(model, current, student, out)
        extra = {k: v.clone() for k, v in current.continuation.items()}  # out is rewritten under them
    return write_model_dir(out, dit_config=model.dit.config, dit_weights=model.dit.state_dict(),
                           text_encoder=model.text_encoder, cache=model.cache, sampler=model.sampler,
                           video=model.video, continuation_weights=extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, type=Path, help="model directory exported by a training stage")
    ap.add_argument("--out", required=True, type=Path, help="model directory to write (replaced atomically)")
    ap.add_argument("--continuation", type=Path, help="a student regressed from --student to continue a given "
                    "video: its DiT weights become the primed streams' weights")
    ap.add_argument("--keep-continuation", action="store_true", help="keep the continuation weights --out "
                    "already has (new stream weights, the same primed-stream weights)")
    args = ap.parse_args(argv)
    print(export_model(args.student, args.out, args.continuation, args.keep_continuation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
