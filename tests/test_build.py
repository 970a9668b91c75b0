"""The CMake options behave as documented: RFRT_CUDA=ON without a compiler fails loudly, bad values are named."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _configure(tmp_path, value, env_extra):
    if not shutil.which("cmake"):
        pytest.skip("cmake not installed")
    env = dict(os.environ, **env_extra)
    return subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DRFRT_CUDA={value}"],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cuda_on_without_a_compiler_fails_loudly(tmp_path):
    done = _configure(tmp_path, "ON", {"CUDACXX": str(tmp_path / "no-such-nvcc")})
    assert done.returncode != 0
    assert "RFRT_CUDA=ON but no CUDA compiler was found" in done.stderr


def test_unknown_cuda_option_is_named(tmp_path):
    done = _configure(tmp_path, "MAYBE", {})
    assert done.returncode != 0
    assert "RFRT_CUDA must be AUTO, ON or OFF (got 'MAYBE')" in done.stderr
