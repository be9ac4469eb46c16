"""The model card: everything the runtime needs to know about a model, stored inside the ONNX file.

The card travels as ``metadata_props`` of the ONNX model (key ``veloxseg.card``, JSON) and is parsed
back into the same frozen dataclass on load, so preprocessing is derived from the file alone.

Axis convention: arrays are ``(C, X, Y, Z)`` in the closest canonical (RAS+) orientation, which is
what the network calls ``(C, D, H, W)``. ``spacing`` and ``patch_size`` follow that order.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from veloxseg.runtime.errors import ModelFileError

__all__ = [
    "CARD_KEY",
    "NORMALIZATION_FILE",
    "PWA_DOMAIN",
    "PWA_OPSET",
    "PWA_OP_TYPE",
    "SCHEMA_VERSION",
    "ModelCard",
    "Normalization",
]

CARD_KEY = "veloxseg.card"
SCHEMA_VERSION = 1
# The custom op the graph's attention is, and the version of it this package runs.
PWA_DOMAIN = "ai.veloxseg"
PWA_OP_TYPE = "PairedWindowAttention"
PWA_OPSET = 1
# Where `veloxseg train` records the normalisation that `veloxseg export` puts in the card.
NORMALIZATION_FILE = "normalization.json"


@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation of one modality.

    ``zscore``: subtract the volume's own mean and divide by its std (PET, MRI upstream).
    ``ct``: clip to ``[clip_low, clip_high]``, then ``(x - mean) / std`` with stored dataset stats.
    """

    scheme: Literal["zscore", "ct"] = "zscore"
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("zscore", "ct"):
            raise ModelFileError(f"unknown normalisation scheme {self.scheme!r}; use zscore or ct")
        if self.scheme == "ct":
            values = (self.clip_low, self.clip_high, self.mean, self.std)
            if any(v is None for v in values):
                raise ModelFileError("ct normalisation needs clip_low, clip_high, mean and std")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ModelFileError(f"ct normalisation statistics must be finite numbers: {self}")
            if not self.std > 0 or not self.clip_low < self.clip_high:
                raise ModelFileError(f"ct normalisation has invalid statistics: {self}")


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and produces. Parsed from and written to ONNX metadata."""

    config_name: str
    model_config: dict[str, Any]
    modalities: tuple[str, ...]
    normalization: tuple[Normalization, ...]
    class_names: tuple[str, ...]
    label_values: tuple[int, ...]
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    source_sha256: str | None = None
    exporter_version: str = ""
    custom_domain: str = PWA_DOMAIN
    custom_opset: int = PWA_OPSET
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.normalization) != len(self.modalities):
            raise ModelFileError(
                f"card lists {len(self.modalities)} modalities but "
                f"{len(self.normalization)} normalisations"
            )
        if len(self.class_names) != len(self.label_values):
            raise ModelFileError(
                f"card lists {len(self.class_names)} class names but "
                f"{len(self.label_values)} label values"
            )
        if len(self.modalities) < 1:
            raise ModelFileError("card lists no modalities")
        values = self.label_values
        if len(set(values)) != len(values) or not all(0 <= v <= 65535 for v in values):
            raise ModelFileError(
                f"card label values must be distinct integers in [0, 65535], got {values}"
            )
        if len(self.spacing) != 3 or not all(0 < s < math.inf for s in self.spacing):
            raise ModelFileError(
                f"card spacing must be three positive finite numbers, got {self.spacing}"
            )
        if len(self.patch_size) != 3 or not all(p > 0 for p in self.patch_size):
            raise ModelFileError(
                f"card patch size must be three positive ints, got {self.patch_size}"
            )

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Input channels the network takes: one per modality file."""
        return len(self.modalities)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            raw = json.loads(text)
            if raw.get("schema_version") != SCHEMA_VERSION:
                raise ModelFileError(
                    f"model card schema {raw.get('schema_version')!r} is not supported "
                    f"(this veloxseg reads schema {SCHEMA_VERSION}); re-export the model"
                )
            return cls(
                config_name=str(raw["config_name"]),
                model_config=dict(raw["model_config"]),
                modalities=tuple(str(m) for m in raw["modalities"]),
                normalization=tuple(Normalization(**n) for n in raw["normalization"]),
                class_names=tuple(str(c) for c in raw["class_names"]),
                label_values=tuple(int(v) for v in raw["label_values"]),
                spacing=tuple(float(s) for s in raw["spacing"]),  # type: ignore[arg-type]
                patch_size=tuple(int(p) for p in raw["patch_size"]),  # type: ignore[arg-type]
                source_sha256=raw.get("source_sha256"),
                exporter_version=str(raw.get("exporter_version", "")),
                custom_domain=str(raw.get("custom_domain", PWA_DOMAIN)),
                custom_opset=int(raw.get("custom_opset", PWA_OPSET)),
                schema_version=int(raw["schema_version"]),
                extra=dict(raw.get("extra", {})),
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelFileError(f"model card is malformed ({e}); re-export the model") from e
