"""Benchmark artifacts: every saved JSON carries the device, the commit and each benchmark's config.

Run: pytest benchmarks/ --benchmark-json=benchmarks/results/<name>.json
(pytest-benchmark already records machine_info and commit_info; this adds the accelerator and torch build.)
"""
from __future__ import annotations

import os
import platform

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads():
    """CPU timings use RFRT_BENCH_THREADS threads (default 1): tiny tensors gain nothing from intra-op threads,
    and on a shared machine spinning OpenMP workers made per-chunk times 4x worse (measured here)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("RFRT_BENCH_THREADS", "1")))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        machine_info["device"] = torch.cuda.get_device_name()
        machine_info["cuda"] = torch.version.cuda
    else:
        machine_info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    try:
        import rfrt

        machine_info["rfrt_build"] = rfrt.build_info()
    except ImportError:
        machine_info["rfrt_build"] = None


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Add fast/reference speed-up ratios for benchmarks that declare a `pair` in their extra_info."""
    by_name = {b["name"]: b for b in output_json["benchmarks"]}
    for b in output_json["benchmarks"]:
        ref = b.get("extra_info", {}).get("reference")
        if ref and ref in by_name:
            b["extra_info"]["speedup_vs_reference"] = by_name[ref]["stats"]["median"] / b["stats"]["median"]


@pytest.fixture
def cuda_only():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
