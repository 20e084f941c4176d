"""Domain errors raised by pipeline stages.

Each carries a stable machine-readable `code`; the service maps classes to HTTP statuses in one table
(`serve_app/errors.py`), the CLI prints `str(error)`. Messages name the offending value.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error a pipeline stage raises on purpose."""

    code = "pipeline_error"


class InvalidInput(PipelineError):
    """The user's input cannot be used (unreadable, unsupported, unsafe)."""

    code = "invalid_input"


class UnsupportedMedia(InvalidInput):
    """The content is not a video, an image or a zip of images (detected from bytes, not names)."""

    code = "unsupported_media"


class VideoDecodeError(InvalidInput):
    """The content looks like a video container but cannot be decoded (corrupt, truncated, no stream)."""

    code = "video_decode_error"


class VideoTooLarge(InvalidInput):
    """A video header announces more pixels per frame, seconds or frames than allowed (before decoding)."""

    code = "video_too_large"


class ImageTooLarge(InvalidInput):
    """An image header announces more pixels than allowed (decompression-bomb guard)."""

    code = "image_too_large"


class UnsafeArchive(InvalidInput):
    """A zip archive with path traversal, links, or too many/too large members."""

    code = "unsafe_archive"


class NoUsableFrames(PipelineError):
    """Every candidate frame was rejected; the message says why for each reason."""

    code = "no_usable_frames"


class InvalidParameter(PipelineError):
    """A job parameter is out of range or of the wrong type."""

    code = "invalid_parameter"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelMissingError(PipelineError):
    """A model file a stage needs (e.g. rembg's .onnx) is absent and cannot be fetched."""

    code = "model_missing"


class FusionError(PipelineError):
    """Per-frame meshes could not be fused (e.g. none usable)."""

    code = "fusion_failed"


class CompareError(PipelineError):
    """Two meshes cannot be compared: different objects, a mirror image, or no alignment near the noise."""

    code = "not_comparable"


class StageCancelled(Exception):
    """A stage saw its caller's cancel signal between frames and stopped (not a user-facing error)."""
