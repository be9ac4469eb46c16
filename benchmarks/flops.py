"""Parameters and FLOPs per patch for each registered config (``torch.utils.flop_counter``).

``FlopCounterMode`` counts a multiply-add as 2 FLOPs (convolutions and matmuls only); the paper,
like fvcore and thop, reports multiply-adds, so the GMAC column is the one to compare.
Inference parameters exclude the training-only reconstruction teachers and deep-supervision
heads. The paper gives 1.66 M parameters and
1.79 GFLOPs for AutoPET-II.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from veloxseg.model import CONFIG_NAMES, VeloxSeg, get_config
from veloxseg.model.checkpoint import TRAINING_ONLY_PREFIXES


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # no options; --help
    print("| config | patch | inference params (M) | all params (M) | GFLOPs | GMACs |")
    print("|---|---|---|---|---|---|")
    for name in CONFIG_NAMES:
        config = get_config(name)
        model = VeloxSeg(**config).eval()
        params = dict(model.named_parameters())
        total = sum(p.numel() for p in params.values())
        inference = sum(
            p.numel() for k, p in params.items() if not k.startswith(TRAINING_ONLY_PREFIXES)
        )
        x = torch.zeros(1, sum(config["in_ch"]), *config["input_size"])
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        patch = "x".join(map(str, config["input_size"]))
        flops = counter.get_total_flops() / 1e9
        print(f"| {name} | {patch} | {inference / 1e6:.2f} | {total / 1e6:.2f} | "
              f"{flops:.2f} | {flops / 2:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
