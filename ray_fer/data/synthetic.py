"""The embedded procedural face set: cartoon faces with identities and V/A-driven expressions.

For smoke runs, tests and the quick start only, never for results: the faces are drawn
by this module, so accuracy on them says nothing about real facial expressions.

Every face is drawn with OpenCV's anti-aliased primitives and depends only on (seed,
subject, image index): each subject has fixed identity traits (face shape, jaw, skin
tone, hair, eye spacing and size, brows, nose, mouth, glasses), and each image has a
category from FER2013's seven, a (valence, arousal) drawn around that category's anchor,
and per-image nuisances (head pose, exposure, lighting gradient, noise, blur, occluders).
Expression follows valence and arousal continuously (valence: mouth curvature and brow
angle; arousal: eye openness, mouth opening, brow raise), plus a small cue proper to each
category (e.g. the nose wrinkle of disgust against the knitted brows of anger), because
the published V/A anchors of angry, fear and disgust nearly coincide (the anchors are the
project's one table, :mod:`ray_fer.data.targets`). Every subject shows
every category, so the set holds pairs of one person with different expressions (the
face-generating autoencoder) and has person-independent splits (CAF).

The reader registered as format ``synthetic`` ignores its source argument (pass any
string, e.g. ``default``): ``python -m ray_fer.ingest synthetic default --out DIR``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import cv2
import numpy as np

from ray_fer.data.formats.base import DatasetFormatError, SourceItem
from ray_fer.data.formats.fer2013 import CLASS_NAMES  # FER2013's names, in its label order
from ray_fer.data.targets import anchor_matrix

#: Category → (valence, arousal) anchors, shared with the derived targets of real datasets:
#: Warriner, Kuperman & Brysbaert (2013) ratings of the category words (see
#: :mod:`ray_fer.data.targets`, ``ANCHOR_SOURCE``), neutral at the origin.
_ANCHORS = anchor_matrix(CLASS_NAMES)
_ANCHOR_VA = [(float(v), float(a)) for v, a in _ANCHORS]

#: The default set: 60 people × 70 faces (10 per category) = 4,200 faces.
DEFAULT_SUBJECTS = 60
DEFAULT_IMAGES_PER_SUBJECT = 70
#: People whose traits and base drawing a reader keeps at a time.
_PEOPLE_CACHED = 16
#: Subject split shares for ``splits="subject"`` (train gets the rest).
_VAL_SHARE = _TEST_SHARE = 0.15
#: Soft-label width in V/A units and the weight of the drawn category cue in it.
_SOFT_TAU = 0.25
_SOFT_CUE = 2.0
#: cv2 fixed-point bits: coordinates are drawn with 1/16 px precision.
_SHIFT = 4
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

_SKIN_LIGHT = (242.0, 208.0, 182.0)
_SKIN_DARK = (92.0, 58.0, 40.0)
#: Hair colours (black, dark brown, brown, blond, red, grey) and their frequencies.
_HAIR = ((28, 24, 24), (70, 45, 30), (120, 80, 45), (205, 172, 105), (150, 65, 35),
         (165, 160, 155))
_HAIR_P = (0.3, 0.25, 0.15, 0.12, 0.08, 0.1)
_IRIS = ((70, 45, 25), (40, 30, 25), (60, 110, 160), (70, 120, 70))
_SCLERA = (245.0, 244.0, 238.0)
_DARK = (15.0, 12.0, 12.0)
_FRAME = (30.0, 30.0, 35.0)
_MOUTH_IN = (70.0, 25.0, 30.0)
_TEETH = (240.0, 238.0, 230.0)
_BLUSH = (225.0, 95.0, 100.0)
_WRINKLE = (60.0, 30.0, 25.0)
#: Face outline angles and mouth abscissae, with the mouth's fixed profiles.
_T = np.linspace(0, 2 * math.pi, 48, endpoint=False)
_COS, _SIN = np.cos(_T), np.sin(_T)
_U = np.linspace(-1, 1, 17)
_CURVE = _U**2 - 0.35
_GAP = (1 - _U**2) ** 0.7
_SNEER = np.exp(-(((_U - 0.45) / 0.35) ** 2))
_MOUTH_BASIS = np.stack([np.ones_like(_U), _U, _CURVE, _GAP, _SNEER])
#: Largest image size; the shared noise texture is a little larger.
MAX_SIZE = 512
_NOISE_SIDE = MAX_SIZE + 128


def _rgb(values) -> tuple[float, float, float]:
    r, g, b = (min(max(float(x), 0.0), 255.0) for x in values)
    return (r, g, b)


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return _rgb(x + (y - x) * t for x, y in zip(a, b, strict=True))


def _jitter(rng: random.Random, colour, sigma: float) -> tuple[float, float, float]:
    return _rgb(c + rng.gauss(0, sigma) for c in colour)


@dataclass(frozen=True)
class Identity:
    """A subject's fixed traits, colours RGB. ``face_w``/``face_h`` are half-sizes in
    fractions of the image; feature sizes and offsets are fractions of those."""

    face_w: float
    face_h: float
    jaw: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int
    hairline: float
    eye_dx: float
    eye_w: float
    iris: tuple[float, float, float]
    brow_thick: float
    nose_len: float
    mouth_w: float
    shirt: tuple[float, float, float]
    glasses: bool
    #: Each person is photographed against their own backdrop, as in posed datasets.
    backdrop: tuple[float, float, float]

    @cached_property
    def shade(self) -> tuple[float, float, float]:
        return _mix(self.skin, (0.0, 0.0, 0.0), 0.28)

    @cached_property
    def line(self) -> tuple[float, float, float]:
        return _mix(self.skin, (20.0, 10.0, 10.0), 0.65)

    @cached_property
    def lip(self) -> tuple[float, float, float]:
        return _mix(self.skin, (150.0, 40.0, 50.0), 0.55)

    @cached_property
    def brow(self) -> tuple[float, float, float]:
        return _mix(self.hair, (20.0, 15.0, 15.0), 0.4)

    @cached_property
    def outline(self) -> np.ndarray:
        """Face outline in face half-widths/half-heights: an ellipse above, a superellipse
        below (squarer for larger ``jaw``)."""
        n = np.where(_SIN > 0, 2 / self.jaw, 1.0)
        return np.stack([np.sign(_COS) * np.abs(_COS) ** n, np.sign(_SIN) * np.abs(_SIN) ** n],
                        axis=1)


@dataclass(frozen=True)
class Look:
    """One image's nuisances: head pose, light, noise, blur, occluder, exposure."""

    angle: float
    scale: float
    dx: float
    dy: float
    light: float
    light_dir: float
    noise: float
    noise_at: tuple[int, int]
    blur: float
    occluder: tuple[float, float, float, float, tuple[float, float, float]] | None
    brightness: float


