"""The PNG picture of an `InspectReport`: the per-second curves over time, chunk boundaries and stall onset marked.

matplotlib (the `inspect` extra) is imported only here, through its object API (no pyplot, so no global figure
state), and rendered with the Agg canvas: it needs no display.
"""
from __future__ import annotations

import io
import os

from .report import InspectReport, atomic_write
from .summary import chunk_boundaries

__all__ = ["require_matplotlib", "plot_report", "render_png"]

MISSING = "the plot needs matplotlib: pip install 'rfrt[inspect]' (or pip install matplotlib)"


def require_matplotlib() -> None:
    """Raise ImportError with the install hint when matplotlib is missing (check before a long analysis)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(MISSING) from e


def _none_to_nan(values):
    return [float("nan") if v is None else v for v in values]


def render_png(report: InspectReport) -> bytes:
    """The plot as PNG bytes."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c, s = report.seconds, report.summary
    # A second's value is drawn at its middle (a last, partial second at the middle of what it holds).
    t = [x + n / report.fps / 2 for x, n in zip(c.time_s, c.frames)]
    fig = Figure(figsize=(11, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True)
    ax = axes[0]
    ax.plot(t, _none_to_nan(c.motion_mean), label="mean", color="tab:blue")
    ax.plot(t, _none_to_nan(c.motion_p95), label="p95", color="tab:cyan", alpha=0.8)
    if report.seams:
        ax.scatter([x.time_s for x in report.seams], [x.motion for x in report.seams], s=6, color="tab:orange",
                   zorder=3, label="at chunk boundaries")
    if s.stall_threshold:
        ax.axhline(s.stall_threshold, color="tab:red", ls=":", lw=1, label="stall threshold")
    ax.set_ylabel("motion (px/frame)")
    ax.set_ylim(bottom=0)
    axes[1].plot(t, c.copy_ssim, color="tab:purple")
    axes[1].set_ylabel("SSIM vs 1st second")
    axes[1].set_ylim(min(0.0, min(c.copy_ssim)), 1.02)
    axes[2].plot(t, c.colour_de, color="tab:green")
    axes[2].set_ylabel("colour dE vs 1st second")
    # Fixed minimum spans, so that noise (dE < 1 is invisible to the eye; +-5 % sharpness) does not look like drift.
    axes[2].set_ylim(0, max(1.0, 1.05 * max(c.colour_de)))
    first = c.sharpness[0]
    rel = [v / first if first > 0 else float("nan") for v in c.sharpness]
    axes[3].plot(t, rel, color="tab:brown")
    finite = [v for v in rel if v == v]
    if finite:
        axes[3].set_ylim(min(0.95, min(finite) - 0.02), max(1.05, max(finite) + 0.02))
    axes[3].axhline(1.0, color="grey", lw=0.5)
    axes[3].set_ylabel("sharpness / 1st second")
    axes[3].set_xlabel("time (s)")
    bounds = ([b / report.fps for b in chunk_boundaries(report.frames, report.chunk_frames,
                                                         report.first_chunk_frames)] if report.chunk_frames else [])
    # Past ~150 boundaries full-height lines would grey out the curves: they become ticks along the top instead.
    low = 0.0 if len(bounds) <= 150 else 0.94
    for a in axes:
        if bounds:
            a.vlines(bounds, low, 1, transform=a.get_xaxis_transform(), color="grey", lw=0.6, alpha=0.5)
        if s.stall_onset_s is not None:
            a.axvline(s.stall_onset_s, color="tab:red", lw=1.5)
        a.grid(axis="y", alpha=0.25)
        a.set_xlim(0, report.duration_s)
    if s.stall_onset_s is not None:
        axes[0].text(s.stall_onset_s, 0.95, f" stall onset {s.stall_onset_s:.2f} s", color="tab:red",
                     transform=axes[0].get_xaxis_transform(), va="top")
    axes[0].legend(loc="upper right", fontsize=8)
    name = os.path.basename(report.source) if report.source else "frames"
    chunks = (f", chunks of {report.chunk_frames} frames (grey {'lines' if low == 0 else 'ticks'})" if bounds
              else "")
    fig.suptitle(f"{name}: {report.frames} frames, {report.duration_s:.1f} s at {report.fps:.2f} fps{chunks}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_report(report: InspectReport, path: str | os.PathLike) -> None:
    """Write the plot to `path` (PNG), atomically."""
    atomic_write(path, render_png(report))
