"""The demo dataset (DESIGN §2): synthetic talking portraits with known ground truth.

Every identity is derived from the real portrait that scikit-image ships (`skimage.data.astronaut`)
by a geometry change (flip, face width) and new skin, hair, clothes and background colours; the
face mesh is run ONCE per identity to place a jaw-drop warp. Each clip then:

1. synthesises speech-like audio (glottal pulses with a pitch contour through vowel formants,
   consonant noise bursts, pauses) at 16 kHz;
2. takes the per-frame mouth opening from the audio's RMS in each 640-sample frame window, shifted
   by the clip's offset (SyncNet's sign: positive = video lags audio, the mouth moves AFTER the
   sound);
3. renders each frame at twice the output size: jaw-drop warp scaled by the opening, dark mouth
   interior, smooth head motion (rotation, translation, scale) whose RMS is ``motion_level`` times
   a fixed amplitude, the person composited over a textured background whose brightness and
   colour flicker per frame by ``bg_flicker``; then area-downsamples, blurs (``blur_sigma``) and
   adds noise (``noise_std``).

Every clip has its own camera softness: clean and non-blur clips draw ``blur_sigma`` in
`CLEAN_BLUR` (imperceptible to mild, still clean), blur-defect clips draw it from
``DEFECT_RANGES["blur_sigma"]``, so sharpness can be ranked against the truth without ties.

Defects and tiers come from one rule, `tier_of`: a clean clip is tier A, a clip whose defects all
stay under `SEVERE` is tier B, any severe defect makes it `reject`.
"""

from __future__ import annotations

import functools
import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.signal import lfilter

from pipelines import faces
from pipelines.errors import MediaError, UsageError
from pipelines.manifest import write_manifest
from pipelines.media import AUDIO_SR, VIDEO_FPS, write_video
from pipelines.progress import make_progress

MARKER_FILE = "demo_data.json"  # written last into OUT_DIR; marks a folder as demo-data output
SAMPLES_PER_FRAME = AUDIO_SR // VIDEO_FPS  # 640 audio samples per video frame
MAX_OFFSET = 8  # largest |offset_frames| drawn; audio is synthesised with this margin each side


