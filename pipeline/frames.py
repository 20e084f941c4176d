"""Video decoding and frame selection: one sharp, distinct frame per time bucket, in bounded memory.

    selection = select_frames(path, num_frames=8)   # FrameSelection
    selection.candidates  # one Candidate per non-empty bucket, time order; `.reason`: None or why dropped

The video's duration is cut into `num_frames` equal buckets. In each bucket the sharpest frame (variance of
the Laplacian on a grey thumbnail) becomes the bucket's candidate; candidates far blurrier than the video's
typical candidate are marked "blurred" and near-copies of an earlier kept candidate "duplicate". Short clips
are decoded sequentially (every frame scored); long ones (measured against the keyframe interval) by seeking
into each bucket and scoring a short window there, so the work grows with `num_frames`, not with the video's
length. Only the current best frame
per bucket is kept, at most `max_side` pixels on its long side, so a 4K 10-minute video needs about
`num_frames` x 6 MB.

Matting, framing and the per-frame report live in `pipeline/matting.py` and `pipeline/preprocess.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.errors import InvalidParameter, VideoDecodeError, VideoTooLarge

logger = logging.getLogger(__name__)

# Long side of the grey thumbnail used for sharpness, so scores compare across resolutions.
ANALYSIS_SIDE = 512
THUMB_SIDE = 96  # long side of the thumbnail used for near-duplicate tests
MAX_SIDE = 1920  # long side kept for chosen frames: the object is cropped from this, then resized to 512

# A candidate is "blurred" below this share of the median candidate sharpness. Motion-blurred phone frames
# score 5-20x below sharp ones; focus breathing and texture changes between views stay well within 3x.
BLUR_RATIO = 0.3
# Variance of the Laplacian (0..255 grey levels) of a flat image is ~0; a real view scores > 10.
MIN_SHARPNESS = 1.0
# Near-duplicate: fewer than this share of thumbnail pixels differ by more than DUPLICATE_LEVEL grey levels.
# A turning object changes a few percent of pixels between buckets; codec noise changes well under 0.1%.
DUPLICATE_LEVEL = 24
DUPLICATE_SHARE = 0.002

SEEK_WINDOW_S = 1.0  # seconds scored per bucket when seeking
MAX_BAD_PACKETS = 50  # undecodable packets tolerated per pass before the rest of the file is given up
KEYFRAME_SCAN_S = 20.0  # seconds of packets demuxed (not decoded) to measure the keyframe interval

# Header limits, checked before any frame is decoded (VideoLimits). 8K UHD is 33.2 Mpx; 10 minutes at
# 60 fps is 36,000 frames. Selection keeps only num_frames frames of at most MAX_SIDE a side anyway.
MAX_VIDEO_PIXELS = 7680 * 4320
MAX_VIDEO_DURATION_S = 600.0
MAX_VIDEO_FRAMES = 36_000

Mode = Literal["auto", "sequential", "seek"]


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream; sizes as displayed (rotation applied)."""

    width: int
    height: int
    duration_s: float
    fps: float
    num_frames: int  # from the container when known, else estimated as duration x fps
    codec: str
    rotation: int  # degrees counter-clockwise applied to decoded frames to show them upright


@dataclass
class Candidate:
    """One frame or image considered for reconstruction.

    image: uint8 (H, W, 3) RGB, long side <= MAX_SIDE; alpha: uint8 (H, W) when the source had a meaningful
    one.
    """

    image: np.ndarray
    index: int  # video frame number (timestamp x average frame rate) or position in the input list
    timestamp_s: float | None  # seconds from the video's start; None for images
    source: str  # file or archive member name, or "frame <index>"
    sharpness: float
    thumb: np.ndarray = field(repr=False)  # uint8 grey (h, w) for duplicate tests
    alpha: np.ndarray | None = field(default=None, repr=False)
    reason: str | None = None  # why it was rejected, None while usable


@dataclass
class FrameSelection:
    """Result of `select_frames`: one candidate per non-empty time bucket, in time order."""

    candidates: list[Candidate]
    info: VideoInfo
    mode: Literal["sequential", "seek"]
    decoded_frames: int  # frames decoded to get there (the cost)
    keyframe_interval_s: float | None = None  # measured for mode="auto"


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoLimits:
    """What a container header may announce before any frame is decoded (settings `max_video_*`)."""

    max_pixels: int = MAX_VIDEO_PIXELS
    max_duration_s: float = MAX_VIDEO_DURATION_S
    max_frames: int = MAX_VIDEO_FRAMES


