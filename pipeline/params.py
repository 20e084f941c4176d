"""Job parameters shared by the HTTP API, the CLI and batch runs: one typed, validated object."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pipeline.errors import InvalidParameter


class MergeStrategy(str, Enum):
    """How per-frame meshes become one result."""

    FUSED = "fused"  # align all frames and fuse one watertight surface (default for 2+ frames)
    BEST = "best"  # the single best-scoring frame's mesh
    ALL = "all"  # a scene with one node per aligned frame, for inspection


class MeshFormat(str, Enum):
    GLB = "glb"
    OBJ = "obj"
    PLY = "ply"


# (min, max) inclusive ranges; the API documents the same numbers.
NUM_FRAMES_RANGE = (1, 32)
MC_RESOLUTION_RANGE = (32, 512)
FOREGROUND_RATIO_RANGE = (0.5, 1.0)
OBJECT_SIZE_M_RANGE = (1e-3, 100.0)
TARGET_FACES_RANGE = (100, 10_000_000)


@dataclass(frozen=True)
class JobParams:
    """Everything a user may choose for one reconstruction; defaults follow upstream run.py."""

    num_frames: int = 8  # frames picked from a video (images: at most this many are used)
    mc_resolution: int = 256  # marching-cubes grid per axis (upstream default 256)
    foreground_ratio: float = 0.85  # object's share of the square frame (upstream default 0.85)
    remove_background: bool = True
    merge: MergeStrategy = MergeStrategy.FUSED
    format: MeshFormat = MeshFormat.GLB
    object_size_m: float | None = None  # largest dimension in metres (TripoSR has no scale)
    target_faces: int | None = None  # decimate the result to about this many faces
    strict: bool = False  # refuse input whose frames all fail the framing checks (default: best effort)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> JobParams:
        """Build from untrusted key/values (form fields are strings); InvalidParameter names the field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameter(unknown[0], f"unknown parameter (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if raw is None or raw == "":
                continue
            values[name] = _SPECS[name].parse(name, raw)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["merge"] = self.merge.value
        out["format"] = self.format.value
        return out


@dataclass(frozen=True)
class _Spec:
    """One parameter's parser and what GET /params says of it, kept side by side so they cannot drift."""

    parse: Callable[[str, Any], Any]
    kind: str  # "integer", "number", "boolean" or "choice"
    help: str
    range: tuple[float, float] | None = None
    choices: type[Enum] | None = None


def _int_in(lo: int, hi: int):
    def parse(name: str, raw: Any) -> int:
        if isinstance(raw, bool):
            raise InvalidParameter(name, f"expected an integer, got {raw!r}")
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise InvalidParameter(name, f"expected an integer, got {raw!r}") from None
        if not isinstance(raw, int):
            raise InvalidParameter(name, f"expected an integer, got {raw!r}")
        if not lo <= raw <= hi:
            raise InvalidParameter(name, f"{raw} is outside [{lo}, {hi}]")
        return raw

    return parse


def _float_in(lo: float, hi: float):
    def parse(name: str, raw: Any) -> float:
        if isinstance(raw, bool):
            raise InvalidParameter(name, f"expected a number, got {raw!r}")
        if isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise InvalidParameter(name, f"expected a number, got {raw!r}") from None
        if not isinstance(raw, (int, float)) or raw != raw:  # NaN check
            raise InvalidParameter(name, f"expected a number, got {raw!r}")
        if not lo <= float(raw) <= hi:
            raise InvalidParameter(name, f"{raw} is outside [{lo}, {hi}]")
        return float(raw)

    return parse


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return raw.strip().lower() in {"true", "1", "yes", "on"}
    raise InvalidParameter(name, f"expected true or false, got {raw!r}")


def _enum(enum_cls: type[Enum]):
    def parse(name: str, raw: Any) -> Enum:
        try:
            return enum_cls(str(raw).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in enum_cls)
            raise InvalidParameter(name, f"{raw!r} is not one of {choices}") from None

    return parse


def _integer(lo: int, hi: int, help: str) -> _Spec:
    return _Spec(_int_in(lo, hi), "integer", help, range=(lo, hi))


def _number(lo: float, hi: float, help: str) -> _Spec:
    return _Spec(_float_in(lo, hi), "number", help, range=(lo, hi))


def _choice(enum_cls: type[Enum], help: str) -> _Spec:
    return _Spec(_enum(enum_cls), "choice", help, choices=enum_cls)


# Every job parameter: how it is parsed, and what it means for people choosing it (the API's GET /params and
# the web page show these).
_SPECS: dict[str, _Spec] = {
    "num_frames": _integer(
        *NUM_FRAMES_RANGE, "frames picked from a video (for photos: at most this many are used)"
    ),
    "mc_resolution": _integer(
        *MC_RESOLUTION_RANGE, "marching-cubes grid per axis: finer meshes, slower jobs"
    ),
    "foreground_ratio": _number(*FOREGROUND_RATIO_RANGE, "the object's share of each framed square"),
    "remove_background": _Spec(
        _bool, "boolean", "cut the object out with rembg (off: the photo is used as framed)"
    ),
    "merge": _choice(
        MergeStrategy,
        "fused: align and fuse all frames; best: the best frame alone; all: one node per frame",
    ),
    "format": _choice(MeshFormat, "file format of the result"),
    "object_size_m": _number(
        *OBJECT_SIZE_M_RANGE,
        "scale the result so its largest dimension is this many metres (0.72 for an F1 tyre)",
    ),
    "target_faces": _integer(*TARGET_FACES_RANGE, "decimate the result to about this many faces"),
    "strict": _Spec(
        _bool,
        "boolean",
        "refuse input whose frames all fail the framing checks (off: use the best one, with a warning)",
    ),
}


def describe_params(defaults: JobParams) -> list[dict[str, Any]]:
    """Every job parameter as {name, type, default, min, max, choices, optional, help}, in field order.

    `type` is one of "integer", "number", "boolean", "choice"; `min`/`max` are inclusive (None when the type
    has no range); `optional` parameters default to None (not applied).
    """
    values = defaults.to_dict()
    out: list[dict[str, Any]] = []
    for f in dataclasses.fields(JobParams):
        spec = _SPECS[f.name]
        lo, hi = spec.range or (None, None)
        out.append(
            {
                "name": f.name,
                "type": spec.kind,
                "default": values[f.name],
                "min": lo,
                "max": hi,
                "choices": [m.value for m in spec.choices] if spec.choices else None,
                "optional": f.default is None,
                "help": spec.help,
            }
        )
    return out


THRESHOLD_MM_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class CompareParams:
    """What a user may choose for one comparison; `reference`/`candidate` are job ids (None: uploaded)."""

    reference: str | None = None
    candidate: str | None = None
    object_size_m: float | None = None  # the reference's largest dimension in metres: figures in mm
    threshold_mm: float = 1.0  # loss/gain counted as area over the threshold beyond this

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CompareParams:
        """Build from untrusted key/values (JSON or form fields); InvalidParameter names the field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParameter(unknown[0], f"unknown parameter (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if raw is None or raw == "":
                continue
            if name in ("reference", "candidate"):
                if not isinstance(raw, str):
                    raise InvalidParameter(name, f"expected a job id, got {raw!r}")
                values[name] = raw
            elif name == "object_size_m":
                values[name] = _SPECS["object_size_m"].parse(name, raw)
            else:
                values[name] = _float_in(*THRESHOLD_MM_RANGE)(name, raw)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