def _image_rng(seed: int, subject: int, index: int) -> random.Random:
    # String seeds are hashed with SHA-512: the same stream in every process and platform.
    return random.Random(f"synthetic/{seed}/{subject}/{index}")


def face_identity(subject: int, seed: int = 0) -> Identity:
    """The traits of ``subject`` under ``seed`` (the same every call)."""
    rng = random.Random(f"synthetic/{seed}/{subject}")
    t = rng.random() ** 1.3
    gain = rng.uniform(0.95, 1.05)
    skin = (gain * (lo + t * (hi - lo)) for lo, hi in zip(_SKIN_LIGHT, _SKIN_DARK, strict=True))
    face_w = rng.uniform(0.3, 0.35)
    grey = rng.uniform(40, 215)
    return Identity(
        face_w=face_w,
        face_h=face_w * rng.uniform(1.15, 1.38),
        jaw=rng.uniform(1.6, 2.8),
        skin=_jitter(rng, skin, 3),
        hair=_jitter(rng, rng.choices(_HAIR, _HAIR_P)[0], 10),
        hair_style=rng.randrange(4),
        hairline=rng.uniform(0.45, 0.62),
        eye_dx=rng.uniform(0.36, 0.47),
        eye_w=rng.uniform(0.16, 0.21),
        iris=_jitter(rng, rng.choice(_IRIS), 8),
        brow_thick=rng.uniform(0.022, 0.042),
        nose_len=rng.uniform(0.16, 0.3),
        mouth_w=rng.uniform(0.3, 0.42),
        shirt=_rgb(rng.uniform(30, 220) for _ in range(3)),
        glasses=rng.random() < 0.15,
        backdrop=_jitter(rng, (grey, grey, grey), 25),
    )


def sample_expression(category: int, rng: random.Random) -> tuple[float, float, float]:
    """(valence, arousal, cue strength) for ``category``: V/A is its anchor at a random
    intensity plus noise, kept inside the unit disk (so neighbouring categories overlap, as
    in real ratings); the cue strength scales the category's own cue."""
    intensity = min(max(rng.gauss(1.0, 0.25), 0.35), 1.5)
    v0, a0 = _ANCHOR_VA[category]
    v = v0 * intensity + rng.gauss(0, 0.12)
    a = a0 * intensity + rng.gauss(0, 0.12)
    norm = math.hypot(v, a)
    if norm > 1.0:
        v, a = v / norm, a / norm
    return v, a, rng.uniform(0.35, 1.0)


