"""The DiT's weight sets: the stream's own, and (where the model ships them) the continuation weights that a
stream primed from a context runs on (manifest "continuation", rfrt.model_dir).

A model trained to start from noise and one trained to continue a given video are the same network with
different weights (on the default model each does its own job better: train/results/default_model.md), so the
generator holds both and copies the set a stream needs into the DiT's own tensors at reset(). Copying in place
keeps every tensor where it is, so CUDA graphs captured over the DiT stay valid.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["WeightSets", "STREAM", "CONTINUATION"]

STREAM, CONTINUATION = "stream", "continuation"


class WeightSets:
    """dit's weights (STREAM) and `continuation`, a state dict of the same DiT (CONTINUATION, optional).

    use(name) makes the DiT run on that set; `current` says which it runs on. Without continuation weights
    there is one set and use(CONTINUATION) keeps the stream's (what every checkpoint without them primes with).
    """

    def __init__(self, dit: torch.nn.Module, continuation: Mapping[str, Tensor] | None = None) -> None:
        self.dit = dit
        self.current = STREAM
        self._sets: dict[str, dict[str, Tensor]] = {}
        if continuation is None:
            return
        own = dit.state_dict()
        if set(continuation) != set(own):
            missing, extra = sorted(set(own) - set(continuation)), sorted(set(continuation) - set(own))
            raise ValueError(f"the continuation weights do not match the DiT (missing {missing[:3]}, unexpected "
                             f"{extra[:3]})")
        for name, t in continuation.items():
            if t.shape != own[name].shape:
                raise ValueError(f"continuation weight {name!r} has shape {tuple(t.shape)}, the DiT's is "
                                 f"{tuple(own[name].shape)}")
        self._sets[STREAM] = {k: v.detach().clone() for k, v in own.items()}
        self._sets[CONTINUATION] = {k: v.detach().to(device=own[k].device, dtype=own[k].dtype)
                                    for k, v in continuation.items()}

    def use(self, name: str) -> str:
        """Run the DiT on weight set `name` (STREAM or CONTINUATION). -> the set it now runs on."""
        if name not in (STREAM, CONTINUATION):
            raise ValueError(f"weight set must be {STREAM!r} or {CONTINUATION!r}, got {name!r}")
        if not self._sets or name == self.current:
            return self.current
        with torch.no_grad():
            for key, t in self.dit.state_dict().items():
                t.copy_(self._sets[name][key])
        self.current = name
        return name
