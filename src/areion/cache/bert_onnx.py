"""A BERT sentence encoder as an ONNX graph, built from safetensors weights.

No torch and no exporter: the graph is written node by node with `onnx.helper` in
standard ONNX ops (opset 17), from the weights of a Hugging Face BERT checkpoint.
It takes `input_ids` and `attention_mask` (int64, [batch, seq]) and returns the
mean-pooled (attention-mask weighted), L2-normalized sentence embedding
[batch, hidden]: what sentence-transformers' Transformer -> Pooling(mean) ->
Normalize computes.

Single sentences only: the token type is always 0, so that row of the token-type
table is folded into the position table and the graph has no `token_type_ids`.

The large weights are not copied into the protobuf: they are marked external and
handed to ONNX Runtime as in-memory arrays (`EncoderGraph.attach`). Serializing
90 MB of initializers through protobuf took over a second; this way building the
graph takes a fraction of that and no second copy of the weights is kept around.
`EncoderGraph.self_contained()` gives a standalone .onnx when one is wanted.

ONNX Runtime's own graph optimizer fuses this graph (LayerNormalization, BiasGelu,
FusedMatMul for the scaled QK^T); writing ORT's com.microsoft Attention /
SkipLayerNormalization ops by hand was measured slower here (5-20 %), so the
graph stays in standard ops.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "TOKEN_STATES",
    "BertConfig",
    "EncoderGraph",
    "build_encoder",
    "read_safetensors",
    "with_token_states",
    "write_safetensors",
]

OPSET = 17

# safetensors dtype names -> numpy dtypes (little-endian, as the format stores them).
_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}

# Added to the attention scores of padding keys: exp() of it underflows to exactly 0
# in float32, so padding cannot change a sentence's embedding (BERT's own value).
MASK_FILTER = -10000.0

# Initializers at most this many elements stay inside the protobuf (shapes, scalars).
_INLINE_MAX = 16
# The last layer's token states, an output only in `with_token_states`.
TOKEN_STATES = "token_states"
_EXTERNAL_LOCATION = "areion-in-memory"


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """All tensors of a .safetensors file, as read-only arrays over one read of it.

    The format: an 8-byte little-endian header length, a JSON header mapping each
    name to its dtype, shape and [begin, end) byte offsets in the data that follows.
    """
    blob = path.read_bytes()
    if len(blob) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: not a safetensors file (header length out of range)")
    header: dict[str, Any] = json.loads(blob[8 : 8 + header_len])
    data = memoryview(blob)[8 + header_len :]
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= len(data):
            raise ValueError(f"{path}: tensor {name!r} lies outside the file")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
    return tensors


@dataclass(slots=True, kw_only=True, frozen=True)
class BertConfig:
    """The parts of a Hugging Face BERT config.json the encoder needs."""

    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float
    max_positions: int

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        # Only exact (erf) GELU is built: an approximate one would drift silently.
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{path}: hidden_act {act!r} is not supported (only 'gelu')")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        config = cls(
            hidden_size=int(raw["hidden_size"]),
            num_heads=int(raw["num_attention_heads"]),
            num_layers=int(raw["num_hidden_layers"]),
            intermediate_size=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
            max_positions=int(raw["max_position_embeddings"]),
        )
        if config.hidden_size % config.num_heads:
            raise ValueError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        return config

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(slots=True, kw_only=True, frozen=True)
class EncoderGraph:
    """A serialized ONNX model whose large initializers live in `weights`, not in it."""

    model: bytes
    weights: dict[str, npt.NDArray[Any]] = field(repr=False)
    dim: int

    def attach(self, options: Any) -> None:
        """Hand the weights to an `onnxruntime.SessionOptions` (zero-copy views).

        The arrays must outlive every session made with `options`; this object
        holds them, so keep it referenced as long as those sessions.
        """
        from onnxruntime import OrtValue

        names = list(self.weights)
        options.add_external_initializers(
            names, [OrtValue.ortvalue_from_numpy(self.weights[name]) for name in names]
        )

    def self_contained(self) -> bytes:
        """The same model with every weight inside it: a standalone .onnx file."""
        import onnx

        model = onnx.load_from_string(self.model)
        for tensor in model.graph.initializer:
            if tensor.name in self.weights:
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
                tensor.raw_data = self.weights[tensor.name].tobytes()
        return bytes(model.SerializeToString())


class _Graph:
    """Accumulates nodes and initializers; names each intermediate uniquely."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.external: dict[str, npt.NDArray[Any]] = {}
        self._count = 0

    def const(self, name: str, array: npt.NDArray[Any]) -> str:
        from onnx import TensorProto, helper

        array = np.ascontiguousarray(array)
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.dims.extend(array.shape)
        if array.size <= _INLINE_MAX:
            tensor.raw_data = array.tobytes()
        else:
            tensor.data_location = TensorProto.EXTERNAL
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", _EXTERNAL_LOCATION
            self.external[name] = array
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        name = output or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    def ops(self, op_type: str, *inputs: str, outputs: int) -> list[str]:
        """A node with several outputs; their names."""
        from onnx import helper

        self._count += 1
        names = [f"{op_type.lower()}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names))
        return names

    def serialized(self, name: str, inputs: list[Any], outputs: list[Any]) -> bytes:
        """The model of these nodes and initializers, `inputs` to `outputs` (value infos);
        its large weights stay in `external`."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="areion"
        )
        # IR version 8 is the one that goes with opset 17; newer onnx releases stamp a
        # higher default than some runtimes accept.
        model.ir_version = 8
        return bytes(model.SerializeToString())

    def scalar(self, name: str, value: float) -> str:
        return self.const(name, np.array(value, dtype=np.float32))

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))


def _f32(array: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    # A copy, always: the graph must not keep the whole safetensors file alive.
    return np.array(array, dtype=np.float32)


def _quantized_matmul(g: _Graph, inp: str, weight: npt.NDArray[np.float32], name: str) -> str:
    """`inp @ weight` in 8-bit integers: the weight per output column (symmetric int8,
    fixed here), the input per run (uint8, its range measured by DynamicQuantizeLinear).
    ONNX Runtime fuses the pattern into one integer kernel, several times faster than
    float32 on CPU for a short text."""
    from onnx import TensorProto

    scale = np.abs(weight).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    x_q, x_scale, x_zero = g.ops("DynamicQuantizeLinear", inp, outputs=3)
    product = g.op("MatMulInteger", x_q, g.const(f"{name}.q", quantized), x_zero)
    scales = g.op("Mul", x_scale, g.const(f"{name}.scale", scale.astype(np.float32)))
    return g.op("Mul", g.op("Cast", product, to=TensorProto.FLOAT), scales)


def _layer(
    g: _Graph,
    x: str,
    mask_bias: str,
    w: dict[str, npt.NDArray[Any]],
    p: str,
    c: BertConfig,
    quantized: bool,
) -> str:
    """One post-LayerNorm BERT encoder layer: self-attention, then the feed-forward."""

    def dense(inp: str, name: str) -> str:
        # nn.Linear stores [out, in]; MatMul wants [in, out].
        matrix = _f32(w[f"{p}{name}.weight"]).T
        bias = g.const(f"{p}{name}.bias", _f32(w[f"{p}{name}.bias"]))
        if quantized:
            return g.op("Add", _quantized_matmul(g, inp, matrix, f"{p}{name}.weight"), bias)
        weight = g.const(f"{p}{name}.weight", matrix)
        return g.op("Add", g.op("MatMul", inp, weight), bias)

    def layer_norm(inp: str, name: str) -> str:
        gamma = g.const(f"{p}{name}.weight", _f32(w[f"{p}{name}.weight"]))
        beta = g.const(f"{p}{name}.bias", _f32(w[f"{p}{name}.bias"]))
        return g.op("LayerNormalization", inp, gamma, beta, axis=-1, epsilon=c.layer_norm_eps)

    split_heads = g.ints(f"{p}split_heads", [0, 0, c.num_heads, c.head_size])
    q = g.op("Reshape", dense(x, "attention.self.query"), split_heads)
    k = g.op("Reshape", dense(x, "attention.self.key"), split_heads)
    v = g.op("Reshape", dense(x, "attention.self.value"), split_heads)
    q = g.op("Transpose", q, perm=[0, 2, 1, 3])  # [B, heads, S, d]
    k = g.op("Transpose", k, perm=[0, 2, 3, 1])  # [B, heads, d, S]
    v = g.op("Transpose", v, perm=[0, 2, 1, 3])  # [B, heads, S, d]
    scale = g.scalar(f"{p}scale", 1.0 / math.sqrt(c.head_size))
    scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), mask_bias)
    probs = g.op("Softmax", scores, axis=-1)
    context = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    context = g.op("Reshape", context, g.ints(f"{p}merge_heads", [0, 0, c.hidden_size]))
    attended = dense(context, "attention.output.dense")
    x = layer_norm(g.op("Add", attended, x), "attention.output.LayerNorm")

    hidden = dense(x, "intermediate.dense")
    # Exact GELU, 0.5 * h * (1 + erf(h / sqrt 2)); ORT fuses it with the bias add.
    erf = g.op("Erf", g.op("Div", hidden, g.scalar(f"{p}root2", math.sqrt(2.0))))
    hidden = g.op(
        "Mul",
        g.op("Mul", hidden, g.scalar(f"{p}half", 0.5)),
        g.op("Add", erf, g.scalar(f"{p}one", 1.0)),
    )
    out = dense(hidden, "output.dense")
    return layer_norm(g.op("Add", out, x), "output.LayerNorm")


def build_encoder(
    weights: dict[str, npt.NDArray[Any]], config: BertConfig, *, quantized: bool = False
) -> EncoderGraph:
    """The encoder plus mean pooling and L2 normalization, from a BERT checkpoint;
    `quantized`: the encoder layers' dense products in 8-bit integers."""
    from onnx import TensorProto, helper

    g = _Graph()
    # Checkpoints saved from BertForX prefix every name with "bert."; BertModel does not.
    w = {name.removeprefix("bert."): value for name, value in weights.items()}

    # Embeddings: word + position + token type 0, then LayerNorm.
    word = g.const("word_embeddings", _f32(w["embeddings.word_embeddings.weight"]))
    positions = _f32(w["embeddings.position_embeddings.weight"]) + _f32(
        w["embeddings.token_type_embeddings.weight"][0]
    )
    position = g.const("position_embeddings", positions)
    seq_len = g.op("Shape", "input_ids", start=1, end=2)  # [S]
    first = g.op("Slice", position, g.ints("zero", [0]), seq_len)  # [S, H]
    emb = g.op("Add", g.op("Gather", word, "input_ids"), first)
    x = g.op(
        "LayerNormalization",
        emb,
        g.const("embeddings.LayerNorm.weight", _f32(w["embeddings.LayerNorm.weight"])),
        g.const("embeddings.LayerNorm.bias", _f32(w["embeddings.LayerNorm.bias"])),
        axis=-1,
        epsilon=config.layer_norm_eps,
    )

    # (1 - mask) * -10000, shaped [B, 1, 1, S] to broadcast over heads and queries.
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)  # [B, S]
    bias = g.op(
        "Mul", g.op("Sub", g.scalar("one", 1.0), mask), g.scalar("mask_filter", MASK_FILTER)
    )
    mask_bias = g.op("Unsqueeze", bias, g.ints("axes_1_2", [1, 2]))
    for layer in range(config.num_layers):
        x = _layer(g, x, mask_bias, w, f"encoder.layer.{layer}.", config, quantized)
    x = g.op("Identity", x, output=TOKEN_STATES)  # named: see with_token_states

    # Mean over the real tokens, sum(x * mask) / max(count, 1e-9), as sentence-transformers.
    axis1 = g.ints("axis_1", [1])
    mask3 = g.op("Unsqueeze", mask, g.ints("axis_2", [2]))  # [B, S, 1]
    total = g.op("ReduceSum", g.op("Mul", x, mask3), axis1, keepdims=0)  # [B, H]
    count = g.op("ReduceSum", mask, axis1, keepdims=1)  # [B, 1]
    mean = g.op("Div", total, g.op("Max", count, g.scalar("count_floor", 1e-9)))
    # L2 normalize with torch's F.normalize floor of 1e-12 on the norm.
    norm = g.op("ReduceL2", mean, axes=[1], keepdims=1)  # opset 17: axes is an attribute
    g.op("Div", mean, g.op("Max", norm, g.scalar("norm_floor", 1e-12)), output="embeddings")

    int64, float32 = TensorProto.INT64, TensorProto.FLOAT
    model = g.serialized(
        "sentence_encoder",
        [
            helper.make_tensor_value_info("input_ids", int64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", int64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embeddings", float32, ["batch", config.hidden_size])],
    )
    return EncoderGraph(model=model, weights=g.external, dim=config.hidden_size)


def with_token_states(graph: EncoderGraph) -> EncoderGraph:
    """The same encoder, sharing `graph`'s weight arrays, with a second output:
    `token_states` [batch, seq, hidden], the last layer's state of every token."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(graph.model)
    model.graph.output.append(
        helper.make_tensor_value_info(TOKEN_STATES, TensorProto.FLOAT, ["batch", "seq", graph.dim])
    )
    return EncoderGraph(
        model=bytes(model.SerializeToString()), weights=graph.weights, dim=graph.dim
    )


_DTYPE_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


def write_safetensors(
    path: Path, tensors: dict[str, npt.NDArray[Any]], metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` as a .safetensors file (what `read_safetensors` reads)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        kind = _DTYPE_NAMES.get(array.dtype.newbyteorder("<").str)
        if kind is None:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be stored")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": kind,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data then starts 8-byte aligned
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))