def random_look(rng: random.Random, size: int) -> Look:
    """Draw one image's nuisances for a ``size`` px image."""
    occluder = None
    if rng.random() < 0.2:
        occluder = (rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.9), rng.uniform(0.06, 0.13),
                    rng.uniform(0.05, 0.11), _rgb(rng.uniform(20, 235) for _ in range(3)))
    span = _NOISE_SIDE - size
    return Look(
        angle=min(max(rng.gauss(0, 5), -12.0), 12.0),
        scale=rng.uniform(0.92, 1.06),
        dx=rng.gauss(0, 0.02),
        dy=rng.gauss(0, 0.02),
        light=rng.uniform(0, 0.45),
        light_dir=rng.uniform(0, 2 * math.pi),
        noise=rng.uniform(2, 8),
        noise_at=(rng.randrange(span + 1), rng.randrange(span + 1)),
        blur=rng.uniform(0.4, 1.0) if rng.random() < 0.3 else 0.0,
        occluder=occluder,
        brightness=rng.uniform(0.8, 1.15),
    )


def soft_label(valence: float, arousal: float, category: int, cue: float) -> tuple[float, ...]:
    """Class distribution from the distance of (v, a) to each anchor (Gaussian, width
    ``_SOFT_TAU``), raised for the drawn category by its cue strength: what a rater who sees
    both the V/A and the category-specific cue would vote."""
    d2 = ((_ANCHORS - (valence, arousal)) ** 2).sum(axis=1)
    logits = -d2 / (2 * _SOFT_TAU**2)
    logits[category] += _SOFT_CUE * cue
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return tuple(float(x) for x in p)


@cache
def _noise_texture() -> np.ndarray:
    """A fixed Gaussian RGB texture; each image adds a window of it at a random offset,
    far cheaper than drawing fresh noise per image."""
    tex = np.random.default_rng(0x5EED).standard_normal((_NOISE_SIDE, _NOISE_SIDE, 3),
                                                        np.float32)
    tex.flags.writeable = False
    return tex


