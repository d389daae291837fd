"""pipelines.metrics: Fréchet distance, TorchScript/SyncNet loaders, weight-free proxies."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch

from pipelines.errors import InputFileError
from pipelines.metrics import extractors, proxies
from pipelines.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_of_features

# ---------------------------------------------------------------------------------------------
# Fréchet distance


def sqrtm_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook form with a matrix square root (pytorch-fid's `calculate_frechet_distance`)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n1, n2", [(200, 150), (5, 300)])  # (5, 300): Σ1 has rank 4 < D = 8, singular
def test_frechet_matches_sqrtm(n1, n2):
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(8, 8))
    a = rng.normal(size=(n1, 8)) @ mix
    b = rng.normal(size=(n2, 8)) @ mix.T + 0.5
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    if n1 < 8:
        assert np.linalg.matrix_rank(stats_a[1]) == n1 - 1
    expected = sqrtm_frechet(*stats_a, *stats_b)
    eigenvalues = np.linalg.eigvals(stats_a[1] @ stats_b[1]).astype(complex)  # DESIGN §6 written out literally
    literal = (
        np.sum((stats_a[0] - stats_b[0]) ** 2) + np.trace(stats_a[1] + stats_b[1]) - 2 * np.sqrt(eigenvalues).real.sum()
    )
    assert literal == pytest.approx(expected, rel=1e-6, abs=1e-8)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    assert frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_frechet_known_answers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5))
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance_of_features(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    few = rng.normal(size=(4, 10))  # N < D: the low-rank route
    assert frechet_distance_of_features(few, few) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_of_features(few, few - 1.0) == pytest.approx(10.0, rel=1e-9)
    # two isotropic Gaussians: d² = ‖Δμ‖² + D (σ1 − σ2)²
    assert frechet_distance(np.zeros(3), np.eye(3), np.ones(3), 4 * np.eye(3)) == pytest.approx(3 + 3 * 1.0)


def test_feature_statistics_unbiased_and_checked():
    x = np.random.default_rng(2).normal(size=(10, 3))
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 9)
    assert mu.dtype == np.float64
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])


# ---------------------------------------------------------------------------------------------
# TorchScript loaders: tiny networks of the same contract


class TinyInception(torch.nn.Module):
    """clean-fid contract: m(x, return_features=True), x (N, 3, 299, 299) in [0, 255] → (N, 2048)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.shape[2] != 299 or x.shape[3] != 299:
            raise ValueError("expected 299 x 299")
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]  # channel means, tiled


