"""Regenerate ``upstream_fingerprints.npz``: logits of the upstream VeloxSeg code on seeded weights.

Needs a checkout of https://github.com/JinPLu/VeloxSeg (not part of this project) plus einops and
monai. Usage: ``python make_upstream_fingerprints.py /path/to/upstream_checkout``.
For each config it stores the upstream logits, subsampled every 3rd voxel (enough to catch any
layout error, small enough to keep in the repository), for the input ``fingerprint_input``
draws from a seed.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from veloxseg.model import VeloxSeg, get_config, seeded_state_dict

STRIDE = 3


def fingerprint_input(config: dict, seed: int) -> np.ndarray:
    """A uniform [-2, 2) input ``(1, sum(in_ch), *input_size)`` drawn from ``100 + seed``."""
    rng = np.random.default_rng(100 + seed)
    shape = (1, sum(config["in_ch"]), *config["input_size"])
    return (rng.random(shape, dtype=np.float32) * 4.0 - 2.0).astype(np.float32)


def main(upstream: Path) -> None:
    sys.path.insert(0, str(upstream))
    from model.VeloxSeg import VeloxSeg as UpstreamVeloxSeg

    arrays = {}
    for seed, name in enumerate(("autopetii", "brats2021", "hecktor2022")):
        config = get_config(name)
        ours = VeloxSeg(**config)
        state = seeded_state_dict(ours, seed)
        upstream_model = UpstreamVeloxSeg(**config).eval()
        upstream_model.load_state_dict(state, strict=True)
        x = fingerprint_input(config, seed)
        with torch.no_grad():
            logits = upstream_model(torch.from_numpy(x)).numpy()
        arrays[f"{name}_logits"] = logits[:, :, ::STRIDE, ::STRIDE, ::STRIDE]
    out = Path(__file__).with_name("upstream_fingerprints.npz")
    np.savez_compressed(out, stride=STRIDE, **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
