"""The preprocessing stage: any user input -> N framed 512x512 RGB frames + a report on every candidate frame.

    result = preprocess_input(path, num_frames=8, remover=BackgroundRemover("u2netp", models_dir))
    result.frames   # uint8 (N, 512, 512, 3) RGB, object centred on 0.5 grey, time order
    result.reports  # [FrameReport] for every candidate, chosen or not, with the reason it was dropped

Composes `pipeline.inputs` (what the input is), `pipeline.frames` (video decoding and selection) and
`pipeline.matting` (rembg and framing). Pure and synchronous: the Serve deployment and batch runs call it as
is.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.errors import InvalidInput, InvalidParameter, NoUsableFrames
from pipeline.frames import (
    Candidate,
    grey_thumbnails,
    mark_blurred,
    mark_duplicates,
    select_frames,
    sharpness,
)
from pipeline.inputs import (
    MAX_ARCHIVE_MEMBERS,
    MediaKind,
    detect_kind,
    iter_archive_images,
    open_image,
    sniff,
)
from pipeline.matting import BackgroundRemover, assess_foreground, frame_object, has_meaningful_alpha
from pipeline.params import FOREGROUND_RATIO_RANGE, NUM_FRAMES_RANGE
from pipeline.thumbnails import jpeg_thumbnail

logger = logging.getLogger(__name__)

Kind = Literal["video", "images", "archive"]

# What each rejection reason tells the user, for the NoUsableFrames message.
REASON_TEXT = {
    "blurred": "too blurred (hold the camera still or film in more light)",
    "duplicate": "a near-copy of another frame",
    "empty_foreground": "no object found",
    "tiny_foreground": "the object is too small in the picture (move closer)",
    "cut_by_border": "the object runs out of the picture (step back so all of it is in view)",
    "surplus": "more images than num_frames; a sharper one nearby was used",
}

# Framing problems that still leave a usable object: when no candidate is clean, the best of these is used
# (best-effort, with a warning) unless the job is strict. An empty foreground or unreadable input never is.
BEST_EFFORT_REASONS = ("cut_by_border", "tiny_foreground")  # preferred first


@dataclass
class FrameReport:
    """One candidate frame or image, chosen or not. JSON-able through `to_dict()`."""

    index: int  # video frame number, or position of the image in the input (0-based)
    timestamp_s: float | None  # seconds from the video's start; None for images
    source: str  # "frame <n>", the image's file name or archive member name
    chosen: bool
    reason: str | None  # None when chosen, else a key of REASON_TEXT
    sharpness: float  # variance of the Laplacian on a 512-px grey thumbnail
    foreground_fraction: float | None  # share of the picture that is object; None when not measured
    warning: str | None = None  # chosen despite this framing problem (a BEST_EFFORT_REASONS key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Preprocessed:
    """Frames ready for TripoSR and the report on how they were chosen."""

    frames: np.ndarray  # uint8 (N, size, size, 3) RGB, grey 0.5 background, chosen frames in time/input order
    reports: list[FrameReport]  # every candidate, chosen and rejected, in time/input order
    scores: list[float]  # per chosen frame, in (0, 1], higher = better (the sharpest frame scores 1)
    kind: Kind
    info: dict[str, Any] = field(default_factory=dict)  # e.g. video size, duration, fps, selection mode
    warnings: list[dict[str, str]] = field(default_factory=list)  # [{code, message}] for the user
    # JPEG preview per entry of `reports` (same order); None where the pixels were never held (surplus images)
    thumbnails: list[bytes | None] = field(default_factory=list)

    @property
    def chosen(self) -> list[FrameReport]:
        return [r for r in self.reports if r.chosen]


def preprocess_input(
    path: Path | Sequence[Path],
    *,
    num_frames: int,
    foreground_ratio: float = 0.85,
    remove_background: bool = True,
    remover: BackgroundRemover | None = None,
    size: int = 512,
    strict: bool = False,
) -> Preprocessed:
    """Turn a video, an image, a folder or list of images, or a zip of images into framed RGB frames.

    Parameters
    ----------
    path : one file (video, image or zip, detected from its bytes), a folder of images, or a list of images.
    num_frames : frames wanted: a video is cut into this many time buckets; more images are thinned out.
    foreground_ratio : the object's long side as a share of the output square.
    remove_background : run rembg on frames without a meaningful alpha channel; False frames them as they are.
    remover : the process's BackgroundRemover; None builds the default one (u2net) on first use.
    size : output side in pixels.
    strict : refuse the input when no candidate passes the framing checks. Otherwise (photos are often all a
        user has) the best candidate that shows an object cut by the border or small in the picture is used,
        and `warnings` says what was wrong and how to film better.

    Returns Preprocessed (see its fields). Raises InvalidInput (and subclasses) for unreadable or unsafe
    input, InvalidParameter for out-of-range arguments, NoUsableFrames when every candidate was rejected.
    """
    lo, hi = NUM_FRAMES_RANGE
    if not lo <= num_frames <= hi:
        raise InvalidParameter("num_frames", f"{num_frames} is outside [{lo}, {hi}]")
    lo_r, hi_r = FOREGROUND_RATIO_RANGE
    if not lo_r <= foreground_ratio <= hi_r:
        raise InvalidParameter("foreground_ratio", f"{foreground_ratio} is outside [{lo_r}, {hi_r}]")
    if size < 32:
        raise InvalidParameter("size", f"{size} is below 32")

    kind, candidates, info = _candidates(path, num_frames)
    usable = [c for c in candidates if c.reason is None]
    if remove_background and remover is None and any(not has_meaningful_alpha(c.alpha) for c in usable):
        remover = BackgroundRemover()

    frames: list[np.ndarray] = []
    reports: list[FrameReport] = []
    fallback: tuple[tuple[int, float], np.ndarray, FrameReport] | None = None  # (rank, framed, report)
    thumbnails: list[bytes | None] = []
    for cand in candidates:
        thumbnails.append(None if cand.image is None else jpeg_thumbnail(cand.image))
        fraction: float | None = None
        framed: np.ndarray | None = None
        if cand.reason is None:
            framed, fraction, cand.reason = _frame(cand, foreground_ratio, size, remove_background, remover)
        report = FrameReport(
            index=cand.index,
            timestamp_s=cand.timestamp_s,
            source=cand.source,
            chosen=cand.reason is None,
            reason=cand.reason,
            sharpness=round(cand.sharpness, 3),
            foreground_fraction=None if fraction is None else round(fraction, 5),
        )
        reports.append(report)
        if report.chosen:
            assert framed is not None
            frames.append(framed)
        elif framed is not None and not strict and not frames:
            # Keep only the best framing-problem candidate so far: its pixels, nobody else's.
            rank = (-BEST_EFFORT_REASONS.index(report.reason), report.sharpness)
            if fallback is None or rank > fallback[0]:
                fallback = (rank, framed, report)
        cand.image = cand.alpha = None  # type: ignore[assignment]  # free full-size pixels as we go

    warnings: list[dict[str, str]] = []
    if not frames and fallback is not None:
        _, framed, report = fallback
        report.chosen, report.warning, report.reason = True, report.reason, None
        frames.append(framed)
        warnings.append(_best_effort_warning(report, len(reports)))
    if not frames:
        raise NoUsableFrames(_no_frames_message(reports))
    best = max(r.sharpness for r in reports if r.chosen) or 1.0
    scores = [round(max(r.sharpness / best, 1e-6), 6) for r in reports if r.chosen]
    logger.info(
        "preprocessed %s input: %d of %d candidates chosen (%s)",
        kind, len(frames), len(reports), dict(Counter(r.reason for r in reports if not r.chosen)),
    )  # fmt: skip
    return Preprocessed(
        np.stack(frames), reports, scores, kind, info, warnings=warnings, thumbnails=thumbnails
    )


def _frame(
    cand: Candidate,
    foreground_ratio: float,
    size: int,
    remove_background: bool,
    remover: BackgroundRemover | None,
) -> tuple[np.ndarray | None, float | None, str | None]:
    """(framed image or None, foreground fraction, rejection reason) for one usable candidate."""
    alpha = cand.alpha if has_meaningful_alpha(cand.alpha) else None
    if alpha is None and remove_background:
        assert remover is not None  # built by preprocess_input whenever some candidate needs it
        alpha = remover.mask(cand.image)
    if alpha is None:  # the user framed the object already: pad to a square on grey, no cropping
        return frame_object(cand.image, None, size=size), None, None
    fg = assess_foreground(alpha)
    problem = fg.problem(alpha.shape)
    if problem is not None and problem not in BEST_EFFORT_REASONS:
        return None, fg.fraction, problem
    # A framing problem still gets framed: it is the best-effort fallback if no candidate is clean.
    framed = frame_object(cand.image, alpha, foreground_ratio=foreground_ratio, size=size, bbox=fg.bbox)
    return framed, fg.fraction, problem


def _best_effort_warning(report: FrameReport, candidates: int) -> dict[str, str]:
    what = "photo" if report.timestamp_s is None else "video frame"
    return {
        "code": str(report.warning),
        "message": (
            f"no {what} among {candidates} candidate(s) passed the framing checks; used {report.source!r}, "
            f"where {REASON_TEXT[str(report.warning)]}. The mesh may "
            "be incomplete or coarse; set strict=true to refuse such input instead"
        ),
    }


def _no_frames_message(reports: list[FrameReport]) -> str:
    counts = Counter(r.reason for r in reports)
    parts = [f"{n} {REASON_TEXT.get(reason or '', reason)}" for reason, n in counts.most_common()]
    return f"no usable frame among {len(reports)} candidates: " + "; ".join(parts)


def _candidates(path: Path | Sequence[Path], num_frames: int) -> tuple[Kind, list[Candidate], dict[str, Any]]:
    if not isinstance(path, (str, Path)):
        files = [Path(p) for p in path]
        if not files:
            raise InvalidInput("no input files given")
        return "images", _image_candidates(lambda: _read_files(files), num_frames), {}
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if _is_image_file(p)]
        if not images:
            raise InvalidInput(f"folder {path.name!r} contains no images (png, jpg, webp)")
        return "images", _image_candidates(lambda: _read_files(images), num_frames), {}
    kind = detect_kind(path)
    if kind is MediaKind.VIDEO:
        selection = select_frames(path, num_frames)
        info = {**asdict(selection.info), "mode": selection.mode, "decoded_frames": selection.decoded_frames}
        return "video", selection.candidates, info
    if kind is MediaKind.ARCHIVE:
        return "archive", _image_candidates(lambda: iter_archive_images(path), num_frames), {}
    return "images", _image_candidates(lambda: _read_files([path]), num_frames), {}


def _is_image_file(path: Path) -> bool:
    with path.open("rb") as f:
        return sniff(f.read(64)) is MediaKind.IMAGE


def _read_files(paths: Sequence[Path]) -> Iterable[tuple[str, bytes | Path]]:
    if len(paths) > MAX_ARCHIVE_MEMBERS:
        raise InvalidInput(f"{len(paths)} images given; at most {MAX_ARCHIVE_MEMBERS} are accepted")
    for p in paths:
        if p.stat().st_size == 0:
            raise InvalidInput(f"image {p.name!r} is empty (0 bytes)")
        yield p.name, p


def _load_image(name: str, data: bytes | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 (H, W, 3), alpha uint8 (H, W) or None), long side at most frames.MAX_SIDE."""
    from pipeline.frames import MAX_SIDE

    im = open_image(data, name)
    im.thumbnail((MAX_SIDE, MAX_SIDE))  # keeps the aspect ratio
    arr = np.asarray(im)
    if arr.shape[2] == 4:
        return arr[..., :3].copy(), arr[..., 3].copy()
    return arr, None