def check_video_header(container, name: str, limits: VideoLimits) -> None:
    """Refuse a video whose header announces too many pixels per frame, seconds or frames (VideoTooLarge).

    Reads only what the demuxer parsed from the header (codec parameters, stream and container durations):
    nothing is decoded, so a header announcing 16000x16000 costs nothing. Sizes FFmpeg itself refuses come
    back as 0 and fail at decoding instead.
    """
    if not container.streams.video:
        raise VideoDecodeError(f"video {name!r} has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise VideoTooLarge(
            f"video {name!r} announces {width}x{height} = {width * height} pixels per frame, more than the "
            f"{limits.max_pixels} allowed (setting max_video_pixels)"
        )
    duration = 0.0
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    if duration > limits.max_duration_s:
        raise VideoTooLarge(
            f"video {name!r} lasts {duration:.0f} s, more than the {limits.max_duration_s:.0f} s allowed "
            "(setting max_video_duration_s)"
        )
    if (stream.frames or 0) > limits.max_frames:
        raise VideoTooLarge(
            f"video {name!r} announces {stream.frames} frames, more than the {limits.max_frames} allowed "
            "(setting max_video_frames)"
        )


def probe_video(path: Path, limits: VideoLimits | None = None) -> VideoInfo:
    """Check the header against `limits`, then decode one frame; VideoTooLarge / VideoDecodeError."""
    import av

    name = Path(path).name
    limits = limits or VideoLimits()
    try:
        with av.open(str(path)) as container:
            check_video_header(container, name, limits)
            stream, first = _first_frame(container, name)
            return _info(container, stream, first, max_packets=limits.max_frames)
    except _av_errors() as exc:
        raise _decode_error(name, exc) from None


def _decode_error(name: str, exc: BaseException) -> VideoDecodeError:
    """VideoDecodeError with PyAV's reason but not the file path it appends (no server path to clients)."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return VideoDecodeError(f"video {name!r} cannot be decoded (corrupt or truncated?): {reason}")


def _first_frame(container, name: str, *, threaded: bool = False):
    """First video stream and its first decoded frame; VideoDecodeError if either is missing."""
    if not container.streams.video:
        raise VideoDecodeError(f"video {name!r} has no video stream")
    stream = container.streams.video[0]
    if threaded:
        stream.thread_type = "AUTO"  # frame + slice threads: ~1.8x on 2 cores for H.264
    first = next(container.decode(stream), None)
    if first is None:
        raise VideoDecodeError(f"video {name!r} contains no decodable frame")
    return stream, first


def _info(container, stream, first_frame, *, max_packets: int = MAX_VIDEO_FRAMES) -> VideoInfo:
    rotation = round((first_frame.rotation or 0) / 90.0) * 90 % 360
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    duration = 0.0
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    if duration <= 0:
        duration = _scan_duration(container, stream, max_packets)
    frames = stream.frames or (round(duration * fps) if fps else 0)
    width, height = first_frame.width, first_frame.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(width, height, duration, fps, int(frames), stream.codec_context.name, rotation)


def _scan_duration(container, stream, max_packets: int = MAX_VIDEO_FRAMES) -> float:
    """Duration from the last packet's end when the header has none (browser WebM); demuxes, never decodes.

    More than `max_packets` packets means more frames than allowed: VideoTooLarge, without reading on.
    """
    start = stream.start_time or 0
    end = start
    container.seek(0, stream=stream)
    for count, packet in enumerate(container.demux(stream)):
        if count >= max_packets:
            raise VideoTooLarge(f"video has more than {max_packets} frames (setting max_video_frames)")
        if packet.pts is not None:
            end = max(end, packet.pts + (packet.duration or 0))
    return float((end - start) * stream.time_base) if stream.time_base else 0.0


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a grey image (any real dtype, 0..255 scale). Higher means sharper."""
    from scipy.ndimage import laplace

    return float(laplace(grey.astype(np.float32)).var())