@dataclass(frozen=True)
class DemoDataConfig:
    clips: int = 24  # number of clips
    identities: int = 4  # number of distinct people (clip i shows identity i % identities)
    size: int = 128  # output frame side in pixels (square)
    seconds: float = 3.0  # clip length in seconds
    seed: int = 0  # same seed -> identical frames, audio and ground truth
    clean_fraction: float = 1 / 3  # share of clips without any defect (tier A)
    crf: int = 18  # H.264 quality of the written clips

    def validate(self) -> None:
        checks = [
            (self.clips >= 1, f"`clips` must be at least 1, got {self.clips}"),
            (
                1 <= self.identities <= len(IDENTITIES),
                f"`identities` must be 1..{len(IDENTITIES)}, got {self.identities}",
            ),
            (64 <= self.size <= 512, f"`size` must be 64..512 pixels, got {self.size}"),
            (1.0 <= self.seconds <= 10.0, f"`seconds` must be 1..10, got {self.seconds}"),
            (0.0 <= self.clean_fraction <= 1.0, f"clean_fraction must be in [0, 1], got {self.clean_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message + ".")


# Thresholds of a severe defect (any one makes the clip `reject`); below them a defect is mild (tier B).
SEVERE = {"offset_frames": 5, "motion_level": 2.0, "blur_sigma": 2.5, "noise_std": 12.0, "bg_flicker": 0.5}
CLEAN_MOTION = (0.3, 0.6)  # motion_level range of clean clips: natural small head motion
CLEAN_BLUR = (0.0, 0.7)  # blur_sigma range (output pixels) of clips without a blur defect: camera softness
DEFECT_RANGES = {  # (mild range, severe range) per defect; offsets get a random sign
    "offset_frames": ((1, 5), (6, MAX_OFFSET)),
    "motion_level": ((0.9, 1.8), (2.2, 3.0)),
    "blur_sigma": ((1.0, 2.0), (2.8, 4.0)),
    "noise_std": ((3.0, 9.0), (14.0, 24.0)),
    "bg_flicker": ((0.15, 0.4), (0.6, 1.0)),
}


def tier_of(truth: dict) -> tuple[str, str]:
    """(tier, reject_reason) of one clip's ground truth: clean -> A, mild -> B, severe -> reject."""
    if truth["clean"]:
        return "A", ""
    severe = [f"|{name}| {abs(truth[name]):g} > {top:g}" for name, top in SEVERE.items() if abs(truth[name]) > top]
    return ("reject", "; ".join(severe)) if severe else ("B", "")


@dataclass(frozen=True)
class IdentityStyle:
    name: str  # identity label written to truth/manifest
    flip: bool  # mirror the portrait
    stretch_x: float  # horizontal scale of the face (1 = original)
    skin: tuple[float, float, float]  # LAB change of skin: (L gain, a shift, b shift)
    hair: tuple[int, int, int] | None  # target LAB hair colour (OpenCV 8-bit LAB) or None to keep
    clothes_hue: int  # hue rotation of clothes in degrees
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # RGB gradient top -> bottom
    pitch_hz: float  # mean voice pitch


IDENTITIES = (
    IdentityStyle("id0", False, 1.00, (1.00, 0, 0), None, 0, ((150, 170, 200), (70, 90, 130)), 205.0),
    IdentityStyle("id1", True, 1.08, (0.62, 6, 10), (35, 130, 132), 200, ((215, 190, 150), (150, 110, 80)), 118.0),
    IdentityStyle("id2", False, 0.93, (0.85, 4, 4), (95, 158, 165), 120, ((90, 160, 150), (30, 80, 80)), 170.0),
    IdentityStyle("id3", True, 1.00, (1.06, -3, -6), (205, 128, 136), 270, ((80, 80, 90), (20, 20, 30)), 140.0),
    IdentityStyle("id4", False, 1.12, (0.48, 8, 12), (25, 128, 128), 60, ((120, 170, 90), (50, 90, 40)), 105.0),
    IdentityStyle("id5", True, 0.90, (0.75, 8, 14), (60, 140, 150), 330, ((230, 150, 90), (170, 80, 60)), 225.0),
)
IDENTITY_INDEX = {style.name: index for index, style in enumerate(IDENTITIES)}

# Source crop of the astronaut portrait (pixels of the 512x512 image): face centre and square side.
PORTRAIT_CENTRE = (225.0, 130.0)
PORTRAIT_SIDE = 230.0
# Face-mesh indices: inner-lip contours from corner to corner (upper and lower), chin.
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
CHIN = 152
MAX_JAW_DROP = 0.3  # jaw drop at full mouth opening, as a fraction of the inter-ocular distance


@dataclass(frozen=True)
class Identity:
    """One rendered person at the working resolution (all arrays float32, pixels of the work size)."""

    style: IdentityStyle
    person: np.ndarray  # (R, R, 3) RGB in [0, 255]
    alpha: np.ndarray  # (R, R) person mask in [0, 1]
    background: np.ndarray  # (R, R, 3) RGB in [0, 255]
    landmarks: np.ndarray  # (468, 2) face-mesh points
    jaw_profile: np.ndarray  # (R, R) jaw displacement per unit drop (0..1)
    seam: np.ndarray  # (R,) y of the closed-lip seam per column (inf outside the mouth)
    drop_px: float  # jaw drop in pixels at full opening


def _portrait(style: IdentityStyle, work: int) -> np.ndarray:
    """The astronaut's face-centred square crop at ``work`` px, flipped and stretched (RGB uint8)."""
    from skimage import data

    source = data.astronaut()
    scale = work / PORTRAIT_SIDE
    sx = scale * style.stretch_x * (-1 if style.flip else 1)
    cx, cy = PORTRAIT_CENTRE
    matrix = np.array([[sx, 0, work / 2 - sx * cx], [0, scale, work / 2 - scale * cy]], dtype=np.float64)
    return cv2.warpAffine(source, matrix, (work, work), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def _region_masks(landmarks: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft (skin, hair, clothes) masks from the face mesh and the person mask."""
    work = alpha.shape[0]
    face_w = float(np.ptp(landmarks[:, 0]))
    face_h = float(np.ptp(landmarks[:, 1]))
    chin_x, chin_y = landmarks[CHIN]
    hull = np.zeros((work, work), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(landmarks.astype(np.int32)), 1)
    neck = np.zeros_like(hull)
    centre = (int(chin_x), int(chin_y + 0.12 * face_h))
    cv2.ellipse(neck, centre, (int(0.3 * face_w), int(0.18 * face_h)), 0, 0, 360, 1, -1)
    feather = max(3, work // 64) | 1
    skin = cv2.GaussianBlur(np.maximum(hull, neck).astype(np.float32), (0, 0), feather)
    grown = cv2.dilate(hull, np.ones((feather * 2, feather * 2), np.uint8))
    rows = np.arange(work, dtype=np.float32)[:, None]
    hair = alpha * (1 - grown) * (rows < chin_y - 0.15 * face_h)
    clothes = alpha * (1 - np.maximum(grown, neck)) * (rows > chin_y)
    blur = functools.partial(cv2.GaussianBlur, ksize=(0, 0), sigmaX=feather)
    return skin, blur(hair.astype(np.float32)), blur(clothes.astype(np.float32))


def _recolour(image: np.ndarray, style: IdentityStyle, skin, hair, clothes) -> np.ndarray:
    """New skin tone, hair colour and clothes hue (RGB uint8 in, float32 out)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    chroma = np.clip((hsv[..., 1] - 40) / 40, 0, 1)  # teeth and eye whites keep their colour
    gain, da, db = style.skin
    w = (skin * chroma)[..., None]
    skin_lab = np.stack([lab[..., 0] * gain, lab[..., 1] + da, lab[..., 2] + db], -1)
    lab = lab * (1 - w) + skin_lab * w
    if style.hair is not None:
        weight = hair > 0.5
        mean_l = float(lab[..., 0][weight].mean()) if weight.any() else 100.0
        target = np.stack(
            [
                lab[..., 0] * style.hair[0] / mean_l,  # keep the hair's texture, move its brightness
                np.full_like(lab[..., 1], style.hair[1]),
                style.hair[2] + (lab[..., 2] - 128) * 0.4,
            ],
            -1,
        )
        lab = lab * (1 - hair[..., None]) + target * hair[..., None]
    rgb = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    hsv = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + style.clothes_hue // 2) % 180
    rotated = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    return rgb * (1 - clothes[..., None]) + rotated * clothes[..., None]


def _background(style: IdentityStyle, work: int) -> np.ndarray:
    """A vertical colour gradient with soft blotches and fine grain (fixed per identity)."""
    rng = np.random.default_rng(IDENTITIES.index(style))
    top, bottom = (np.array(c, np.float32) for c in style.background)
    ramp = np.linspace(0, 1, work, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (work, work, 3)).copy()
    blotches = cv2.GaussianBlur(rng.normal(0, 1, (work, work)).astype(np.float32), (0, 0), work / 12)
    blotches /= max(float(np.abs(blotches).max()), 1e-6)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (work, work)).astype(np.float32), (0, 0), 1.0)
    return np.clip(image + 25 * blotches[..., None] + 4 * grain[..., None], 0, 255)


def _jaw_geometry(landmarks: np.ndarray, work: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Jaw-drop displacement profile (R, R), lip seam per column (R,), drop in px at full opening.

    The profile is 0 above the seam between the closed lips, 1 on the lower lip and chin (a
    parabola across the mouth that widens towards the chin), and fades to 0 down the neck.
    """
    upper, lower = landmarks[list(UPPER_INNER_LIP)], landmarks[list(LOWER_INNER_LIP)]
    seam_points = (upper + lower) / 2
    order = np.argsort(seam_points[:, 0])
    xs = np.arange(work, dtype=np.float32)
    left, right = seam_points[order[0], 0], seam_points[order[-1], 0]
    seam = np.interp(xs, seam_points[order, 0], seam_points[order, 1]).astype(np.float32)
    seam[(xs < left) | (xs > right)] = np.inf
    centre_x, centre_y = seam_points[:, 0].mean(), seam_points[:, 1].mean()
    chin_y = float(landmarks[CHIN, 1])
    half = (right - left) / 2
    rows = xs[:, None]
    depth = np.clip((rows - centre_y) / max(chin_y - centre_y, 1.0), 0, None)  # 0 at seam, 1 at chin
    width = half * (1 + 0.9 * np.clip(depth, 0, 1))
    across = np.clip(1 - ((xs[None, :] - centre_x) / width) ** 2, 0, 1) ** 0.7
    neck_fade = 0.5 * (1 + np.cos(np.pi * np.clip((depth - 1) / 0.6, 0, 1)))
    below_seam = np.clip(rows - np.where(np.isfinite(seam), seam, centre_y)[None, :] + 0.5, 0, 1)
    profile = (across * neck_fade * below_seam).astype(np.float32)
    eyes = faces.eye_distance(landmarks)
    return profile, seam, MAX_JAW_DROP * eyes


@functools.lru_cache(maxsize=8)
def make_identity(index: int, work: int) -> Identity:
    """Render identity ``index`` at ``work`` px and place its jaw warp (face mesh run once)."""
    style = IDENTITIES[index]
    image = _portrait(style, work)
    landmarks = faces.face_landmarks(image)
    if landmarks is None:
        raise MediaError(f"the face mesh found no face in demo identity {style.name}; this is a bug in demo_data.")
    alpha = cv2.GaussianBlur(faces.person_mask(image), (0, 0), 1.0)
    skin, hair, clothes = _region_masks(landmarks, alpha)
    person = _recolour(image, style, skin, hair, clothes)
    profile, seam, drop = _jaw_geometry(landmarks, work)
    return Identity(style, person, alpha, _background(style, work), landmarks, profile, seam, drop)


# ---------------------------------------------------------------------------------------------
# speech-like audio

VOWEL_FORMANTS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
FORMANT_BANDWIDTHS = (80.0, 100.0, 120.0)  # Hz


def _resonator(signal: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """Second-order formant resonator (Klatt), unit gain at DC."""
    r = np.exp(-np.pi * bandwidth / AUDIO_SR)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / AUDIO_SR), r * r
    return lfilter([1 + a1 + a2], [1, a1, a2], signal)


def _vowel(rng: np.random.Generator, n: int, pitch_hz: float) -> np.ndarray:
    """One voiced vowel: glottal pulses along a falling pitch contour through three formants."""
    t = np.arange(n) / AUDIO_SR
    f0 = pitch_hz * (1.08 - 0.16 * t / max(t[-1], 1e-3)) * (1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    phase = np.cumsum(f0 / AUDIO_SR)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    source = lfilter([1.0], [1, -0.97], lfilter([1.0], [1, -0.97], pulses))  # glottal spectral tilt
    source -= source.mean()
    out = source
    for freq, bw in zip(VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))], FORMANT_BANDWIDTHS, strict=True):
        out = _resonator(out, freq * rng.uniform(0.92, 1.08), bw)
    attack, release = min(n // 4, int(0.025 * AUDIO_SR)), min(n // 3, int(0.05 * AUDIO_SR))
    envelope = np.ones(n)
    envelope[:attack] = np.linspace(0, 1, attack)
    envelope[n - release :] = np.linspace(1, 0, release)
    return out * envelope / max(float(np.abs(out).max()), 1e-9)


def _consonant(rng: np.random.Generator) -> np.ndarray:
    """A fricative hiss or a plosive burst: high-passed noise, much quieter than a vowel."""
    n = int(AUDIO_SR * (rng.uniform(0.04, 0.09) if rng.random() < 0.6 else rng.uniform(0.01, 0.02)))
    noise = rng.standard_normal(n)
    hiss = noise - lfilter([0.5], [1, -0.5], noise)  # crude high-pass
    return 0.12 * hiss * np.hanning(n) / max(float(np.abs(hiss).max()), 1e-9)


def synthesise_speech(rng: np.random.Generator, n_samples: int, pitch_hz: float) -> np.ndarray:
    """Speech-like float32 audio: words of 1-3 syllables (consonant + vowel) between pauses."""
    audio = np.zeros(n_samples)
    cursor = int(rng.uniform(0.05, 0.25) * AUDIO_SR)
    while cursor < n_samples:
        for _ in range(rng.integers(1, 4)):  # syllables of one word
            if rng.random() < 0.6:
                burst = _consonant(rng)
                audio[cursor : cursor + len(burst)] += burst[: max(0, n_samples - cursor)]
                cursor += len(burst)
            n = int(rng.uniform(0.09, 0.24) * AUDIO_SR)
            vowel = _vowel(rng, n, pitch_hz * rng.uniform(0.9, 1.1)) * rng.uniform(0.45, 1.0)
            audio[cursor : cursor + n] += vowel[: max(0, n_samples - cursor)]
            cursor += n + int(rng.uniform(0.0, 0.04) * AUDIO_SR)
        cursor += int((rng.uniform(0.35, 0.6) if rng.random() < 0.3 else rng.uniform(0.08, 0.3)) * AUDIO_SR)
    return (0.7 * audio / max(float(np.abs(audio).max()), 1e-9)).astype(np.float32)


def frame_rms(audio: np.ndarray) -> np.ndarray:
    """RMS of the audio in each 640-sample video-frame window, (n_frames,)."""
    n = len(audio) // SAMPLES_PER_FRAME
    windows = audio[: n * SAMPLES_PER_FRAME].reshape(n, SAMPLES_PER_FRAME).astype(np.float64)
    return np.sqrt((windows**2).mean(axis=1))


def mouth_curve(audio: np.ndarray) -> np.ndarray:
    """Per-frame mouth opening in [0, 1]: smoothed frame RMS over its 95th percentile."""
    rms = np.convolve(np.pad(frame_rms(audio), 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return np.clip(rms / max(float(np.percentile(rms, 95)), 1e-9), 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# ground truth


def plan_clips(config: DemoDataConfig) -> list[dict]:
    """The ground-truth row of every clip: identity, defects, clean flag, tier (deterministic)."""
    rng = np.random.default_rng([config.seed, 7919])
    n_clean = int(np.ceil(config.clips * config.clean_fraction - 1e-9))
    clean_at = {int(j * config.clips / n_clean) for j in range(n_clean)} if n_clean else set()
    names = list(DEFECT_RANGES)
    rows, n_defective = [], 0
    for i in range(config.clips):
        row = {
            "clip_id": f"demo_{i:04d}",
            "identity": IDENTITIES[i % config.identities].name,
            "offset_frames": 0,
            "motion_level": round(float(rng.uniform(*CLEAN_MOTION)), 3),
            "blur_sigma": round(float(rng.uniform(*CLEAN_BLUR)), 3),
            "noise_std": 0.0,
            "bg_flicker": 0.0,
            "clean": i in clean_at,
        }
        if not row["clean"]:
            # One main defect, cycling through the kinds; every 4th defective clip gets it severe;
            # a quarter get a second, mild defect. Offsets alternate in sign.
            main = names[n_defective % len(names)]
            severity = {main: int(n_defective % 4 == 3)}
            if rng.random() < 0.25:
                severity.setdefault(names[rng.integers(len(names))], 0)
            for name, severe in severity.items():
                low, high = DEFECT_RANGES[name][severe]
                if name == "offset_frames":
                    sign = 1 if n_defective % 2 == 0 else -1
                    row[name] = sign * int(rng.integers(low, high + 1))
                else:
                    row[name] = round(float(rng.uniform(low, high)), 3)
            n_defective += 1
        row["tier"], row["reject_reason"] = tier_of(row)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# rendering

MOUTH_COLOUR = np.array([70, 22, 28], np.float32)  # RGB of the open mouth's interior


# RMS head motion per unit motion_level: degrees, x and y shift (fraction of the frame), log scale.
HEAD_MOTION_RMS = (1.1, 0.008, 0.0053, 0.0066)


def _smooth_wave(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth random signal with zero mean and unit RMS over its ``n`` frames: three sinusoids
    of 0.15-1.0 Hz mixed at random, then normalised, so its size does not depend on the draw."""
    t = np.arange(n) / VIDEO_FPS
    wave = sum(
        rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(0.15, 1.0) * t + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    wave = wave - wave.mean()
    return wave / max(float(np.sqrt((wave**2).mean())), 1e-9)


def _render_frame(identity: Identity, opening: float, motion: np.ndarray, bg_gain: np.ndarray) -> np.ndarray:
    """One frame at work size (float32 RGB): jaw drop, mouth interior, head motion, background."""
    work = identity.person.shape[0]
    rows, cols = np.mgrid[0:work, 0:work].astype(np.float32)
    source_y = rows - identity.drop_px * opening * identity.jaw_profile
    person = cv2.remap(identity.person, cols, source_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    seam = identity.seam[None, :]
    inside = np.clip(rows - seam + 0.5, 0, 1) * np.clip(seam - source_y + 0.5, 0, 1)  # opened between the lips
    depth = (rows - seam) / np.maximum(rows - source_y, 1.0)  # 0 at the upper lip, 1 at the lower lip
    shade = 0.55 + 0.45 * np.clip(np.abs(2 * depth - 1), 0, 1)  # darkest in the middle of the opening
    person = person * (1 - inside[..., None]) + (MOUTH_COLOUR * shade[..., None]) * inside[..., None]
    angle, tx, ty, log_scale = motion
    centre = tuple(float(v) for v in identity.landmarks.mean(axis=0))
    matrix = cv2.getRotationMatrix2D(centre, float(angle), float(np.exp(log_scale)))
    matrix[:, 2] += (tx * work, ty * work)
    warp = functools.partial(cv2.warpAffine, M=matrix, dsize=(work, work), borderMode=cv2.BORDER_REPLICATE)
    person, alpha = warp(person), warp(identity.alpha)
    background = identity.background * bg_gain[0] + bg_gain[1:]
    return person * alpha[..., None] + background * (1 - alpha[..., None])


def render_clip(config: DemoDataConfig, index: int, truth: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, S, S, 3) uint8 and 16 kHz audio (T * 640,) float32 of clip ``index``."""
    rng = np.random.default_rng([config.seed, index])
    identity = make_identity(IDENTITY_INDEX[truth["identity"]], 2 * config.size)
    n = int(round(config.seconds * VIDEO_FPS))
    pitch = identity.style.pitch_hz * rng.uniform(0.92, 1.08)
    padded = synthesise_speech(rng, (n + 2 * MAX_OFFSET) * SAMPLES_PER_FRAME, pitch)
    audio = padded[MAX_OFFSET * SAMPLES_PER_FRAME : (MAX_OFFSET + n) * SAMPLES_PER_FRAME]
    curve = mouth_curve(padded)
    opening = curve[MAX_OFFSET + np.arange(n) - truth["offset_frames"]]  # video lags audio by the offset
    level = truth["motion_level"]
    motion = np.stack([level * rms * _smooth_wave(rng, n) for rms in HEAD_MOTION_RMS], axis=1)
    # (T, 4): degrees, x and y shift (fraction of the frame), log scale; RMS = level * HEAD_MOTION_RMS
    flicker = truth["bg_flicker"] * rng.uniform(-1, 1, (n, 4)) * np.array([0.35, 18, 18, 18], np.float32)
    flicker[:, 0] += 1  # (T, 4): background gain, then RGB shift
    frames = np.empty((n, config.size, config.size, 3), np.uint8)
    for f in range(n):
        image = _render_frame(identity, float(opening[f]), motion[f], flicker[f].astype(np.float32))
        image = cv2.resize(image, (config.size, config.size), interpolation=cv2.INTER_AREA)
        if truth["blur_sigma"] > 0:
            image = cv2.GaussianBlur(image, (0, 0), truth["blur_sigma"])
        if truth["noise_std"] > 0:
            image = image + rng.normal(0, truth["noise_std"], image.shape).astype(np.float32)
        frames[f] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames, audio


# ---------------------------------------------------------------------------------------------
# writing the dataset


def _check_out_dir(out_dir: Path) -> None:
    """OUT_DIR may be absent, empty, or a previous demo-data output (which is replaced)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"OUT_DIR {out_dir} is a file; name a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
        raise UsageError(
            f"OUT_DIR {out_dir} is not empty and is not a previous `fada demo-data` output; name a new or empty folder."
        )


def _manifest_rows(config: DemoDataConfig, truth: list[dict]) -> pd.DataFrame:
    n = int(round(config.seconds * VIDEO_FPS))
    return pd.DataFrame(
        {
            "clip_id": row["clip_id"],
            "video_path": f"clips/{row['clip_id']}.mp4",
            "fps": float(VIDEO_FPS),
            "n_frames": n,
            "width": config.size,
            "height": config.size,
            "audio_sr": AUDIO_SR,
            "duration_s": n / VIDEO_FPS,
            "source": f"fada demo-data seed={config.seed}",
            "start_s": 0.0,
            "end_s": n / VIDEO_FPS,
            "identity": row["identity"],
            "tier": row["tier"],
            "reject_reason": row["reject_reason"],
        }
        for row in truth
    )


def _write_all(folder: Path, config: DemoDataConfig, truth: list[dict], quiet: bool) -> None:
    (folder / "clips").mkdir(parents=True)
    (folder / "identities").mkdir()
    for index in range(config.identities):
        identity = make_identity(index, 2 * config.size)
        alpha = identity.alpha[..., None]
        portrait = identity.person * alpha + identity.background * (1 - alpha)
        portrait = cv2.resize(portrait, (config.size, config.size), interpolation=cv2.INTER_AREA)
        bgr = np.rint(portrait[..., ::-1]).astype(np.uint8)
        cv2.imwrite(str(folder / "identities" / f"{identity.style.name}.png"), bgr)
    with make_progress(quiet) as progress:
        task = progress.add_task("demo clips", total=len(truth))
        for index, row in enumerate(truth):
            frames, audio = render_clip(config, index, row)
            write_video(folder / "clips" / f"{row['clip_id']}.mp4", frames, audio=audio, crf=config.crf)
            progress.advance(task)
    pd.DataFrame(truth).to_parquet(folder / "truth.parquet", index=False)
    metadata = {"config": asdict(config), "severe_thresholds": SEVERE, "tier_rule": TIER_RULE}
    write_manifest(_manifest_rows(config, truth), folder / "manifest.parquet", "fada demo-data", metadata)
    (folder / MARKER_FILE).write_text(json.dumps({"producer": "fada demo-data", **metadata}, indent=2) + "\n")


TIER_RULE = "clean -> A; any |defect| above severe_thresholds -> reject; other defective clips -> B"


def generate_demo_data(
    out_dir: str | Path, config: DemoDataConfig = DemoDataConfig(), quiet: bool = False
) -> pd.DataFrame:
    """Write the demo dataset into ``out_dir`` atomically and return its ground-truth table.

    Layout: ``clips/<clip_id>.mp4`` (H.264 + AAC, 25 fps, square), ``identities/<name>.png``
    (one still portrait per identity), ``truth.parquet``, ``manifest.parquet`` (with ``tier``),
    ``demo_data.json`` (config and tier rule). Everything is built in a hidden sibling folder and
    renamed into place, so an error never leaves a half-written OUT_DIR.
    """
    out_dir = Path(out_dir)
    config.validate()
    _check_out_dir(out_dir)
    truth = plan_clips(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _write_all(partial, config, truth, quiet)
        if out_dir.exists():
            previous = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(previous)
            partial.rename(out_dir)
            shutil.rmtree(previous)
        else:
            partial.rename(out_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return pd.DataFrame(truth)