def _image_candidates(
    items: Callable[[], Iterable[tuple[str, bytes | Path]]], num_frames: int
) -> list[Candidate]:
    """One candidate per image (input order), thinned to `num_frames` sharpest-per-group, blur/duplicate
    marked.

    `items` is called once to score every image and, when there are more images than `num_frames`, once more
    to decode the kept ones again: pixels of at most `num_frames` images are held at any time.
    """
    candidates: list[Candidate] = []
    for i, (name, data) in enumerate(items()):
        rgb, alpha = _load_image(name, data)
        analysis, thumb = grey_thumbnails(rgb)
        candidates.append(Candidate(rgb, i, None, name, sharpness(analysis), thumb, alpha))
        if len(candidates) > num_frames:  # too many to hold: keep scores only, decode the kept ones later
            for c in candidates:
                c.image = c.alpha = None  # type: ignore[assignment]
    if len(candidates) > num_frames:
        # Like time buckets for a video: split the sequence into num_frames groups, keep the sharpest of each.
        for group in np.array_split(np.arange(len(candidates)), num_frames):
            keep = max(group, key=lambda j: candidates[j].sharpness)
            for j in group:
                if j != keep:
                    candidates[j].reason = "surplus"
        for cand, (name, data) in zip(candidates, items(), strict=False):
            if cand.reason is None:
                cand.image, cand.alpha = _load_image(name, data)
    mark_blurred(candidates)
    mark_duplicates(candidates)
    return candidates
