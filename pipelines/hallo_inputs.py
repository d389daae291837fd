"""The hallo family's per-clip face inputs from fada's own preprocessing (docs/DESIGN.md §3c).

Made the way Hallo's `ImageProcessor.preprocess` and `hallo.utils.util.get_mask` make them, from
the 468-point mediapipe face mesh (`pipelines.faces`, the same topology as Hallo's FaceLandmarker):

- face region (the face locator's input): the box of the face-oval points, grown 1.2×, hard;
- lip box: the box of the lip points, grown 2×;
- at 64×64, Gaussian-blurred (face 51×51, lip 31×31) and min-max normalised: lip = the blurred lip
  box, face = blurred face − lip (saturating), full (pose/background) = 1 − blurred face; each
  resized (bilinear) to the four UNet resolutions (latent side / 1, 2, 4, 8);
- face embedding: InsightFace's (ArcFace, 512-d) of the largest face, from the folder
  `config.face_analysis_path` (Hallo's ``face_analysis/``); InsightFace and its models are optional
  (``pip install 'fada[insightface]'``; the models' licence is non-commercial research only), and
  ``identity_encoder='none'`` uses the zero embedding, Hallo's unconditional identity.

A portrait without a face the mesh can find gets Hallo's own fallback for a missing face: the whole
image as the face region and no lip region.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.errors import InputFileError
from pipelines.extras import require
from pipelines.hallo_modules import FaceConditions

# mediapipe face-mesh indices Hallo uses (hallo/utils/util.py)
SILHOUETTE_IDS = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
                  176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
LIP_IDS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375)
FACE_EXPAND, LIP_EXPAND = 1.2, 2.0  # Hallo's face_expand_ratio and get_lip_mask's expand_ratio
BLUR_SIZE = 64  # side at which the masks are blurred
FACE_BLUR, LIP_BLUR = 51, 31  # Gaussian kernel sides
MESH_MIN_SIDE = 256  # portraits are upscaled to at least this side for the face mesh (small crops miss it)


def expand_box(points: np.ndarray, width: int, height: int, ratio: float) -> tuple[int, int, int, int]:
    """Hallo's `expand_region`: the points' rounded box grown ``ratio``× about its centre, shifted inside the image."""
    min_x, min_y = np.round(points.min(0))
    max_x, max_y = np.round(points.max(0))
    mid_x, mid_y = (max_x + min_x) // 2, (max_y + min_y) // 2
    side_x, side_y = (max_x - min_x) * ratio, (max_y - min_y) * ratio
    x0, x1, y0, y1 = mid_x - side_x // 2, mid_x + side_x // 2, mid_y - side_y // 2, mid_y + side_y // 2
    if x0 < 0:
        x1, x0 = x1 - x0, 0
    if x1 > width:
        x0, x1 = x0 - (x1 - width), width
    if y0 < 0:
        y1, y0 = y1 - y0, 0
    if y1 > height:
        y0, y1 = y0 - (y1 - height), height
    return round(x0), round(x1), round(y0), round(y1)


def _box_mask(box, width: int, height: int) -> np.ndarray:
    x0, x1, y0, y1 = box
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[round(y0) : round(y1), round(x0) : round(x1)] = 255
    return mask


def _blur(mask: np.ndarray, kernel: int) -> np.ndarray:
    import cv2

    blurred = cv2.GaussianBlur(cv2.resize(mask, (BLUR_SIZE, BLUR_SIZE)), (kernel, kernel), 0)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def masks_from_landmarks(landmarks: np.ndarray | None, side: int, latent_side: int):
    """(region (3, side, side) in [0, 1], {s: (3, s²)} full/face/lip at s = latent_side / 1, 2, 4, 8)."""
    import cv2

    if landmarks is None:  # Hallo's rule for a portrait without a face: all face, no lips
        face = np.full((side, side), 255, np.uint8)
        lip = np.zeros((side, side), np.uint8)
    else:
        face = _box_mask(expand_box(landmarks[list(SILHOUETTE_IDS)], side, side, FACE_EXPAND), side, side)
        lip = _box_mask(expand_box(landmarks[list(LIP_IDS)], side, side, LIP_EXPAND), side, side)
    region = torch.from_numpy(face).float().div(255).expand(3, side, side).clone()
    face_blur = _blur(face, FACE_BLUR)
    lip_blur = _blur(lip, LIP_BLUR) if lip.any() else np.zeros((BLUR_SIZE, BLUR_SIZE), np.uint8)
    full = ((1.0 - face_blur / 255.0) * 255).astype(np.uint8)
    face_only = cv2.subtract(face_blur, lip_blur)
    masks = {}
    for level in range(4):
        s = latent_side // 2**level
        planes = [np.asarray(Image.fromarray(m).resize((s, s), Image.Resampling.BILINEAR), np.float32) / 255.0
                  for m in (full, face_only, lip_blur)]  # fmt: skip
        masks[s] = torch.from_numpy(np.stack(planes).reshape(3, s * s))
    return region, masks


def portrait_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """Face-mesh landmarks (468, 2) in the portrait's pixels, found on a copy upscaled to ≥ `MESH_MIN_SIDE`."""
    from pipelines.faces import face_landmarks

    side = rgb.shape[0]
    scale = max(1.0, MESH_MIN_SIDE / side)
    image = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize((round(side * scale),) * 2, Image.BICUBIC))
    points = face_landmarks(np.ascontiguousarray(image))
    return None if points is None else points / scale


@functools.lru_cache(maxsize=2)
def _face_analysis(path: str):
    folder = Path(path)
    if not any((folder / "models").glob("*.onnx")):
        raise InputFileError(
            f"{folder / 'models'} holds no InsightFace .onnx models; put Hallo's face_analysis/ folder there "
            "(its models are for non-commercial research only)."
        )
    require("insightface", "`identity_encoder` insightface")
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name="", root=str(folder), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


def face_embedding(rgb: np.ndarray, config) -> np.ndarray:
    """The 512-d face embedding of the largest face (zeros without one, or with identity_encoder='none')."""
    if config.identity_encoder == "none":
        return np.zeros(config.identity_embedding_dim, np.float32)
    faces = _face_analysis(str(config.face_analysis_path)).get(np.ascontiguousarray(rgb[..., ::-1]))  # BGR
    if not faces:
        return np.zeros(config.identity_embedding_dim, np.float32)
    largest = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
    return np.asarray(largest["embedding"], np.float32)


def face_conditions(portraits: np.ndarray, config) -> FaceConditions:
    """`FaceConditions` of B square portraits (B, S, S, 3) uint8 at the model's sample size."""
    regions, embeddings, masks = [], [], []
    for rgb in portraits:
        region, level_masks = masks_from_landmarks(portrait_landmarks(rgb), rgb.shape[0], config.latent_size)
        regions.append(region)
        masks.append(level_masks)
        embeddings.append(torch.from_numpy(face_embedding(rgb, config)))
    return FaceConditions(
        torch.stack(embeddings),
        torch.stack(regions),
        {side: torch.stack([m[side] for m in masks]) for side in masks[0]},
    )


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (B, 3, H, W) → (B, H, W, 3) uint8 (a training batch's references)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
