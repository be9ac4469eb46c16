"""The PyTorch VeloxSeg reproduces the upstream code: reference checkpoint, seeded fingerprints
for every config, state-dict layout, checkpoint loading and input errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from make_upstream_fingerprints import STRIDE, fingerprint_input

from veloxseg.model import (
    CONFIG_NAMES,
    VeloxSeg,
    get_config,
    load_checkpoint,
    read_state_dict,
    resolve_config,
    seeded_state_dict,
)
from veloxseg.model.checkpoint import CheckpointError

DATA = Path(__file__).parent / "data"

# Float32 reordering (matmul vs einsum, fused sums) moves logits by ~2e-5; a layout or
# formula error moves them by >= 1e-2. 1e-4 separates the two.
PARITY_TOL = 1e-4


def test_reference_checkpoint_reproduces_upstream_logits(reference):
    model = load_checkpoint(reference / "autopetii_checkpoint.pth", "autopetii")
    io = np.load(reference / "autopetii_io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input"])).numpy()
    assert logits.shape == io["logits"].shape
    assert np.abs(logits - io["logits"]).max() <= PARITY_TOL


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_seeded_weights_match_upstream_fingerprint(name):
    seed = ("autopetii", "brats2021", "hecktor2022").index(name)
    config = get_config(name)
    model = VeloxSeg(**config).eval()
    model.load_state_dict(seeded_state_dict(model, seed), strict=True)
    expected = np.load(DATA / "upstream_fingerprints.npz")[f"{name}_logits"]
    with torch.no_grad():
        logits = model(torch.from_numpy(fingerprint_input(config, seed))).numpy()
    assert logits.shape == (1, config["n_classes"], *config["input_size"])
    sub = logits[:, :, ::STRIDE, ::STRIDE, ::STRIDE]
    assert np.abs(sub - expected).max() <= PARITY_TOL


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_state_dict_keys_and_shapes_equal_upstream_manifest(name):
    manifest = json.loads((DATA / "upstream_manifest.json").read_text())[name]
    model = VeloxSeg(**manifest["config"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["state_dict"]


def test_hecktor_uses_anisotropic_windows_and_brats_one_stream():
    hecktor = VeloxSeg(**get_config("hecktor2022"))
    assert hecktor.schemes[0].big[0] == (4, 4, 2)
    brats = VeloxSeg(**get_config("brats2021"))
    assert len(brats.encoder.encoder_attn.patch_embeds) == 1
    assert brats.encoder.encoder_attn.patch_embeds[0].proj.in_channels == 4


@pytest.fixture(scope="module")
def autopet_state():
    model = VeloxSeg(**get_config("autopetii"))
    return seeded_state_dict(model, 7)


@pytest.mark.parametrize("wrap", ["bare", "upstream", "ddp_bare"])
def test_load_checkpoint_accepts_upstream_and_bare_files(tmp_path, autopet_state, wrap):
    ddp = {f"module.{k}": v for k, v in autopet_state.items()}
    payload = {"bare": autopet_state, "upstream": {"model": ddp, "epoch": 3}, "ddp_bare": ddp}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    model = load_checkpoint(path, "autopetii")
    assert not model.training
    assert torch.equal(
        model.decoder.out_conv1[0].weight, autopet_state["decoder.out_conv1.0.weight"]
    )


def test_load_checkpoint_accepts_config_as_json_file(tmp_path, autopet_state):
    torch.save(autopet_state, tmp_path / "ckpt.pth")
    (tmp_path / "cfg.json").write_text(json.dumps(get_config("autopetii")))
    model = load_checkpoint(tmp_path / "ckpt.pth", tmp_path / "cfg.json")
    assert model.n_classes == 2


def test_mismatched_checkpoint_names_keys_and_suggests_config(tmp_path, autopet_state):
    torch.save(autopet_state, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "ckpt.pth", "brats2021")
    message = str(info.value)
    assert "unexpected keys [encoder.encoder_attn.layers.0.blocks.0.attn.input_norms.1" in message
    assert "shape mismatches [" in message
    assert "'autopetii'" in message


def test_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match="could run code"):
        read_state_dict(path)
    assert not marker.exists()


def test_training_only_modules_never_run_in_eval():
    model = VeloxSeg(**get_config("autopetii")).eval()
    called = []
    for name in ("rc_decoders", "decoder.out_conv2", "decoder.out_conv3", "decoder.out_conv4"):
        model.get_submodule(name).register_forward_hook(lambda *_, n=name: called.append(n))
    with torch.no_grad():
        model(torch.zeros(1, 2, 96, 96, 96))
    assert called == []


def test_train_forward_returns_deep_supervision_reconstructions_and_grams():
    model = VeloxSeg(**get_config("autopetii")).train()
    out = model(torch.randn(2, 2, 96, 96, 96))
    assert [tuple(t.shape) for t in out.logits] == [(2, 2, 96, 96, 96)] * 4
    assert out.reconstructions.shape == (2, 2, 96, 96, 96)
    assert out.seg_gram.shape == (2, 16, 16)
    assert [tuple(g.shape) for g in out.teacher_grams] == [(2, 16, 16)] * 2


def test_wrong_channel_count_raises_value_error_with_expected_shape():
    model = VeloxSeg(**get_config("autopetii")).eval()
    with pytest.raises(ValueError, match=r"expected input \(B, 2, D, H, W\)"):
        model(torch.zeros(1, 3, 96, 96, 96))


def test_untileable_size_raises_value_error_naming_sizes_that_work():
    model = VeloxSeg(**get_config("autopetii")).eval()
    with pytest.raises(ValueError, match=r"multiple of \(96, 96, 96\)"):
        model(torch.zeros(1, 2, 96, 96, 80))


def test_larger_tileable_size_runs():
    model = VeloxSeg(**get_config("hecktor2022")).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 2, 128, 128, 128))
    assert out.shape == (1, 2, 128, 128, 128)


def test_upstream_config_file_keyed_by_model_name_gives_its_veloxseg_entry(tmp_path):
    path = tmp_path / "models_config_hecktor2022.json"
    path.write_text(json.dumps({"UNet": {"channels": [8]}, "VeloxSeg": get_config("hecktor2022")}))
    assert resolve_config(path) == ("hecktor2022", get_config("hecktor2022"))
