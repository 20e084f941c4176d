"""What a comparison hands to people: the heat-map GLB, the sector chart PNG, and reading uploaded meshes.

* `heatmap_glb(result, object_size_m=None) -> bytes`: node 0 is the reference coloured by signed distance,
  node 1 the aligned candidate with `extras.hidden = true` (for overlay viewing); scenes[0].extras carry
  `{"triposr_compare": report}` (the report includes `colour_scale`). Written through `pipeline.export`'s one
  GLB writer, in the reference's coordinates, scaled to metres when `object_size_m` is given.
* `sector_chart_png(report) -> bytes`: a polar chart of the 36 tread sectors (mean and max loss, noise floor,
  threshold) with matplotlib's Agg canvas (no pyplot, no display, safe in worker threads).
* `read_mesh(data, name) -> trimesh.Trimesh`: GLB / OBJ / PLY recognised from the bytes, never the file name.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import trimesh

from pipeline.compare import CompareResult, as_mesh
from pipeline.errors import InvalidInput
from pipeline.export import glb_bytes

GLB_MAGIC = b"glTF"
PLY_MAGIC = b"ply"
CANDIDATE_GREY = (170, 170, 176, 255)


def heatmap_glb(result: CompareResult, object_size_m: float | None = None) -> bytes:
    """The comparison as one GLB (see the module docstring)."""
    reference, candidate = result.mesh.copy(), result.candidate.copy()
    scale = 1.0
    if object_size_m is not None:
        scale = object_size_m / max(float(np.ptp(reference.vertices, axis=0).max()), 1e-12)
        for mesh in (reference, candidate):
            mesh.apply_scale(scale)
    if candidate.visual.kind != "vertex":
        candidate.visual = trimesh.visual.ColorVisuals(
            candidate, vertex_colors=np.tile(CANDIDATE_GREY, (len(candidate.vertices), 1))
        )
    extras = {
        "triposr_compare": {
            **result.report,
            "glb": {"scale_applied": scale, "units": "m" if object_size_m else "reference"},
        }
    }
    return glb_bytes(
        [("reference_heatmap", reference), ("candidate_aligned", candidate)],
        _finite(extras),
        node_extras=[{"role": "reference"}, {"role": "candidate", "hidden": True}],
    )


def sector_chart_png(report: dict[str, Any], *, dpi: int = 110) -> bytes:
    """PNG of the sector report: bars = mean loss, line = max loss, dashed ring = noise floor."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    units = report.get("units", "")
    figure = Figure(figsize=(6.4, 6.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(projection="polar")
    axes.set_theta_zero_location("E")
    axes.set_theta_direction(1)  # counter-clockwise seen from the axis' tip, as the report says
    sectors = report.get("sectors")
    floor = float(report.get("noise_floor") or 0.0)
    threshold = float(report.get("threshold") or 0.0)
    if sectors:
        width = 2 * math.pi / len(sectors)
        angles = np.array([math.radians(s["start_deg"]) for s in sectors]) + width / 2
        mean = np.maximum([s["mean_loss"] or 0.0 for s in sectors], 0.0)  # net gain shows as no bar
        peak = np.array([s["max_loss"] or 0.0 for s in sectors])
        over = np.array([(s["area_fraction_over_threshold"] or 0.0) > 0.5 for s in sectors])
        axes.bar(angles, mean, width=width * 0.92, color=np.where(over, "#3b4cc0", "#9fb0e8"),
                 label=f"net mean loss ({units})")  # fmt: skip
        axes.plot(np.append(angles, angles[0]), np.append(peak, peak[0]), color="#222222", lw=1.0,
                  label=f"max loss ({units})")  # fmt: skip
        ring = np.linspace(0, 2 * math.pi, 361)
        axes.plot(
            ring, np.full_like(ring, floor), "--", color="#b40426", lw=1.0, label=f"noise floor {floor:.2g}"
        )
        if threshold:
            axes.plot(ring, np.full_like(ring, threshold), ":", color="#555555", lw=1.0,
                      label=f"threshold {threshold:.2g}")  # fmt: skip
        axes.set_rlim(0, max(float(peak.max()), floor, threshold) * 1.1 or 1.0)
        axes.legend(loc="lower left", bbox_to_anchor=(-0.12, -0.14), fontsize=8, frameon=False)
    else:
        axes.text(0, 0, "no tyre axis:\nno sectors", ha="center", va="center")
    bands = report.get("bands") or {}
    summary = "  ".join(
        f"{name} {b['mean_loss']:.2f}" for name, b in bands.items() if b.get("mean_loss") is not None
    )
    turn = report.get("alignment", {}).get("turn_determined")
    figure.suptitle(
        f"Tread loss by sector ({units})" + ("" if turn is not False else " - turn not determined"),
        fontsize=11,
    )
    if summary:
        figure.text(0.5, 0.015, f"mean loss by band: {summary}", ha="center", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def read_mesh(data: bytes, name: str) -> trimesh.Trimesh:
    """A mesh from GLB, PLY or OBJ bytes (recognised from the content); InvalidInput otherwise."""
    if not data:
        raise InvalidInput(f"{name}: the file is empty")
    kind = mesh_kind(data)
    if kind is None:
        raise InvalidInput(f"{name}: not a GLB, PLY or OBJ mesh")
    try:
        loaded = trimesh.load(
            io.BytesIO(data), file_type=kind, process=True, force="scene" if kind == "glb" else None
        )
    except Exception as exc:  # trimesh raises many types on corrupt files; the message names the field
        raise InvalidInput(f"{name}: cannot read the {kind.upper()} file ({type(exc).__name__})") from None
    try:
        return as_mesh(loaded, name)
    except Exception as exc:
        raise InvalidInput(str(exc)) from None


def mesh_kind(head: bytes) -> str | None:
    """ "glb", "ply" or "obj" from a file's first bytes (64 KiB are plenty), else None."""
    if head[:4] == GLB_MAGIC:
        return "glb"
    if head[:3] == PLY_MAGIC:
        return "ply"
    return "obj" if _looks_like_obj(head) else None


def _looks_like_obj(data: bytes) -> bool:
    head = data[:65536]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return any(line.startswith("v ") for line in lines) and all(
        line.split(maxsplit=1)[0] in {"v", "vn", "vt", "f", "o", "g", "s", "mtllib", "usemtl", "l", "vp"}
        for line in lines[:-1]
    )


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (pygltflib and strict JSON reject them)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _finite(value.item())
    return value


def compare_payload(
    reference: bytes, candidate: bytes, *, object_size_m: float | None = None, threshold_mm: float = 1.0
) -> dict[str, Any]:
    """Two mesh files' bytes -> {glb: heat-map bytes, report: dict, chart: PNG bytes}: the whole comparison as
    the compare deployment, the in-process workers and the CLI run it."""
    from pipeline.compare import compare_meshes

    result = compare_meshes(
        read_mesh(reference, "reference"), read_mesh(candidate, "candidate"),
        object_size_m=object_size_m, threshold_mm=threshold_mm,
    )  # fmt: skip
    report = _finite(result.report)
    return {"glb": heatmap_glb(result, object_size_m), "report": report, "chart": sector_chart_png(report)}
