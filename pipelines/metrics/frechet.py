"""Fréchet distance between two Gaussians fitted to feature sets (FID, FVD, FVD-R, E-FID).

d² = ‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2·Σ_i Re(√λ_i(Σ1Σ2))            (DESIGN §6)

The Fréchet (2-Wasserstein) distance between N(μ1, Σ1) and N(μ2, Σ2) is Dowson & Landau, J.
Multivariate Anal. 1982; its use on Inception features is FID (Heusel et al., NeurIPS 2017).
Tr((Σ1Σ2)^½) is the sum of the square roots of the eigenvalues of Σ1Σ2. Σ1Σ2 is similar to the
symmetric PSD matrix M = Σ1^½ Σ2 Σ1^½ (Mathiasen & Hvilshøj, "Backpropagating through Fréchet
Inception Distance", 2020), so the two share their eigenvalues; they are computed from M with a
symmetric eigensolver (`eigvalsh`), which is several times faster than a general `eig` of Σ1Σ2 at
D = 2048 and returns real values. Rounding can leave eigenvalues slightly below zero; the real part
of the square root of a negative number is 0, so they are clipped at 0. No `scipy.linalg.sqrtm`,
which is slow and unstable on the singular covariances of N ≤ D samples.

With the features at hand and fewer samples than dimensions (min(N1, N2) ≤ D, e.g. a small FID
set of 2048-d features), Σ1Σ2 = X1ᵀX1 X2ᵀX2 / c with the centred features X_i and
c = (N1 − 1)(N2 − 1); its non-zero eigenvalues are those of (X1X2ᵀ)(X1X2ᵀ)ᵀ / c (XY and YX share
their non-zero eigenvalues, Horn & Johnson, Matrix Analysis, Thm 1.3.22), so the trace term is
the sum of the singular values of X1X2ᵀ / √c: an N1 × N2 problem instead of D × D, same value.
Everything is float64; covariances are unbiased (divide by N − 1).
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, float64, N ≥ 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need an (N, D) array with N >= 2 for a covariance, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (eigenvalues below 0 from rounding clipped to 0)."""
    values, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² between N(mu1, sigma1) and N(mu2, sigma2) with the eigenvalue form of the trace term."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    eigenvalues = np.linalg.eigvalsh(root1 @ sigma2 @ root1)  # (D,): the eigenvalues of Σ1Σ2
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()  # Σ Re(√λ_i)
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(d2, 0.0)  # rounding can leave −1e-12 for identical sets


def frechet_distance_of_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """d² between Gaussians fitted to two ``(N_i, D)`` feature sets (low-rank route when N ≤ D)."""
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    n1, n2, dim = len(features1), len(features2), mu1.size
    if min(n1, n2) > dim:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    x1 = np.asarray(features1, np.float64) - mu1  # (N1, D) centred
    x2 = np.asarray(features2, np.float64) - mu2  # (N2, D)
    cross = x1 @ x2.T / np.sqrt((n1 - 1) * (n2 - 1))  # (N1, N2)
    trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()  # Σ √λ_i(Σ1Σ2) over the non-zero λ_i
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt), 0.0)
