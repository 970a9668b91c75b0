"""Per-frame measurements of `rfrt inspect` (OpenCV, no learned weights), each in a stated unit.

Every frame is measured once, as it streams past, and reduced to a few numbers; nothing here keeps a frame
beyond the one before it (for the optical flow). The definitions, which the README repeats:

- analysis frame: the RGB frame shrunk (INTER_AREA, aspect kept, never enlarged) so that its longer side is at
  most `InspectConfig.analysis_size`; its grey version uses the ITU-R BT.601 weights (cv2.COLOR_RGB2GRAY).
- motion: dense Farneback (or DIS) optical flow from the previous analysis grey frame to this one, each flow
  component rescaled by the original/analysis size ratio of its axis, so magnitudes are pixels per frame of the
  *original* video. `motion_mean` is the mean magnitude over all pixels; `motion_p95` is its 95th percentile
  over pixels (the speed of the fastest-moving 5% of the picture, robust to a few outlier vectors).
- colour: the mean CIE L*a*b* colour (D65, sRGB input, OpenCV's float conversion: L in [0, 100]) over the
  analysis frame's pixels.
- sharpness: the variance of the 4-neighbour Laplacian (cv2.Laplacian, ksize=1) of the grey frame at the
  original resolution (shrinking would itself remove the detail that softening removes), in grey-level^2.
- similarity of two grey images: SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, C1 = (0.01 L)^2,
  C2 = (0.03 L)^2, L = 255) averaged over the picture, and PSNR = 10 log10(255^2 / MSE) dB, capped at 100 dB
  (identical images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FLOW_METHODS", "FrameMeasurer", "FrameMeasure", "psnr", "ssim", "import_cv2"]

FLOW_METHODS = ("farneback", "dis")
PSNR_CAP_DB = 100.0
# Below this many pixels on a side optical flow has no neighbourhood to work with (DIS refuses frames under 12
# px; Farneback returns noise); such videos get no motion numbers rather than wrong ones.
MIN_FLOW_SIDE = 12


def import_cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("rfrt inspect needs OpenCV: pip install 'rfrt[inspect]'") from e
    return cv2


@dataclass(frozen=True)
class FrameMeasure:
    """The numbers one frame contributes. motion_* are None for the first frame (no predecessor) and for
    frames too small for optical flow."""

    motion_mean: float | None  # px/frame at the original resolution
    motion_p95: float | None   # px/frame
    lab: tuple[float, float, float]  # mean L*, a*, b*
    sharpness: float           # Laplacian variance, grey-level^2, original resolution


class FrameMeasurer:
    """Measures a stream of uint8 RGB frames [H, W, 3] of one size, one frame at a time.

    measure(frame) -> (FrameMeasure, analysis grey frame uint8 [h, w]); the grey frame is returned so the
    caller can build its per-second mean images for the first-frame-copy similarity.
    """

    def __init__(self, height: int, width: int, analysis_size: int, flow: str):
        if flow not in FLOW_METHODS:
            raise ValueError(f"flow must be one of {FLOW_METHODS}, got {flow!r}")
        self._cv2 = import_cv2()
        self.height, self.width = height, width
        scale = min(1.0, analysis_size / max(height, width))
        self.small = (max(1, round(height * scale)), max(1, round(width * scale)))  # (h, w)
        # Per-axis factors back to original pixels (rounding makes them differ slightly from 1/scale).
        self._to_original = np.array([width / self.small[1], height / self.small[0]], dtype=np.float32)
        self.flow_possible = min(self.small) >= MIN_FLOW_SIDE
        self._flow_method = flow
        self._dis = None
        self._prev: np.ndarray | None = None

    def _flow(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        if self._flow_method == "dis":
            if self._dis is None:
                self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            return self._dis.calc(prev, cur, None)
        # Pyramid depth from the size: each level halves the frame, levels under ~16 px only add noise.
        levels = max(0, min(4, int(np.log2(min(prev.shape) / 16))))
        return cv2.calcOpticalFlowFarneback(prev, cur, None, pyr_scale=0.5, levels=levels, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)

    def measure(self, frame: np.ndarray) -> tuple[FrameMeasure, np.ndarray]:
        cv2 = self._cv2
        grey_full = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        sharpness = float(cv2.Laplacian(grey_full.astype(np.float32), cv2.CV_32F, ksize=1).var())
        h, w = self.small
        small = frame if (h, w) == frame.shape[:2] else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        grey = grey_full if small is frame else cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        lab = cv2.cvtColor(small.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)
        lab_mean = tuple(float(v) for v in lab.reshape(-1, 3).mean(0))
        motion_mean = motion_p95 = None
        if self._prev is not None and self.flow_possible:
            if np.array_equal(self._prev, grey):
                # A repeated frame moved by exactly 0 (a frozen stream is common; flow would add its own noise,
                # ~0.007 px/frame from Farneback on 16x16 frames).
                motion_mean = motion_p95 = 0.0
            else:
                mag = np.linalg.norm(self._flow(self._prev, grey) * self._to_original, axis=-1)
                motion_mean, motion_p95 = float(mag.mean()), float(np.percentile(mag, 95))
        self._prev = grey
        return FrameMeasure(motion_mean, motion_p95, lab_mean, sharpness), grey


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two grey images [h, w] (uint8 or float on the 0..255 scale); 1 = identical."""
    cv2 = import_cv2()
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images on the 0..255 scale, capped at PSNR_CAP_DB (identical images)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 255.0 ** 2 * 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return float(10 * np.log10(255.0 ** 2 / mse))
