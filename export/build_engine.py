"""Build a TensorRT engine from the chunk-step ONNX of export/export_onnx.py.

Written against TensorRT's documented Python API (TensorRT 10): ``Builder`` -> ``create_network`` ->
``OnnxParser.parse_from_file`` -> ``BuilderConfig`` (precision flags, workspace pool, one optimisation profile)
-> ``build_serialized_network``. TensorRT is imported only when an engine is actually built; everything before
that (arguments, the ONNX's input shapes, FP8 prerequisites) is checked first and works without it.

Precision: "bf16" (default; the released model runs in bf16) or "fp16" lets TensorRT pick reduced-precision
kernels for an fp32 ONNX (a weakly typed network); "fp32" disables them. ``--fp8`` additionally allows FP8
kernels, which TensorRT only uses for explicitly quantised layers (QuantizeLinear / DequantizeLinear nodes, e.g.
from NVIDIA ModelOpt): the builder refuses an ONNX without them instead of silently building a non-FP8 engine.
Notes: the timestep sinusoid is computed in fp64 in the graph; TensorRT's ONNX parser casts DOUBLE to FLOAT
(documented limited support), which costs < 1e-6 relative on the sinusoid of t <= 1000.

    python export/build_engine.py chunk.onnx --out chunk.plan --precision bf16
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16")
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class EngineBuildConfig:
    """What to build.

    onnx_path: the exported graph (weights may sit in an external data file beside it).
    engine_path: where the serialized engine (plan) is written.
    precision: "fp32" | "fp16" | "bf16"; fp8: also allow FP8 kernels (needs Q/DQ nodes in the ONNX).
    workspace_gib: TensorRT workspace memory pool limit, GiB.
    shapes: (input name, shape) overrides, only for inputs whose ONNX shape is not static.
    optimization_level: builder optimisation level 0..5 (None: TensorRT's default, 3).
    """

    onnx_path: Path
    engine_path: Path
    precision: str = "bf16"
    fp8: bool = False
    workspace_gib: float = 8.0
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"EngineBuildConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.workspace_gib, (int, float)) or self.workspace_gib <= 0:
            raise ValueError(f"EngineBuildConfig.workspace_gib must be positive, got {self.workspace_gib!r}")
        level = self.optimization_level
        if level is not None and (not isinstance(level, int) or not 0 <= level <= 5):
            raise ValueError(f"EngineBuildConfig.optimization_level must be an int in 0..5, got {level!r}")
        if not Path(self.onnx_path).is_file():
            raise FileNotFoundError(f"ONNX file {self.onnx_path} does not exist (export it with export/export_onnx.py)")
        names = [name for name, _ in self.shapes]
        if len(set(names)) != len(names):
            raise ValueError(f"EngineBuildConfig.shapes names an input twice: {names}")
        for name, shape in self.shapes:
            if not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
                raise ValueError(f"EngineBuildConfig.shapes[{name!r}] must be positive ints, got {shape!r}")


def _load_graph(onnx_path: Path):
    import onnx

    # Structure only: the weights (possibly GBs of external data) are not needed to read shapes or op types.
    return onnx.load(str(onnx_path), load_external_data=False).graph


def onnx_input_shapes(onnx_path: str | Path, overrides: tuple[tuple[str, tuple[int, ...]], ...] = ()
                      ) -> dict[str, tuple[int, ...]]:
    """Static shape of every graph input (initializers excluded), from the ONNX, with `overrides` applied.

    A dimension that is symbolic or unknown must be given in `overrides`; an override must have the input's
    rank and agree with its static dimensions. Raises ValueError naming the input otherwise.
    """
    graph = _load_graph(Path(onnx_path))
    initializers = {init.name for init in graph.initializer}
    given = dict(overrides)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in value.type.tensor_type.shape.dim]
        if value.name in given:
            shape = tuple(given.pop(value.name))
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise ValueError(f"shape override {shape} for input {value.name!r} does not fit its ONNX shape "
                                 f"{tuple('?' if d is None else d for d in dims)}")
        elif None in dims:
            raise ValueError(f"input {value.name!r} has a dynamic shape {tuple('?' if d is None else d for d in dims)}"
                             f"; give it with --shape {value.name}=D0xD1x...")
        else:
            shape = tuple(dims)
        shapes[value.name] = shape
    if given:
        raise ValueError(f"shape overrides name inputs the ONNX does not have: {sorted(given)} "
                         f"(inputs: {sorted(shapes)})")
    return shapes


def has_explicit_quantization(onnx_path: str | Path) -> bool:
    """Whether the graph carries Q/DQ nodes (the only layers TensorRT runs in FP8)."""
    return any(node.op_type in _QDQ_OPS for node in _load_graph(Path(onnx_path)).node)


def check_build(cfg: EngineBuildConfig) -> dict[str, tuple[int, ...]]:
    """Everything checkable without TensorRT: returns the optimisation-profile shapes per input."""
    shapes = onnx_input_shapes(cfg.onnx_path, cfg.shapes)
    if cfg.fp8 and not has_explicit_quantization(cfg.onnx_path):
        raise ValueError(f"--fp8: {cfg.onnx_path} has no QuantizeLinear/DequantizeLinear nodes, so TensorRT would "
                         "run no layer in FP8; quantise the ONNX first (e.g. NVIDIA ModelOpt FP8 PTQ)")
    return shapes


def build_engine(cfg: EngineBuildConfig) -> Path:
    """Build and write the serialized engine; returns its path. Needs TensorRT (and a GPU)."""
    shapes = check_build(cfg)
    from rfrt.engine.tensorrt import import_tensorrt

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external weight files next to the ONNX are found.
    if not parser.parse_from_file(str(cfg.onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {cfg.onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    if cfg.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif cfg.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if cfg.fp8:
        config.set_flag(trt.BuilderFlag.FP8)
    if cfg.optimization_level is not None:
        config.builder_optimization_level = cfg.optimization_level
    # One profile, min = opt = max: the chunk step has one static shape per phase.
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in shapes:
            raise RuntimeError(f"TensorRT network input {tensor.name!r} is not an input of the ONNX graph")
        shape = shapes[tensor.name]
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    out = Path(cfg.engine_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))
    return out


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants NAME=D0xD1x..., got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Build a TensorRT engine from the rfrt chunk-step ONNX "
                                             "(needs TensorRT: `pip install tensorrt` on a GPU machine).")
    ap.add_argument("onnx", type=Path, help="ONNX from export/export_onnx.py")
    ap.add_argument("--out", type=Path, required=True, help="serialized engine (plan) to write")
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16")
    ap.add_argument("--fp8", action="store_true", help="allow FP8 kernels (the ONNX must carry Q/DQ nodes)")
    ap.add_argument("--workspace-gib", type=float, default=8.0)
    ap.add_argument("--optimization-level", type=int, choices=range(6), metavar="{0..5}")
    ap.add_argument("--shape", type=_shape_arg, action="append", default=[],
                    help="NAME=D0xD1x... for an input whose ONNX shape is dynamic (repeatable)")
    ap.add_argument("--check-only", action="store_true",
                    help="validate the arguments and print the profile shapes, without TensorRT")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = EngineBuildConfig(onnx_path=args.onnx, engine_path=args.out, precision=args.precision, fp8=args.fp8,
                                workspace_gib=args.workspace_gib, shapes=tuple(args.shape),
                                optimization_level=args.optimization_level)
        shapes = check_build(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, shape in shapes.items():
        print(f"profile {name}: {'x'.join(map(str, shape))}")
    if args.check_only:
        return 0
    try:
        path = build_engine(cfg)
    except ImportError as err:  # TensorRTUnavailable (with install instructions), or rfrt itself missing
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"wrote {path} ({cfg.precision}{' + fp8' if cfg.fp8 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