class TinyI3D(torch.nn.Module):
    """StyleGAN-V contract: m(x, rescale=False, resize=False, return_features=True) → (N, 400)."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.shape[2] != 16 or x.shape[3] != 224:
            raise ValueError("expected 16 frames of 224 x 224")
        return x.mean(dim=(2, 3, 4)).repeat(1, 134)[:, :400]


class TinyR3D(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != 16 or x.shape[3] != 112:
            raise ValueError("expected 16 frames of 112 x 112")
        return x.mean(dim=(2, 3, 4))  # (N, 3): any width is allowed


class TinyDeep3D(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = torch.arange(257, dtype=x.dtype)[None]  # (1, 257)
        return coefficients * x.mean(dim=(1, 2, 3))[:, None]  # (N, 257)


class NoKeywords(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class WrongWidth(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 4)  # (N, 12), not 2048


def save_scripted(module: torch.nn.Module, path):
    torch.jit.script(module).save(str(path))
    return path


def constant_frames(colour, n=3, size=40):
    return np.broadcast_to(np.array(colour, np.uint8), (n, size, size, 3)).copy()


def test_inception_loader_contract(tmp_path):
    path = save_scripted(TinyInception(), tmp_path / "inception.pt")
    extractor = extractors.load_torchscript(path, extractors.INCEPTION)
    assert extractor.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert extractor.feature_dim == 2048
    features = extractor.features(constant_frames((200, 100, 50), n=5), batch_size=2)
    assert features.shape == (5, 2048)
    np.testing.assert_allclose(features[:, :3], [[200, 100, 50]] * 5, atol=1e-3)  # RGB order, [0, 255]


def test_i3d_loader_contract(tmp_path):
    path = save_scripted(TinyI3D(), tmp_path / "i3d.pt")
    extractor = extractors.load_torchscript(path, extractors.I3D)
    frames = constant_frames((255, 0, 127.5), n=35)
    clips = extractors.video_clips(frames)
    assert clips.shape == (2, 16, 40, 40, 3)  # 35 frames → two non-overlapping 16-frame clips
    features = extractor.features(clips)
    assert features.shape == (2, 400)
    np.testing.assert_allclose(features[0, :3], [1.0, -1.0, 0.0], atol=1e-2)  # [-1, 1]


def test_r3d_loader_contract(tmp_path):
    path = save_scripted(TinyR3D(), tmp_path / "r3d.pt")
    extractor = extractors.load_torchscript(path, extractors.R3D)
    assert extractor.feature_dim == 3
    features = extractor.features(extractors.video_clips(constant_frames((255, 0, 0), n=16)))
    expected = (np.array([1.0, 0.0, 0.0]) - extractors.KINETICS_MEAN) / extractors.KINETICS_STD
    np.testing.assert_allclose(features[0], expected, atol=1e-4)


def test_expression_loader_takes_the_expression_coefficients(tmp_path):
    path = save_scripted(TinyDeep3D(), tmp_path / "deep3d.pt")
    extractor = extractors.load_torchscript(path, extractors.EXPRESSION)
    assert extractor.feature_dim == 64
    features = extractor.features(constant_frames((255, 255, 255), n=2))  # x ≡ 1 in [0, 1]
    np.testing.assert_allclose(features, np.tile(np.arange(80, 144), (2, 1)), atol=1e-3)


def test_loader_rejects_files_that_break_the_contract(tmp_path):
    with pytest.raises(InputFileError, match="--inception-weights .*file not found"):
        extractors.load_torchscript(tmp_path / "absent.pt", extractors.INCEPTION)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(InputFileError, match="is not a TorchScript file"):
        extractors.load_torchscript(junk, extractors.INCEPTION)
    no_kwargs = save_scripted(NoKeywords(), tmp_path / "nokw.pt")
    with pytest.raises(InputFileError, match=r"does not follow the contract m\(x, return_features=True\)"):
        extractors.load_torchscript(no_kwargs, extractors.INCEPTION)
    wrong = save_scripted(WrongWidth(), tmp_path / "wrong.pt")
    with pytest.raises(InputFileError, match=r"returns features of shape \(2, 12\).*\(N, 2048\)"):
        extractors.load_torchscript(wrong, extractors.INCEPTION)


def test_syncnet_loader_records_hash_and_rejects_other_files(tmp_path):
    from syncnet_python import SyncNetModel

    torch.manual_seed(0)
    path = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetModel(num_layers_in_fc_layers=1024).state_dict(), path)
    loaded = extractors.load_syncnet(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = tmp_path / "other.model"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(InputFileError, match="is not a SyncNet state dict"):
        extractors.load_syncnet(wrong)


# ---------------------------------------------------------------------------------------------
# proxies


def random_similarity(rng, points):
    angle, scale, shift = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2.0), rng.uniform(-50, 50, 2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return scale * points @ rotation.T + shift


def test_similarity_align_undoes_a_similarity():
    rng = np.random.default_rng(3)
    shape = rng.normal(size=(30, 2))
    np.testing.assert_allclose(proxies.similarity_align(random_similarity(rng, shape), shape), shape, atol=1e-9)


def landmark_videos(seed, amplitude, n_videos=4, n_frames=40, n_points=30):
    """Per-video (T, P, 2) landmarks: base face + identity + expression modes × amplitude, posed randomly."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(100).normal(size=(n_points, 2)) * 10
    modes = np.random.default_rng(101).normal(size=(3, n_points, 2))  # fixed expression directions
    videos = []
    for _ in range(n_videos):
        identity = base + rng.normal(size=(n_points, 2))
        coefficients = amplitude * rng.normal(size=(n_frames, 3))
        frames = [random_similarity(rng, identity + np.tensordot(c, modes, axes=1)) for c in coefficients]
        videos.append(np.stack(frames))
    return videos


def test_e_fid_proxy_zero_for_identical_sets_and_growing_with_expression_change():
    reference = landmark_videos(seed=0, amplitude=1.0)
    same = proxies.e_fid_proxy(reference, reference, n_components=8)
    assert same.value == pytest.approx(0.0, abs=1e-9)
    assert (same.n_generated, same.n_reference, same.n_components) == (160, 160, 8)
    # the same expressions under new poses: alignment removes the pose
    rng = np.random.default_rng(7)
    reposed = [np.stack([random_similarity(rng, frame) for frame in video]) for video in reference]
    assert proxies.e_fid_proxy(reposed, reference, n_components=8).value < 1e-6
    values = [proxies.e_fid_proxy(landmark_videos(1, a), reference, n_components=8).value for a in (1.0, 2.0, 3.0)]
    assert values[0] < values[1] < values[2]
    assert values[2] > 10 * values[0]


def test_e_fid_proxy_needs_frames():
    with pytest.raises(ValueError, match=">= 2 face-mesh frames"):
        proxies.e_fid_proxy([np.zeros((1, 30, 2))], landmark_videos(0, 1.0))


def test_sharpness_prefers_sharp_frames():
    rng = np.random.default_rng(4)
    sharp = rng.integers(0, 256, size=(10, 64, 64, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in sharp])
    assert proxies.sharpness(sharp) > 5 * proxies.sharpness(blurred)
