"""Image and feature-distribution metrics of ``genzip eval`` (numpy / scipy only).

Invariants:

* ``psnr`` and ``ssim`` take the *reference* first; the peak / data range is the
  reference's ``max - min`` over the whole batch (as ``genzip sample --vs-full``), so a
  figure does not move when the compressed side drifts out of range. Identical inputs
  give ``psnr = inf`` and ``ssim = 1``.
* ``ssim`` is Wang et al. (2004): Gaussian window sigma 1.5 truncated to 11x11,
  K1 = 0.01, K2 = 0.03, per image and channel over the spatial axes, averaged over the
  positions whose window lies inside the image (all positions when the image is smaller
  than the window), then over images and channels.
* ``frechet_distance`` is the FID formula on given statistics,
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``; it is >= 0 up to rounding and 0 for
  equal statistics.
"""

from __future__ import annotations

import warnings

import numpy as np

_SIGMA, _RADIUS, _K1, _K2 = 1.5, 5, 0.01, 0.03


def data_range(reference: np.ndarray) -> float:
    peak = float(np.max(reference) - np.min(reference))
    return peak if peak > 0 else 1.0  # a constant reference: unit range, so the figures stay finite


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB: ``10 log10(range^2 / MSE)`` with the reference's range; inf when equal."""
    reference = np.asarray(reference, dtype=np.float64)
    mse = float(np.mean((reference - np.asarray(other, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range(reference) ** 2 / mse))


def ssim(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean SSIM of ``[..., H, W]`` arrays (leading axes are images and channels)."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(other, dtype=np.float64)
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"ssim needs two arrays of one shape [..., H, W], got {x.shape} and {y.shape}")
    c1, c2 = (_K1 * data_range(x)) ** 2, (_K2 * data_range(x)) ** 2
    x = x.reshape(-1, *x.shape[-2:])
    y = y.reshape(-1, *y.shape[-2:])
    # Filter only the spatial axes; truncate so that the window is exactly 2*_RADIUS + 1 wide.
    sigma, truncate = (0.0, _SIGMA, _SIGMA), _RADIUS / _SIGMA

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma, truncate=truncate, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    h, w = smap.shape[-2:]
    if h > 2 * _RADIUS and w > 2 * _RADIUS:  # drop the border, where the window reads reflected pixels
        smap = smap[:, _RADIUS : h - _RADIUS, _RADIUS : w - _RADIUS]
    return float(np.mean(smap))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of ``[N, D]`` features, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature statistics need [N >= 2, D] features, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    with warnings.catch_warnings():
        # A singular product (fewer samples than feature dimensions) warns; the check below
        # handles the case where that makes the root unusable.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        # Singular product (fewer samples than feature dimensions): the standard FID fix,
        # nudge both covariances by a tiny multiple of the identity.
        eps = 1e-6 * np.eye(sigma1.shape[0])
        covmean = linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)  # rounding leaves an imaginary part of order 1e-10
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))
