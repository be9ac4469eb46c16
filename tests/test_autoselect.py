"""`auto` backend/precision: calibrated once per machine and model, cached, and never picks a
reduced precision that breaks the argmax-agreement bound."""

from __future__ import annotations

import json

import pytest

from veloxseg.runtime import Engine, autoselect


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VELOXSEG_CACHE_DIR", str(tmp_path))
    return tmp_path / "autoselect.json"


def test_auto_calibrates_once_then_uses_the_cache(exported, cache, monkeypatch):
    first = Engine.open(exported("autopetii"), threads=2)
    entries = json.loads(cache.read_text())
    (entry,) = entries.values()
    assert entry["auto/auto"] == [first.backend_name, first.precision]
    assert {r["backend"] for r in entry["calibration"]} >= {"openvino", "onnxruntime"}

    def no_calibration(*_):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(autoselect, "_calibration_patch", no_calibration)
    second = Engine.open(exported("autopetii"), threads=2)
    assert (second.backend_name, second.precision) == tuple(entry["auto/auto"])


def test_reduced_precision_below_agreement_bound_is_never_chosen(exported, cache, monkeypatch):
    monkeypatch.setattr(autoselect, "MIN_AGREEMENT", 1.01)  # no bf16 result can qualify
    monkeypatch.setattr(autoselect, "_has_native_bf16", lambda: True)  # bf16 timed on any CPU
    engine = Engine.open(exported("autopetii"), threads=2)
    assert engine.precision == "fp32"
    (entry,) = json.loads(cache.read_text()).values()
    bf16 = [r for r in entry["calibration"] if r["precision"] == "bf16"]
    assert bf16 and not any(r["eligible"] for r in bf16)


def test_auto_precision_with_fixed_backend_stays_on_that_backend(exported, cache):
    engine = Engine.open(exported("autopetii"), backend="onnxruntime", precision="auto", threads=2)
    assert (engine.backend_name, engine.precision) == ("onnxruntime", "fp32")


def test_unknown_backend_name_raises_value_error(exported):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Engine.open(exported("autopetii"), backend="tensorrt")  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ["null", "[1, 2]", '{"key": 3}'])
def test_cache_of_the_wrong_shape_is_recalibrated_and_rewritten(exported, cache, content):
    cache.write_text(content)
    engine = Engine.open(exported("autopetii"), threads=2)
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["auto/auto"] == [engine.backend_name, engine.precision]
