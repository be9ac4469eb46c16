"""Open and validate a VeloxSeg ONNX file before any runtime sees it.

A model file is untrusted input: it is parsed without loading external data, external tensors
must lie inside the model's own folder, only standard domains and ``ai.veloxseg`` are accepted,
and the model card must agree with the graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.external_data_helper
from google.protobuf.message import DecodeError

from veloxseg.runtime.card import CARD_KEY, PWA_DOMAIN, PWA_OPSET, ModelCard
from veloxseg.runtime.errors import ModelFileError

__all__ = [
    "ALLOWED_DOMAINS",
    "LOGITS",
    "MARGINS",
    "ModelFile",
    "graph_for_output",
    "open_model_file",
]

LOGITS = "logits"
MARGINS = "label_margins"

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", PWA_DOMAIN})
_MAX_PROTO_BYTES = 2**31 - 1


@dataclass(frozen=True)
class ModelFile:
    """A validated model: its path, card, SHA-256, and the parsed graph (no external data)."""

    path: Path
    card: ModelCard
    sha256: str
    proto: onnx.ModelProto

    @property
    def input_name(self) -> str:
        return self.proto.graph.input[0].name

    @property
    def has_margins(self) -> bool:
        """Whether the file also outputs ``label_margins`` (logits of classes 1..K-1 minus class
        0), the cheaper output for labels; files from older exporters have logits only."""
        return any(o.name == MARGINS for o in self.proto.graph.output)


def graph_for_output(model: ModelFile, output: str) -> onnx.ModelProto:
    """A copy of ``model`` that computes only graph output ``output``, external data loaded.

    ONNX Runtime runs every node of a session whichever outputs a call asks for, so the unused
    head would cost a full-resolution conv and transpose per patch.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    needed, kept = {output}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            for sub in _subgraphs(node):  # outer-scope names a subgraph reads
                needed.update(name for n in sub.node for name in n.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    outputs = [o for o in graph.output if o.name == output]
    del graph.output[:]
    graph.output.extend(outputs)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.external_data_helper.load_external_data_for_model(proto, str(model.path.parent))
    return proto


def _read(path: Path) -> tuple[onnx.ModelProto, str]:
    if path.is_dir():
        raise ModelFileError(f"model {path} is a folder; pass an exported .onnx file")
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; pass an exported .onnx file")
    if not path.is_file():
        raise ModelFileError(f"model {path} is not a regular file; pass an exported .onnx file")
    size = path.stat().st_size
    if size > _MAX_PROTO_BYTES:  # no valid model is this big: refuse before reading it
        raise ModelFileError(
            f"{path} is {size:,} bytes, over the 2 GiB an ONNX protobuf can hold; "
            "store large weights as external data beside it"
        )
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        if path.name.lower().endswith((".nii", ".nii.gz", ".hdr", ".img")):
            raise ModelFileError(
                f"{path} is a scan, not a model; pass scans with -i (and a model with -m)"
            ) from e
        if path.suffix.lower() in (".pth", ".pt", ".ckpt"):
            raise ModelFileError(
                f"{path} looks like a PyTorch checkpoint, not an ONNX model; convert it with "
                "`veloxseg export CHECKPOINT --config NAME -o model.onnx`"
            ) from e
        raise ModelFileError(
            f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it with "
            "`veloxseg export`"
        ) from e
    if not proto.graph.node:
        raise ModelFileError(f"{path} holds no ONNX graph; re-export it with `veloxseg export`")
    return proto, hashlib.sha256(data).hexdigest()


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _all_graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph nested in node attributes (If/Loop/Scan bodies), in
    the graph and in model-local functions: a check that skips one can be smuggled past."""
    stack = [proto.graph, *(g for fn in proto.functions for n in fn.node for g in _subgraphs(n))]
    while stack:
        graph = stack.pop()
        yield graph
        stack.extend(g for node in graph.node for g in _subgraphs(node))


def _all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _all_graphs(proto):
        yield from graph.node
    for fn in proto.functions:
        yield from fn.node


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of every graph and tensors in node attributes (``Constant`` values...)."""
    for graph in _all_graphs(proto):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in _all_nodes(proto):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sp in (*sparse, *attr.sparse_tensors):
                yield from (sp.values, sp.indices)


def _check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            _check_external_tensor(tensor.name, info, folder, root)


def _check_external_tensor(name: str, info: dict[str, str], folder: Path, root: Path) -> None:
    """Refuse a location outside ``root`` from its path alone (symlinks resolved, nothing
    opened), then check with ``stat`` that the file holds the byte range the tensor names."""
    location = info.get("location", "")
    try:
        target = (folder / location).resolve()
        inside = bool(location) and not Path(location).is_absolute()
        inside = inside and target.is_relative_to(root)
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops
        inside = False
    if not inside:
        raise ModelFileError(
            f"external data {location!r} of tensor {name!r} lies outside the model's "
            "folder; refusing to read it"
        )
    try:
        offset = int(info.get("offset", "0"))
        end = offset + int(info.get("length", "0"))
        size = target.stat().st_size if target.is_file() else -1
    except (OSError, ValueError) as e:
        raise ModelFileError(
            f"external data {location!r} of tensor {name!r} is unusable ({e})"
        ) from e
    if size < 0 or not 0 <= offset <= end <= size:
        raise ModelFileError(
            f"external data {location!r} of tensor {name!r} is missing or shorter than the "
            f"bytes {offset}..{end} it names; copy the model's whole folder"
        )


def _check_domains(proto: onnx.ModelProto) -> None:
    domains = {o.domain for o in proto.opset_import}
    domains |= {n.domain for n in _all_nodes(proto)}
    for fn in proto.functions:
        domains |= {o.domain for o in fn.opset_import} | {fn.domain}
    foreign = sorted(domains - ALLOWED_DOMAINS)
    if foreign:
        raise ModelFileError(
            f"model uses operator domains {foreign}; "
            f"only standard ONNX and {PWA_DOMAIN} are allowed"
        )
    for opset in proto.opset_import:
        if opset.domain == PWA_DOMAIN and opset.version > PWA_OPSET:
            _refuse_newer_op(opset.version)


def _refuse_newer_op(version: int) -> None:
    raise ModelFileError(
        f"model needs {PWA_DOMAIN} custom op version {version}, but this veloxseg runs version "
        f"{PWA_OPSET}; upgrade veloxseg (pip install -U veloxseg)"
    )


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _check_card_against_graph(card: ModelCard, proto: onnx.ModelProto) -> None:
    inputs, outputs = proto.graph.input, proto.graph.output
    names = [o.name for o in outputs]
    if len(inputs) != 1 or names[:1] != [LOGITS] or names[1:] not in ([], [MARGINS]):
        raise ModelFileError(
            f"a VeloxSeg model has one input and the outputs {LOGITS!r} (and optionally "
            f"{MARGINS!r}); this graph has {len(inputs)} input(s) and outputs {names}"
        )
    image, logits = _dims(inputs[0]), _dims(outputs[0])
    expected_in = [card.in_channels, *card.patch_size]
    if len(image) != 5 or image[1:] != expected_in:
        raise ModelFileError(
            f"model card says input (B, {card.in_channels}, {card.patch_size}) "
            f"but the graph takes {image}"
        )
    if len(logits) != 5 or logits[1] != card.n_classes:
        raise ModelFileError(
            f"model card lists {card.n_classes} classes but the graph outputs {logits}"
        )
    if len(outputs) == 2 and _dims(outputs[1])[1:] != [card.n_classes - 1, *card.patch_size]:
        raise ModelFileError(
            f"{MARGINS} should be (B, {card.n_classes - 1}, {card.patch_size}) for "
            f"{card.n_classes} classes, but the graph outputs {_dims(outputs[1])}"
        )


def open_model_file(path: str | Path) -> ModelFile:
    """Parse and validate ``path``; raise :class:`ModelFileError` saying what is wrong."""
    path = Path(path)
    proto, sha = _read(path)
    _check_external_data(proto, path.parent)
    _check_domains(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in props:
        raise ModelFileError(f"{path} has no VeloxSeg model card; export it with `veloxseg export`")
    card = ModelCard.from_json(props[CARD_KEY])
    if card.custom_domain != PWA_DOMAIN:
        raise ModelFileError(
            f"{path}'s card names custom op domain {card.custom_domain!r}, not {PWA_DOMAIN!r}; "
            "it is not a VeloxSeg model this package can run"
        )
    if card.custom_opset > PWA_OPSET:
        _refuse_newer_op(card.custom_opset)
    _check_card_against_graph(card, proto)
    return ModelFile(path=path, card=card, sha256=sha, proto=proto)
