"""BRISQUE no-reference image quality (lower is better; about 0–100), at the image's own size.

Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in the Spatial Domain", IEEE TIP
21(12), 2012. The features and the regressor follow OpenCV-contrib's `cv::quality::QualityBRISQUE`
(modules/quality/src/qualitybrisque.cpp) step for step, and the regressor is its model trained on
the LIVE R2 database (`brisque_live/`, shipped with fada; source and licence in its README), so the
score equals `cv2.quality.QualityBRISQUE_compute` to float rounding after OpenCV's clipping to
[0, 100] (tested where the contrib module is present). Only OpenCV's core and `ml` modules are
used: every OpenCV distribution has them, whichever of the three that fada's dependencies install
(opencv-python, -headless, -contrib-python, which share one `cv2` folder) was written last.

Per image: grey in [0, 1]; at scales 1 and 1/2 (bicubic) the MSCN coefficients
(I − μ) / (σ + 1/255), μ and σ from a 7×7 Gaussian (σ = 7/6, replicated border); an asymmetric
generalised Gaussian (AGGD) fitted by moment matching to the MSCN coefficients (2 features) and to
their products with the right, lower, lower-right and upper-right neighbours (4 each, the
neighbour zero past the border): 36 features, each scaled to [−1, 1] by the model's range, then an
ε-SVR with an RBF kernel. OpenCV clips the prediction to [0, 100]; fada keeps it as it is
(`brisque_score`), so equality with OpenCV holds after clipping. The image is never resized up:
the score is of the frames as they are.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np

MODEL_DIR = Path(__file__).with_name("brisque_live")
MODEL_FILE, RANGE_FILE = MODEL_DIR / "brisque_model_live.yml", MODEL_DIR / "brisque_range_live.yml"
EXTRACTOR = "brisque (OpenCV LIVE-R2 model, frames' own size)"
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # (row, column) steps: right, down, down-right, up-right


@functools.lru_cache(maxsize=1)
def _shape_ratio_table() -> tuple[np.ndarray, np.ndarray]:
    """The AGGD shape grid γ = 0.2, 0.201, … < 10 (accumulated as OpenCV does) and
    ρ(γ) = Γ(2/γ)² / (Γ(1/γ) Γ(3/γ)) at each."""
    shapes, gam = [], 0.2
    while gam < 10:
        shapes.append(gam)
        gam += 0.001
    shapes = np.array(shapes)
    ratios = np.array([math.gamma(2 / g) ** 2 / (math.gamma(1 / g) * math.gamma(3 / g)) for g in shapes])
    return shapes, ratios


def aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """(left σ, right σ, shape γ) of an asymmetric generalised Gaussian, by moment matching (γ NaN
    for values all of one sign).

    γ is the first grid value after which |ρ(γ) − R̂| grows, R̂ being the normalised ratio of the
    squared mean absolute value to the mean square (Lasmar et al., ICIP 2009), as OpenCV searches it.
    """
    values = values.astype(np.float64).ravel()  # sums in double, as cv::sum
    values[np.isnan(values)] = 0.0
    positive, negative = np.maximum(values, 0.0), np.minimum(values, 0.0)
    n_positive, n_negative = np.count_nonzero(positive), np.count_nonzero(negative)
    positive_square, negative_square = float(positive @ positive), float(negative @ negative)
    left = math.sqrt(negative_square / max(n_negative, 1))
    right = math.sqrt(positive_square / max(n_positive, 1))
    if left == 0 or right == 0:  # a flat image has no spread to fit
        return left, right, math.nan
    ratio_lr = left / right
    mean_absolute = (float(positive.sum()) - float(negative.sum())) / values.size
    r_hat = mean_absolute**2 / ((positive_square + negative_square) / values.size)
    r_norm = r_hat * (ratio_lr**3 + 1) * (ratio_lr + 1) / (ratio_lr**2 + 1) ** 2
    shapes, ratios = _shape_ratio_table()
    distance = np.abs(ratios - r_norm)
    rising = np.flatnonzero(distance[1:] > distance[:-1])
    return left, right, float(shapes[rising[0]] if len(rising) else shapes[-1])


def _neighbour(mscn: np.ndarray, step: tuple[int, int]) -> np.ndarray:
    """``mscn`` shifted so that each pixel holds its neighbour at ``step`` (0 past the border)."""
    dy, dx = step
    out = np.zeros_like(mscn)
    rows, cols = mscn.shape
    out[max(0, -dy) : rows - max(0, dy), : cols - dx] = mscn[max(0, dy) : rows + min(0, dy), dx:]
    return out


def brisque_features(grey: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a grey float32 image in [0, 1], ``(H, W)`` → ``(36,)``."""
    features = []
    for scale in (1, 2):
        size = (grey.shape[1] // scale, grey.shape[0] // scale)  # (W, H), as cv::Size
        image = cv2.resize(grey, size, interpolation=cv2.INTER_CUBIC)
        mu = cv2.GaussianBlur(image, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE)
        second = cv2.GaussianBlur(image * image, (7, 7), 7 / 6, borderType=cv2.BORDER_REPLICATE)
        sigma = np.sqrt(np.abs(second - mu * mu)) + np.float32(1 / 255)  # cv::pow(x, 0.5) takes |x|
        mscn = (image - mu) / sigma  # (H, W) float32
        left, right, shape = aggd_fit(mscn)
        features += [shape, (left**2 + right**2) / 2]
        for step in NEIGHBOURS:
            left, right, shape = aggd_fit(mscn * _neighbour(mscn, step))
            spread = math.sqrt(math.gamma(1 / shape)) / math.sqrt(math.gamma(3 / shape))
            mean = (right - left) * (math.gamma(2 / shape) / math.gamma(1 / shape)) * spread
            features += [shape, mean, left**2, right**2]
    return np.array(features, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _model():
    """(ε-SVR, (2, 36) feature range) of the shipped LIVE-R2 model, loaded once per process."""
    svm = cv2.ml.SVM_load(str(MODEL_FILE))
    storage = cv2.FileStorage(str(RANGE_FILE), cv2.FILE_STORAGE_READ)
    feature_range = storage.getNode("range").mat()
    storage.release()
    return svm, feature_range


def brisque_score(image: np.ndarray) -> float:
    """BRISQUE of one ``(H, W, 3)`` uint8 RGB image (or ``(H, W)`` grey), lower is better; NaN for a
    flat image (no local contrast to measure).

    The SVR's output as it is: about 0–100 on LIVE's photographs, below 0 for images cleaner than
    any of them (smooth synthetic faces), above 100 for pure noise. OpenCV clips it to [0, 100];
    that would tie every clean frame at 0, so fada does not (the original release does not either).
    """
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    features = brisque_features(image.astype(np.float32) * np.float32(1 / 255))
    if not np.isfinite(features).all():
        return math.nan
    svm, (low, high) = _model()
    scaled = -1 + 2 * (features - low) / (high - low)  # (36,) in [-1, 1] over LIVE's range
    return float(svm.predict(scaled[None].astype(np.float32))[1][0, 0])


def brisque(frames: np.ndarray) -> float:
    """Mean BRISQUE of ``(T, H, W, 3)`` uint8 RGB frames, each at its own size (NaN frames left out;
    NaN if every frame is flat)."""
    scores = [score for score in map(brisque_score, frames) if not math.isnan(score)]
    return float(np.mean(scores)) if scores else math.nan
