"""Job parameters: parsing untrusted values (form strings, JSON) and the errors users see."""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidParameter
from pipeline.params import JobParams, MergeStrategy, MeshFormat


def test_defaults_follow_upstream_run_py() -> None:
    params = JobParams()
    assert (params.mc_resolution, params.foreground_ratio, params.num_frames) == (256, 0.85, 8)
    assert params.merge is MergeStrategy.FUSED and params.format is MeshFormat.GLB


def test_form_strings_are_cast() -> None:
    params = JobParams.from_mapping(
        {
            "num_frames": "4",
            "mc_resolution": " 64 ",
            "foreground_ratio": "0.9",
            "remove_background": "false",
            "merge": "BEST",
            "format": "ply",
            "object_size_m": "0.72",
            "target_faces": "5000",
        }
    )
    assert params == JobParams(4, 64, 0.9, False, MergeStrategy.BEST, MeshFormat.PLY, 0.72, 5000)


def test_json_values_and_empty_fields() -> None:
    params = JobParams.from_mapping({"num_frames": 3.0, "remove_background": True, "object_size_m": ""})
    assert params.num_frames == 3 and params.remove_background is True and params.object_size_m is None


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("num_frames", 0, "outside [1, 32]"),
        ("num_frames", 33, "outside [1, 32]"),
        ("num_frames", "eight", "expected an integer"),
        ("num_frames", True, "expected an integer"),
        ("num_frames", 2.5, "expected an integer"),
        ("mc_resolution", 16, "outside [32, 512]"),
        ("foreground_ratio", 1.5, "outside [0.5, 1.0]"),
        ("foreground_ratio", "nan", "expected a number"),
        ("remove_background", "maybe", "expected true or false"),
        ("merge", "average", "not one of fused, best, all"),
        ("format", "stl", "not one of glb, obj, ply"),
        ("bogus", 1, "unknown parameter"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object, fragment: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        JobParams.from_mapping({field: value})
    assert info.value.field == field
    assert fragment in str(info.value)
    assert info.value.code == "invalid_parameter"


def test_to_dict_round_trips() -> None:
    params = JobParams(num_frames=2, merge=MergeStrategy.ALL, object_size_m=0.72)
    assert JobParams.from_mapping(params.to_dict()) == params


def test_describe_params_lists_every_field_with_its_range_default_and_help() -> None:
    from pipeline.params import NUM_FRAMES_RANGE, describe_params

    defaults = JobParams(num_frames=2, mc_resolution=32)
    doc = {p["name"]: p for p in describe_params(defaults)}
    assert list(doc) == list(JobParams().to_dict())
    assert doc["num_frames"] == {
        "name": "num_frames", "type": "integer", "default": 2, "min": NUM_FRAMES_RANGE[0],
        "max": NUM_FRAMES_RANGE[1], "choices": None, "optional": False, "help": doc["num_frames"]["help"],
    }  # fmt: skip
    assert doc["merge"]["choices"] == ["fused", "best", "all"] and doc["merge"]["default"] == "fused"
    assert doc["remove_background"]["type"] == "boolean" and doc["remove_background"]["min"] is None
    assert doc["object_size_m"]["optional"] and doc["object_size_m"]["default"] is None
    assert all(p["help"] for p in doc.values())
    for p in doc.values():  # every default the doc shows is accepted back by the parser
        JobParams.from_mapping({p["name"]: p["default"]})