def _scaled_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(width, height))
    # Even sizes keep swscale's chroma handling exact for yuv420p sources.
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def grey_thumbnails(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(analysis grey, duplicate thumbnail) for an RGB uint8 (H, W, 3) image: float32 and uint8 grey."""
    from PIL import Image

    im = Image.fromarray(rgb).convert("L")
    analysis = im.resize(_scaled_size(*im.size, ANALYSIS_SIDE), Image.Resampling.BILINEAR)
    thumb = im.resize(_scaled_size(*im.size, THUMB_SIDE), Image.Resampling.BOX)
    return np.asarray(analysis, np.float32), np.asarray(thumb)


def _thumb_from_analysis(grey: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    return np.asarray(im.resize(_scaled_size(*im.size, THUMB_SIDE), Image.Resampling.BOX))


def is_duplicate(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two uint8 grey thumbnails show (nearly) the same picture."""
    if a.shape != b.shape:
        return False
    changed = np.abs(a.astype(np.int16) - b.astype(np.int16)) > DUPLICATE_LEVEL
    return float(changed.mean()) < DUPLICATE_SHARE


def mark_blurred(candidates: Sequence[Candidate], ratio: float = BLUR_RATIO) -> None:
    """Set reason "blurred" on usable candidates far below the median sharpness of all usable ones."""
    usable = [c for c in candidates if c.reason is None]
    if not usable:
        return
    reference = float(np.median([c.sharpness for c in usable]))
    for c in usable:
        if c.sharpness < MIN_SHARPNESS or c.sharpness < ratio * reference:
            c.reason = "blurred"


def mark_duplicates(candidates: Sequence[Candidate]) -> None:
    """Set reason "duplicate" on usable candidates that repeat an earlier kept one."""
    kept: list[np.ndarray] = []
    for c in candidates:
        if c.reason is not None:
            continue
        if any(is_duplicate(c.thumb, k) for k in kept):
            c.reason = "duplicate"
        else:
            kept.append(c.thumb)


# Planar YUV formats whose first plane is the luma (grey) image, with its sample type and scale to 0..255.
_LUMA_PLANE = {
    **{
        f: (np.uint8, 1.0)
        for f in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12")
    },
    **{f: (np.dtype("<u2"), 0.25) for f in ("yuv420p10le", "yuv422p10le", "yuv444p10le")},
}


class _Decoder:
    """Turns PyAV frames into what selection needs: analysis grey (cheap) and, on demand, upright RGB."""

    def __init__(self, info: VideoInfo, start_s: float, max_side: int) -> None:
        self.info = info
        self.start_s = start_s
        self.k = (info.rotation // 90) % 4  # np.rot90 turns counter-clockwise, like the display matrix
        w, h = (info.height, info.width) if self.k % 2 else (info.width, info.height)  # coded size
        self.analysis_size = _scaled_size(w, h, ANALYSIS_SIDE)
        self.stride = max(1, round(max(w, h) / ANALYSIS_SIDE))
        self.keep_size = _scaled_size(w, h, max_side)

    def time(self, frame) -> float:
        return float(frame.time) - self.start_s if frame.time is not None else 0.0

    def grey(self, frame) -> np.ndarray:
        """float32 grey image for scoring, long side about ANALYSIS_SIDE, upright."""
        luma = _LUMA_PLANE.get(frame.format.name)
        if luma is not None:
            # Read every stride-th luma sample straight from the decoded plane: a 1080p frame costs ~0.2 ms
            # this way against ~5 ms for a swscale conversion to grey (benchmarks/bench_frames.py profile).
            dtype, scale = luma
            plane = frame.planes[0]
            itemsize = np.dtype(dtype).itemsize
            rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // itemsize)
            sub = rows[:: self.stride, : plane.width : self.stride].astype(np.float32)
            grey = sub * scale if scale != 1.0 else sub
        else:
            w, h = self.analysis_size
            grey = frame.reformat(width=w, height=h, format="gray").to_ndarray().astype(np.float32)
        return np.rot90(grey, self.k) if self.k else grey

    def rgb(self, frame) -> np.ndarray:
        w, h = self.keep_size
        rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
        return np.ascontiguousarray(np.rot90(rgb, self.k)) if self.k else rgb


def select_frames(
    path: Path,
    num_frames: int,
    *,
    mode: Mode = "auto",
    max_side: int = MAX_SIDE,
    seek_window_s: float = SEEK_WINDOW_S,
    limits: VideoLimits | None = None,
) -> FrameSelection:
    """Pick the sharpest frame in each of `num_frames` equal time buckets of the video at `path`.

    Returns a FrameSelection whose candidates (time order) carry RGB uint8 (H, W, 3) images with long side at
    most `max_side`, their frame index, timestamp (s) and sharpness; blurred and duplicate candidates are
    marked, not dropped. `mode`: "sequential" decodes every frame, "seek" seeks into each bucket and scores
    `seek_window_s` seconds there. "auto" seeks when that decodes fewer frames even in the worst case, i.e.
    when num_frames x (keyframe interval + window) < duration: a seek lands on the keyframe before the window
    and decodes from there. With 1 s keyframes and 8 frames that is videos over 16 s (bench_frames.py: seeking
    is ~3x faster on a 30 s 1080p clip, ~1.15x slower on a 4 s one). Raises VideoDecodeError.
    """
    import av

    if num_frames < 1:
        raise InvalidParameter("num_frames", f"{num_frames} is below 1")
    if mode not in ("auto", "sequential", "seek"):
        raise InvalidParameter("mode", f"{mode!r} is not one of auto, sequential, seek")
    name = Path(path).name
    try:
        with av.open(str(path)) as container:
            check_video_header(container, name, limits or VideoLimits())
            stream, first = _first_frame(container, name, threaded=True)
            info = _info(container, stream, first)
            start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            decoder = _Decoder(info, start_s, max_side)
            gop_s = None
            if mode == "auto":
                gop_s = _keyframe_interval_s(container, stream, start_s)
            use_seek = mode == "seek" or (
                mode == "auto" and num_frames * (gop_s + seek_window_s) < info.duration_s
            )
            if use_seek:
                best, decoded = _select_seek(container, stream, decoder, num_frames, seek_window_s)
            else:
                best, decoded = _select_sequential(container, stream, decoder, num_frames)
    except _av_errors() as exc:
        raise _decode_error(name, exc) from None
    candidates = [c for c in best if c is not None]
    if not candidates:
        raise VideoDecodeError(f"video {name!r} yielded no frame")
    mark_blurred(candidates)
    mark_duplicates(candidates)
    logger.info(
        "selected %d candidates from %s (%s, %.1f s, %d frames decoded)",
        len(candidates), name, "seek" if use_seek else "sequential", info.duration_s, decoded,
    )  # fmt: skip
    return FrameSelection(candidates, info, "seek" if use_seek else "sequential", decoded, gop_s)


def _keyframe_interval_s(container, stream, start_s: float, scan_s: float = KEYFRAME_SCAN_S) -> float:
    """Median seconds between keyframes over the first `scan_s` seconds (demuxed only, cheap).

    With a single keyframe in that span the interval is at least the span: seeking would be costly.
    """
    tb = stream.time_base
    keys: list[float] = []
    t = 0.0
    container.seek(0, stream=stream)
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        t = float(packet.pts * tb) - start_s
        if packet.is_keyframe:
            keys.append(t)
        if t > scan_s:
            break
    if len(keys) >= 2:
        return float(np.median(np.diff(keys)))
    return max(t, scan_s)


def _bucket(t: float, duration: float, n: int) -> int:
    if duration <= 0:
        return 0
    return min(max(int(t / duration * n), 0), n - 1)


def _consider(best: list[Candidate | None], b: int, frame, decoder: _Decoder, index: int, t: float) -> None:
    """Score one frame; keep its RGB only if it beats the bucket's current best (bounded memory)."""
    grey = decoder.grey(frame)
    score = sharpness(grey)
    current = best[b]
    if current is None or score > current.sharpness:
        best[b] = Candidate(
            image=decoder.rgb(frame),
            index=index,
            timestamp_s=round(t, 4),
            source=f"frame {index}",
            sharpness=score,
            thumb=_thumb_from_analysis(grey),
        )


def _decode_tolerant(container, stream, max_errors: int = MAX_BAD_PACKETS) -> Iterator:
    """Frames in presentation order, skipping packets the decoder rejects (a damaged stretch of the file).

    Stops, keeping what decoded, when the demuxer cannot go on (a truncated file) or after `max_errors` bad
    packets (a file that is garbage from there on).
    """
    errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except _av_errors() as exc:
            logger.warning("video ends early, keeping the frames before: %s", exc)
            return
        try:
            frames = packet.decode()  # the final empty packet flushes the decoder's delayed frames
        except _av_errors() as exc:
            errors += 1
            logger.warning("skipping an undecodable packet (%d so far): %s", errors, exc)
            if errors >= max_errors:
                return
            continue
        yield from frames


def _select_sequential(container, stream, decoder: _Decoder, n: int) -> tuple[list[Candidate | None], int]:
    best: list[Candidate | None] = [None] * n
    container.seek(0, stream=stream)  # rewind past the probe frame; decoders are flushed by seek
    duration, fps = decoder.info.duration_s, decoder.info.fps
    decoded = 0
    for frame in _decode_tolerant(container, stream):
        t = decoder.time(frame)
        # The frame number from the timestamp, as in seek mode: stays right after a skipped damaged stretch.
        index = round(t * fps) if fps else decoded
        _consider(best, _bucket(t, duration, n), frame, decoder, index, t)
        decoded += 1
    return best, decoded


def _select_seek(
    container, stream, decoder: _Decoder, n: int, window_s: float
) -> tuple[list[Candidate | None], int]:
    best: list[Candidate | None] = [None] * n
    duration = decoder.info.duration_s
    fps = decoder.info.fps or 30.0
    tb = stream.time_base
    start_pts = stream.start_time or 0
    decoded = 0
    for b in range(n):
        lo, hi = b * duration / n, (b + 1) * duration / n
        window = min(window_s, hi - lo)
        w_lo = lo + (hi - lo - window) / 2  # centre the window in the bucket
        w_hi = w_lo + window
        # Seek lands on the keyframe at or before the target; frames before the window are decoded, not
        # scored.
        container.seek(start_pts + int(w_lo / tb), stream=stream, backward=True, any_frame=False)
        for frame in _decode_tolerant(container, stream):
            decoded += 1
            t = decoder.time(frame)
            if t >= w_hi:
                break
            if t >= w_lo:
                _consider(best, b, frame, decoder, round(t * fps), t)
    return best, decoded
