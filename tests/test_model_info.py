import json

import pytest

from inspect_edge.model_info import ONNX_METADATA_KEY, ModelInfo, ModelInfoError, file_sha256


def _info(**kw):
    base = dict(classes=("pits", "cracks", "scratches", "patches"), input_height=256, input_width=1600,
                thresholds=(0.5, 0.6, 0.4, 0.55), min_areas=(10, 0, 300, 1200), model_version="1.2.0",
                source_run="runs/nano", arch="unet-nano")
    base.update(kw)
    return ModelInfo(**base)


def test_round_trips_through_json_file_and_onnx_props(tmp_path):
    info = _info()
    assert ModelInfo.from_json(info.to_json()) == info
    info.save(tmp_path / "m.json")
    assert ModelInfo.load(tmp_path / "m.json") == info
    props = info.to_metadata_props()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    assert ModelInfo.from_metadata_props(props) == info


def test_defaults_follow_class_count():
    info = ModelInfo(classes=("a", "b"), input_height=224, input_width=224)
    assert info.thresholds == (0.5, 0.5) and info.min_areas == (0, 0) and info.num_classes == 2


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(input_width=1601), "input_width"),
        (dict(input_height=0), "input_height"),
        (dict(thresholds=(0.5, 0.5)), "thresholds"),
        (dict(thresholds=(0.5, 1.0, 0.5, 0.5)), "thresholds"),
        (dict(min_areas=(0, 0, 0, -1)), "min_areas"),
        (dict(classes=("a", "a", "b", "c")), "classes"),
        (dict(std=0.0), "std"),
        (dict(precision="int4"), "precision"),
        (dict(input_channels=2), "input_channels"),
    ],
)
def test_invalid_records_name_the_field(change, field):
    with pytest.raises(ModelInfoError, match=field):
        _info(**change)


def test_bad_sources_get_one_line_reasons(tmp_path):
    with pytest.raises(ModelInfoError, match="no inspect-edge metadata"):
        ModelInfo.from_metadata_props({"producer": "someone else"}, "x.onnx")
    with pytest.raises(ModelInfoError, match="not valid JSON"):
        ModelInfo.from_metadata_props({ONNX_METADATA_KEY: "{truncated"}, "x.onnx")
    d = _info().to_dict()
    d["colour"] = "blue"
    with pytest.raises(ModelInfoError, match="unknown field"):
        ModelInfo.from_dict(d)
    del d["colour"], d["input_height"]
    with pytest.raises(ModelInfoError, match="missing field 'input_height'"):
        ModelInfo.from_json(json.dumps(d), "m.json")
    with pytest.raises(ModelInfoError, match="cannot read"):
        ModelInfo.load(tmp_path / "absent.json")


def test_file_hash_changes_with_content(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    h1 = file_sha256(p)
    p.write_bytes(b"abd")
    assert h1 != file_sha256(p) and len(h1) == 64