@cache
def _light_ramps(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates in [-0.5, 0.5] as (size, size, 3) float32, for lighting."""
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    x = np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (size, size, 3)))
    y = np.ascontiguousarray(np.broadcast_to(ramp[:, None, None], (size, size, 3)))
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _pose(look: Look, size: int) -> np.ndarray:
    """2x3 matrix of the head pose: rotation and scale about the centre, then a shift."""
    m = cv2.getRotationMatrix2D((size / 2, size / 2), look.angle, look.scale)
    m[:, 2] += (look.dx * size, look.dy * size)
    return m


class _Canvas:
    """An RGB image drawn in face coordinates (pixels of the upright, centred face) through
    a pose matrix, so posed features stay anti-aliased at 1/16 px precision."""

    def __init__(self, img: np.ndarray, pose: np.ndarray | None = None, angle: float = 0.0,
                 scale: float = 1.0) -> None:
        self.img = img
        m = np.eye(2, 3) if pose is None else pose
        self.coef = tuple(float(v) * _ONE for v in m.ravel())
        self.rot = m[:, :2].T * _ONE
        self.offset = m[:, 2] * _ONE
        self.angle = -angle
        self.scale = scale * _ONE

    def _map(self, xy) -> np.ndarray:
        if isinstance(xy, np.ndarray):
            return np.rint(xy @ self.rot + self.offset).astype(np.int32).reshape(-1, 1, 2)
        a, b, c, d, e, f = self.coef
        return np.array([(round(a * x + b * y + c), round(d * x + e * y + f)) for x, y in xy],
                        np.int32).reshape(-1, 1, 2)

    def ellipse(self, centre, axes, color, thick: int = -1, angle: float = 0.0,
                start: int = 0, end: int = 360) -> None:
        a, b, c, d, e, f = self.coef
        x, y = centre
        k = self.scale
        cv2.ellipse(self.img, (round(a * x + b * y + c), round(d * x + e * y + f)),
                    (max(round(axes[0] * k), 1), max(round(axes[1] * k), 1)),
                    angle + self.angle, start, end, color, thick, _AA, _SHIFT)

    def poly(self, xy, color) -> None:
        self.fill([self._map(xy)], color)

    def polys(self, shapes, color) -> None:
        """Disjoint filled polygons of one colour, in one call."""
        self.fill([self._map(xy) for xy in shapes], color)

    def lines(self, curves, color, thick: int) -> None:
        """Open polylines of one colour, in one call."""
        self.stroke([self._map(xy) for xy in curves], color, thick)

    def curves(self, x_mix, y_mixes, basis: np.ndarray) -> list[np.ndarray]:
        """Posed points of curves whose x is ``x_mix @ basis`` and whose y are
        ``y_mix @ basis`` (``basis[0]`` all ones), in one matrix product."""
        a, b, c, d, e, f = self.coef
        rows = []
        for y_mix in y_mixes:
            rows.append([a * xm + b * ym for xm, ym in zip(x_mix, y_mix, strict=True)])
            rows[-1][0] += c
            rows.append([d * xm + e * ym for xm, ym in zip(x_mix, y_mix, strict=True)])
            rows[-1][0] += f
        pts = np.rint(np.array(rows) @ basis).astype(np.int32)
        return [pts[i:i + 2].T.reshape(-1, 1, 2) for i in range(0, len(rows), 2)]

    def fill(self, shapes: list[np.ndarray], color) -> None:
        """Filled polygons of posed points (from :meth:`curves` or ``_map``)."""
        cv2.fillPoly(self.img, shapes, color, _AA, _SHIFT)

    def stroke(self, curves: list[np.ndarray], color, thick: int) -> None:
        """Open polylines of posed points."""
        cv2.polylines(self.img, curves, False, color, max(thick, 1), _AA, _SHIFT)


@dataclass
class _Expression:
    """Drawing parameters of one expression, in fractions of the face height where lengths."""

    brow_raise: float
    brow_inner_down: float
    eye_open: float
    mouth_curve: float
    mouth_open: float
    mouth_width: float
    brow_knit: float = 0.0
    upper_lid: float = 0.0
    lower_lid: float = 0.0
    iris_scale: float = 1.0
    sneer: float = 0.0
    teeth: bool = False
    wrinkle: float = 0.0
    blush: float = 0.0


def _expression(valence: float, arousal: float, category: int, cue: float) -> _Expression:
    """Continuous V/A mapping, then the category's own cue at strength ``cue``."""
    v, a, s = valence, arousal, cue
    p = _Expression(
        brow_raise=0.05 * a,
        # Negative valence tilts the brows: inner ends down when aroused (anger), up when
        # not (sadness).
        brow_inner_down=-0.09 * min(v, 0.0) * a,
        eye_open=min(max(0.62 + 0.38 * a, 0.12), 1.0),
        mouth_curve=0.12 * v,
        mouth_open=0.2 * max(a - 0.1, 0.0),
        mouth_width=1.0 + 0.2 * max(v, 0.0),
    )
    name = CLASS_NAMES[category]
    if name == "angry":
        p.brow_inner_down += 0.08 * s
        p.brow_raise -= 0.05 * s
        p.brow_knit = 0.04 * s
        p.upper_lid = 0.45 * s
        p.mouth_open *= 1.0 - s
        p.mouth_width *= 1.0 - 0.15 * s
    elif name == "disgust":
        p.wrinkle = s
        p.sneer = 0.07 * s
        p.lower_lid = 0.4 * s
        p.mouth_open *= 0.4
        p.brow_inner_down += 0.03 * s
    elif name == "fear":
        p.brow_inner_down -= 0.08 * s
        p.brow_raise += 0.05 * s
        p.eye_open = min(p.eye_open + 0.3 * s, 1.25)
        p.iris_scale = 1.0 - 0.3 * s
        p.mouth_width *= 1.0 + 0.35 * s
        p.mouth_open = max(p.mouth_open, 0.06 * s)
        p.teeth = s > 0.6
    elif name == "surprise":
        p.brow_raise += 0.05 * s
        p.eye_open = min(p.eye_open + 0.25 * s, 1.25)
        p.mouth_width *= 1.0 - 0.5 * s
        p.mouth_open += 0.12 * s
        p.mouth_curve *= 1.0 - s
    elif name == "happy":
        p.teeth = True
        p.blush = s
        p.lower_lid = 0.3 * s
        p.mouth_curve += 0.03 * s
    elif name == "sad":
        p.brow_inner_down -= 0.05 * s
        p.upper_lid = -0.35 * s  # negative: the outer end of the lid droops
        p.mouth_curve -= 0.03 * s
    return p


@dataclass(frozen=True)
class _Layout:
    """Where a face sits in a ``size`` px image (pixels)."""

    s: float
    cx: float
    cy: float
    fw: float
    fh: float
    eye_y: float
    thick: int


def _layout(identity: Identity, size: int) -> _Layout:
    s = float(size)
    fh = identity.face_h * s
    cy = 0.52 * s
    return _Layout(s=s, cx=0.5 * s, cy=cy, fw=identity.face_w * s, fh=fh, eye_y=cy - fh * 0.1,
                   thick=max(1, round(s / 64)))


def draw_base(identity: Identity, size: int) -> np.ndarray:
    """The parts of ``identity``'s pictures that no expression moves (backdrop, shoulders,
    head, ears, hair), upright and centred: uint8 RGB (size, size, 3). Drawn once per
    person and posed per image by :func:`render_face`."""
    if not 16 <= size <= MAX_SIZE:
        raise ValueError(f"synthetic: size must be 16..{MAX_SIZE} px, got {size}")
    img = np.empty((size, size, 3), np.uint8)
    cv2.rectangle(img, (0, 0), (size, size), identity.backdrop, -1)
    cv = _Canvas(img)
    g = _layout(identity, size)
    cx, cy, fw, fh = g.cx, g.cy, g.fw, g.fh
    hair, shade = identity.hair, identity.shade
    if identity.hair_style == 3:  # long hair falls behind the face
        cv.poly([(cx - fw * 1.18, cy - fh * 0.3), (cx + fw * 1.18, cy - fh * 0.3),
                 (cx + fw * 1.3, cy + fh * 0.95), (cx - fw * 1.3, cy + fh * 0.95)], hair)
    cv.ellipse((cx, cy + fh * 1.6), (fw * 2.1, fh * 0.7), identity.shirt)
    cv.poly([(cx - fw * 0.42, cy + fh * 0.5), (cx + fw * 0.42, cy + fh * 0.5),
             (cx + fw * 0.48, cy + fh * 1.1), (cx - fw * 0.48, cy + fh * 1.1)], shade)
    cv.ellipse((cx, cy - fh * 0.08), (fw * 1.08, fh * 1.04), hair, start=165, end=375)
    cv.ellipse((cx, g.eye_y + fh * 0.12), (fw * 1.1, fh * 0.17), shade)  # the ears
    cv.poly(identity.outline * (fw, fh) + (cx, cy), identity.skin)
    # Hair cap above the hairline; styles 1 and 2 part it to one side.
    tilt = (0.0, 12.0, -12.0, 0.0)[identity.hair_style]
    cv.ellipse((cx, cy - fh * identity.hairline), (fw * 1.06, fh * 0.62), hair, angle=tilt,
               start=180, end=360)
    return img


def render_face(identity: Identity, valence: float, arousal: float, category: int, cue: float,
                look: Look, size: int, base: np.ndarray | None = None) -> np.ndarray:
    """Draw one face of ``category`` (its cue at strength ``cue`` in [0, 1]) at (valence,
    arousal): uint8 RGB (size, size, 3). ``base`` is :func:`draw_base` of ``identity`` at
    ``size``, passed in to reuse it across a person's images (drawn here when None)."""
    if base is None:
        base = draw_base(identity, size)
    e = _expression(valence, arousal, category, cue)
    pose = _pose(look, size)
    # The backdrop is uniform and the shoulders reach the bottom edge, so replicating the
    # border fills what the pose uncovers.
    img = cv2.warpAffine(base, pose, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    cv = _Canvas(img, pose, look.angle, look.scale)
    g = _layout(identity, size)
    s, cx, cy, fw, fh, eye_y, thick = g.s, g.cx, g.cy, g.fw, g.fh, g.eye_y, g.thick
    skin, line = identity.skin, identity.line

    if e.blush > 0:
        blush = _mix(skin, _BLUSH, 0.45 * e.blush)
        for side in (-1, 1):
            cv.ellipse((cx + side * fw * 0.5, cy + fh * 0.18), (fw * 0.16, fh * 0.08), blush)

    _draw_eyes(cv, identity, e, cx, eye_y, fw, thick)
    _draw_brows(cv, identity, e, cx, eye_y, fw, fh, s)

    # Nose, with the wrinkles of disgust on its bridge and beside it.
    tip_y = eye_y + fh * identity.nose_len + fh * 0.1
    cv.lines([[(cx + fw * 0.02, eye_y + fh * 0.08), (cx + fw * 0.07, tip_y),
               (cx - fw * 0.06, tip_y + fh * 0.03)]], line, thick)
    if e.wrinkle > 0:
        bridge = [[(cx - fw * 0.2, y + fh * 0.02), (cx, y), (cx + fw * 0.2, y + fh * 0.02)]
                  for y in (eye_y + fh * 0.04, eye_y + fh * 0.1, eye_y + fh * 0.16)]
        sides = [[(cx + side * fw * 0.16, tip_y - fh * 0.04),
                  (cx + side * fw * 0.3, tip_y + fh * 0.07)] for side in (-1, 1)]
        cv.lines(bridge + sides, _mix(skin, _WRINKLE, 0.75 * e.wrinkle), thick)

    _draw_mouth(cv, identity, e, cx, cy + fh * 0.5, fw, fh, thick)

    if look.occluder is not None:
        ox, oy, ow, oh, colour = look.occluder
        cv.ellipse((ox * s, oy * s), (ow * s, oh * s), colour)
    return _finish(cv.img, look)


def _draw_eyes(cv: _Canvas, identity: Identity, e: _Expression, cx: float, eye_y: float,
               fw: float, thick: int) -> None:
    """Sclera, iris and pupil, then the lids cut in skin colour, a lid line, glasses."""
    ew = identity.eye_w * fw
    eh = ew * 0.72 * e.eye_open
    r = ew * 0.55 * e.iris_scale
    dx = identity.eye_dx * fw
    centres = [(cx - dx, eye_y), (cx + dx, eye_y)]
    for c in centres:
        cv.ellipse(c, (ew, eh), _SCLERA)
        cv.ellipse(c, (r, min(r, eh)), identity.iris)
        if r > 2.2:  # a pupil under a pixel wide would not show
            cv.ellipse(c, (r * 0.45, min(r * 0.45, eh)), _DARK)
    if e.upper_lid:
        # Positive: the inner end comes down (anger); negative: the outer end droops.
        lids = []
        for side, (ex, _) in zip((-1, 1), centres, strict=True):
            inner, outer = ex - side * ew * 1.1, ex + side * ew * 1.1
            lids.append([(inner, eye_y - eh + eh * 2 * max(e.upper_lid, 0.0)),
                         (outer, eye_y - eh + eh * 2 * max(-e.upper_lid, 0.0))])
        cv.polys([[*lid, (lid[1][0], eye_y - eh - ew), (lid[0][0], eye_y - eh - ew)]
                  for lid in lids], identity.skin)
        cv.lines(lids, identity.line, thick)
    for c in centres:
        if e.lower_lid > 0:
            top = eye_y + eh - eh * 1.6 * e.lower_lid
            cv.ellipse((c[0], top + eh * 1.2), (ew * 1.15, eh * 1.2), identity.skin, start=180,
                       end=360)
        cv.ellipse(c, (ew, eh), identity.line, thick, start=180, end=360)
        if identity.glasses:
            cv.ellipse(c, (ew * 1.7, ew * 1.35), _FRAME, thick)
    if identity.glasses:
        cv.lines([[(cx - dx + ew * 1.7, eye_y), (cx + dx - ew * 1.7, eye_y)]], _FRAME, thick)


def _draw_brows(cv: _Canvas, identity: Identity, e: _Expression, cx: float, eye_y: float,
                fw: float, fh: float, s: float) -> None:
    """Thick strokes whose inner ends rise, fall and move inward with the expression."""
    ew = identity.eye_w * fw
    by = eye_y - fh * (0.2 + e.brow_raise)
    thick = max(1, round(identity.brow_thick * s))
    brows = []
    for side in (-1, 1):
        ex = cx + side * identity.eye_dx * fw
        brows.append([(ex - side * ew * (1.2 - e.brow_knit * 8), by + fh * e.brow_inner_down),
                      (ex + side * ew * 0.1, by - fh * 0.025),
                      (ex + side * ew * 1.35, by + fh * 0.02)])
    cv.lines(brows, identity.brow, thick)


def _draw_mouth(cv: _Canvas, identity: Identity, e: _Expression, mx: float, my: float,
                fw: float, fh: float, thick: int) -> None:
    """Lips bent by valence, opened by arousal; one corner raised by a sneer."""
    w, c, o, sn = identity.mouth_w * fw * e.mouth_width, fh * e.mouth_curve, \
        fh * e.mouth_open, fh * e.sneer
    # x and the upper lip, lower lip and teeth edge as mixes of the fixed mouth profiles.
    upper, lower, edge = cv.curves(
        (mx, w, 0.0, 0.0, 0.0),
        [(my, 0.0, -c, -0.4 * o, -sn), (my, 0.0, -c, 0.6 * o, 0.0),
         (my, 0.0, -c, 0.05 * o, -0.55 * sn)],
        _MOUTH_BASIS)
    if o > 0.8:
        cv.fill([np.concatenate([upper, lower[::-1]])], _MOUTH_IN)
        if e.teeth:
            cv.fill([np.concatenate([upper, edge[::-1]])], _TEETH)
        cv.stroke([upper, lower], identity.lip, thick)
    else:
        cv.stroke([upper], identity.lip, thick + 1)


def _finish(img: np.ndarray, look: Look) -> np.ndarray:
    """Blur, exposure, a lighting gradient and sensor noise (saturated to uint8 by OpenCV,
    which is several times faster than numpy broadcasting on arrays this small)."""
    size = img.shape[0]
    if look.blur:
        img = cv2.GaussianBlur(img, (0, 0), look.blur * size / 64)
    x, y = _light_ramps(size)
    gain = cv2.addWeighted(x, look.light * math.cos(look.light_dir),
                           y, look.light * math.sin(look.light_dir), look.brightness)
    lit = cv2.multiply(img, gain, dtype=cv2.CV_32F)
    top, left = look.noise_at
    noise = _noise_texture()[top:top + size, left:left + size]
    return cv2.addWeighted(lit, 1.0, noise, look.noise, 0.0, dtype=cv2.CV_8U)


def _subject_splits(subjects: int, seed: int) -> list[str]:
    """Split of each subject index: a seeded shuffle cut 70/15/15 into train/val/test."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(subjects)
    n_val = max(1, round(subjects * _VAL_SHARE))
    n_test = max(1, round(subjects * _TEST_SHARE))
    split = ["train"] * subjects
    for i in order[:n_val]:
        split[int(i)] = "val"
    for i in order[n_val:n_val + n_test]:
        split[int(i)] = "test"
    return split


class SyntheticFaces:
    """Reader of the procedural face set (format ``synthetic``); the source is ignored.

    For smoke runs and tests, not results. ``subjects`` people × ``images_per_subject``
    faces (categories in turn, so 70 gives 10 per category per subject), rendered at
    ``size`` px RGB. ``splits="subject"`` cuts the subjects 70/15/15 into train/val/test
    (person-independent official splits); ``splits="none"`` puts every face in train for
    k-fold use.
    """

    name = "synthetic"
    dataset = "synthetic"

    def __init__(self, subjects: int = DEFAULT_SUBJECTS,
                 images_per_subject: int = DEFAULT_IMAGES_PER_SUBJECT, size: int = 64,
                 seed: int = 0, splits: str = "subject") -> None:
        if splits not in ("subject", "none"):
            raise ValueError(f"synthetic: splits must be 'subject' or 'none', got {splits!r}")
        min_subjects = 3 if splits == "subject" else 1
        if subjects < min_subjects or images_per_subject < 1:
            raise ValueError(
                f"synthetic: need subjects >= {min_subjects} (with splits={splits!r}) and "
                f"images_per_subject >= 1, got {subjects} and {images_per_subject}"
            )
        if not 16 <= size <= MAX_SIZE:
            raise ValueError(f"synthetic: size must be 16..{MAX_SIZE} px, got {size}")
        if seed < 0:
            raise ValueError(f"synthetic: seed must be >= 0, got {seed}")
        self.subjects = subjects
        self.images_per_subject = images_per_subject
        self.size = size
        self.seed = seed
        self.splits = splits
        self._width = max(3, len(str(subjects - 1)))
        # The last few people drawn: ingest reads items in subject order, so this holds
        # the people of the chunks in flight without growing with the dataset.
        self._people: OrderedDict[int, tuple[Identity, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        # Ingest pickles the reader for its workers: the drawing cache stays behind.
        return {**self.__dict__, "_people": OrderedDict()}

    def class_names(self, root: Path) -> list[str]:
        """FER2013's seven names (``root`` is ignored)."""
        return list(CLASS_NAMES)

    def split_source(self) -> dict[str, str]:
        """How the canonical splits were made (empty with ``splits="none"``)."""
        if self.splits == "none":
            return {}
        note = f"synthetic subjects, seeded split (seed {self.seed})"
        return {"train": f"{note}, 70%", "val": f"{note}, 15%", "test": f"{note}, 15%"}

    def scan(self, root: Path) -> Iterator[SourceItem]:
        """Every face's metadata (``root`` is ignored); no pixel is drawn."""
        splits = _subject_splits(self.subjects, self.seed)
        for subject in range(self.subjects):
            sid = f"p{subject:0{self._width}d}"
            split = splits[subject] if self.splits == "subject" else "train"
            for index in range(self.images_per_subject):
                category = index % len(CLASS_NAMES)
                v, a, cue = sample_expression(category, _image_rng(self.seed, subject, index))
                key = f"{sid}/{index:04d}"
                yield SourceItem(
                    source_file=f"synthetic/{key}.png",
                    label=category,
                    label_name=CLASS_NAMES[category],
                    soft_label=soft_label(v, a, category, cue),
                    valence=v,
                    arousal=a,
                    subject_id=sid,
                    split=split,
                    key=key,
                )

    def load(self, root: Path, item: SourceItem) -> np.ndarray:
        """Draw ``item``'s face: uint8 RGB (size, size, 3)."""
        subject, index = self._parse_key(item)
        rng = _image_rng(self.seed, subject, index)
        cue = sample_expression(item.label, rng)[2]
        look = random_look(rng, self.size)
        identity, base = self._person(subject)
        return render_face(identity, item.valence, item.arousal, item.label, cue, look,
                           self.size, base)

    def _person(self, subject: int) -> tuple[Identity, np.ndarray]:
        person = self._people.get(subject)
        if person is None:
            identity = face_identity(subject, self.seed)
            person = self._people[subject] = (identity, draw_base(identity, self.size))
            if len(self._people) > _PEOPLE_CACHED:
                self._people.popitem(last=False)
        return person

    def _parse_key(self, item: SourceItem) -> tuple[int, int]:
        sid, _, index = item.key.partition("/")
        if not (sid.startswith("p") and sid[1:].isdigit() and index.isdigit()):
            raise DatasetFormatError(
                f"{item.source_file}: key {item.key!r} is not a synthetic face key (pNNN/NNNN)"
            )
        return int(sid[1:]), int(index)


def default_cache_dir(size: int = 48, channels: int = 1) -> Path:
    """``~/.cache/ray_fer/synthetic-v1-<hash of the generator parameters>``."""
    params = {"subjects": DEFAULT_SUBJECTS, "images_per_subject": DEFAULT_IMAGES_PER_SUBJECT,
              "seed": 0, "splits": "subject", "size": size, "channels": channels}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "ray_fer" / f"synthetic-v1-{digest}"


def ensure_default_shards(cache_dir: Path | None = None, *, size: int = 48,
                          channels: int = 1) -> str:
    """Local shard URI of the default synthetic set, ingesting it first if needed.

    The defaults (48 px gray) suit the classifiers; ``size=64, channels=3`` gives the
    autoencoder's 3×64×64 faces. The set is built in a temporary folder beside
    ``cache_dir`` (default :func:`default_cache_dir`) and moved into place complete, so an
    interrupted build is never mistaken for data. A ``cache_dir`` holding anything other
    than this set (or the leftovers of an interrupted build of it) is refused, never
    overwritten.
    """
    from ray_fer.data.shards import MANIFEST, ShardError, read_manifest
    from ray_fer.ingest import ingest
    from ray_fer.storage import resolve

    target = Path(cache_dir).expanduser() if cache_dir is not None else \
        default_cache_dir(size, channels)
    shape = [size, size, channels]

    def complete() -> bool:
        """True when ``target`` holds this set; raises when it holds something else."""
        if not target.exists():
            return False
        if not target.is_dir():
            raise ShardError(f"{target}: not a folder; pass a folder as cache_dir")
        try:
            manifest = read_manifest(resolve(target))
        except ShardError:
            foreign = sorted(p.name for p in target.iterdir()
                             if p.name != MANIFEST and not p.name.startswith("shard-"))
            if foreign:
                raise ShardError(
                    f"{target}: holds files that are not face shards ({', '.join(foreign[:3])}"
                    "); pass a new or empty folder as cache_dir") from None
            return False
        if manifest.format != "synthetic" or manifest.image_shape != shape:
            raise ShardError(
                f"{target}: holds {manifest.format} shards of shape {manifest.image_shape}, "
                f"not the synthetic set at {shape}; pass another cache_dir")
        return True

    if complete():
        return str(target.resolve())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ingest("synthetic", "default", str(tmp), size=size, channels=channels,
               reader_options={"size": size}, progress=False)
        if not complete():  # else another process finished first
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target.resolve())


def shared_default_shards(storage: str, *, size: int = 48, channels: int = 1,
                          endpoint: str | None = None) -> str:
    """URI of the default synthetic set under ``storage`` (e.g. ``s3://b/searches``),
    ingesting it there first if needed, so that every node of a cluster can read it.

    The prefix is named after :func:`default_cache_dir`'s parameter hash, so a set made with
    other generator settings is never mistaken for this one.
    """
    from ray_fer.data.shards import ShardError, read_manifest
    from ray_fer.ingest import ingest
    from ray_fer.storage import resolve

    uri = storage.rstrip("/") + "/embedded-faces/" + default_cache_dir(size, channels).name
    try:
        manifest = read_manifest(resolve(uri, endpoint))
        if manifest.format == "synthetic" and manifest.image_shape == [size, size, channels]:
            return uri
    except ShardError:
        pass  # absent or withdrawn: (re)build it
    ingest("synthetic", "default", uri, size=size, channels=channels, endpoint=endpoint,
           reader_options={"size": size}, progress=False)
    return uri

