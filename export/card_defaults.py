"""Default model-card contents for the named configs, from the upstream preprocessing.

Modality order follows the upstream training code (``inputs = [ct, pet]`` for AutoPET-II and
HECKTOR; ``[flair, t1, t1ce, t2]`` for BraTS). The AutoPET-II CT statistics are placeholders of
the right magnitude (nnU-Net style foreground percentiles); a model trained on other data should
override them with the statistics it was trained with (``--card``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CARD_FIELDS", "DEFAULT_CARDS", "GUESSES", "default_card_fields", "guessed_card_fields"]

_CT_DEFAULT = {
    "scheme": "ct",
    "clip_low": -832.0,
    "clip_high": 1127.0,
    "mean": 107.7,
    "std": 286.7,
}
_ZSCORE = {"scheme": "zscore"}

DEFAULT_CARDS: dict[str, dict[str, Any]] = {
    "autopetii": {
        "modalities": ["CT", "PET"],
        "normalization": [_CT_DEFAULT, _ZSCORE],
        "class_names": ["background", "lesion"],
        "label_values": [0, 1],
        "spacing": [2.03642, 2.03642, 3.0],
    },
    "hecktor2022": {
        "modalities": ["CT", "PET"],
        "normalization": [_CT_DEFAULT, _ZSCORE],
        "class_names": ["background", "tumor"],
        "label_values": [0, 1],
        "spacing": [1.0, 1.0, 1.0],
    },
    "brats2021": {
        "modalities": ["FLAIR", "T1", "T1ce", "T2"],
        "normalization": [_ZSCORE] * 4,
        "class_names": ["background", "necrotic core", "edema", "enhancing tumor"],
        "label_values": [0, 1, 2, 4],
        "spacing": [1.0, 1.0, 1.0],
    },
}


CARD_FIELDS = ("modalities", "normalization", "spacing", "class_names", "label_values")
"""The card fields that a config's defaults supply."""
GUESSES = {
    "modalities": "channel0...",
    "normalization": "z-score",
    "spacing": "1 mm",
    "class_names": "background, class1...",
    "label_values": "labels 0..K-1",
}
"""What :func:`default_card_fields` puts in each field it has to guess."""


def guessed_card_fields(config_name: str, config: dict[str, Any]) -> tuple[str, ...]:
    """The fields :func:`default_card_fields` guesses: all of them for a config without named
    defaults, and for a named one those its defaults cannot fit (an upstream config file of that
    name with another channel or class count): wrong names or labels would mislabel the output."""
    named = DEFAULT_CARDS.get(config_name)
    if named is None:
        return CARD_FIELDS
    guessed: tuple[str, ...] = ()
    if len(named["modalities"]) != sum(config["in_ch"]):
        guessed += ("modalities", "normalization")
    if len(named["class_names"]) != int(config.get("n_classes", 2)):
        guessed += ("class_names", "label_values")
    return guessed


def default_card_fields(config_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Card fields for a config: the named defaults, with generic ones derived from the config
    where there are none or they do not fit it (:func:`guessed_card_fields`)."""
    channels = sum(config["in_ch"])
    n_classes = int(config.get("n_classes", 2))
    generic = {
        "modalities": [f"channel{i}" for i in range(channels)],
        "normalization": [_ZSCORE] * channels,
        "class_names": ["background", *(f"class{i}" for i in range(1, n_classes))],
        "label_values": list(range(n_classes)),
        "spacing": [1.0, 1.0, 1.0],
    }
    guessed = guessed_card_fields(config_name, config)
    return {k: v if k in guessed else DEFAULT_CARDS[config_name][k] for k, v in generic.items()}
