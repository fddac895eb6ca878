#!/usr/bin/env python3
"""Independent NumPy forward pass of all-MiniLM-L6-v2, to check shoal-sidecar's embeddings.

Usage: python reference.py MODEL_DIR < sentences.json > embeddings.json

stdin:  a JSON list of strings.
stdout: a JSON list with one embedding (a list of 384 floats) per string, nothing else.

MODEL_DIR is a directory made by scripts/fetch-model.sh (models/all-MiniLM-L6-v2): it reads
tokenizer.json, config.json, model.safetensors and, if present, shoal-model.json (max_tokens).

Shares no code with the Rust side: the tokenizer is the `tokenizers` Python package, the
safetensors file is parsed here by hand (no torch, no safetensors package), and the BERT
forward pass is written out in NumPy float32:
  embeddings (word + position + token type 0) -> LayerNorm
  -> per layer: self-attention (12 heads) -> dense + residual -> LayerNorm
                -> intermediate dense -> exact (erf) GELU -> dense + residual -> LayerNorm
  -> mean over the tokens (attention mask) -> L2 normalisation.
Each sentence runs alone (a batch of one, so no padding), truncated to max_tokens word
pieces including [CLS] and [SEP], as sentence-transformers does (max_seq_length 256).

Note: the tokenizer.json in the wheel carries truncation to 128 and fixed padding to 128;
both are replaced here (no padding, truncation to max_tokens).
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
}


def load_safetensors(path):
    """Returns {name: float32 ndarray} from a .safetensors file, parsed by hand.

    Format: 8-byte little-endian u64 header length N, N bytes of JSON header
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
    then the raw little-endian tensor data; offsets are relative to the end of the header.
    """
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{name}: unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=math.prod(shape), offset=base + begin)
        if array.nbytes != end - begin:
            raise ValueError(f"{name}: {end - begin} bytes for shape {shape} {info['dtype']}")
        tensors[name] = array.reshape(shape).astype(np.float32)
    return tensors


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), with math.erf (float64), back to float32."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + np.float32(eps))) * weight + bias


def linear(x, w, prefix):
    """PyTorch nn.Linear: weight is [out, in]."""
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


class MiniLM:
    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.layers = config["num_hidden_layers"]
        self.eps = config["layer_norm_eps"]
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {config['hidden_act']}")
        max_tokens = 256
        manifest = model_dir / "shoal-model.json"
        if manifest.exists():
            max_tokens = json.loads(manifest.read_text()).get("max_tokens", max_tokens)
        self.max_tokens = min(max_tokens, config["max_position_embeddings"])

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_tokens)

        w = load_safetensors(model_dir / "model.safetensors")
        # Accept a "bert." prefix too, in case a model file carries one.
        self.w = {k.removeprefix("bert."): v for k, v in w.items()}

    def token_ids(self, text):
        return self.tokenizer.encode(text).ids

    def embed(self, text):
        w = self.w
        ids = np.array(self.token_ids(text), dtype=np.int64)
        n = len(ids)
        mask = np.ones(n, dtype=np.float32)  # one sentence, no padding

        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(n)]
            + w["embeddings.token_type_embeddings.weight"][np.zeros(n, dtype=np.int64)]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)

        head_dim = self.hidden // self.heads
        scale = np.float32(1.0 / math.sqrt(head_dim))
        # Additive mask over the key positions: 0 where attended, a large negative where padding.
        key_bias = ((1.0 - mask) * np.float32(np.finfo(np.float32).min)).astype(np.float32)

        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def split(t):  # [n, hidden] -> [heads, n, head_dim]
                return t.reshape(n, self.heads, head_dim).transpose(1, 0, 2)

            q = split(linear(x, w, f"{p}.attention.self.query"))
            k = split(linear(x, w, f"{p}.attention.self.key"))
            v = split(linear(x, w, f"{p}.attention.self.value"))
            scores = (q @ k.transpose(0, 2, 1)) * scale + key_bias  # [heads, n, n]
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs = probs / probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, self.hidden)

            attn = linear(context, w, f"{p}.attention.output.dense")
            x = layer_norm(
                attn + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                self.eps,
            )
            inter = gelu(linear(x, w, f"{p}.intermediate.dense"))
            out = linear(inter, w, f"{p}.output.dense")
            x = layer_norm(
                out + x,
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                self.eps,
            )

        pooled = (x * mask[:, None]).sum(axis=0) / max(mask.sum(), 1e-9)
        norm = np.linalg.norm(pooled)
        return (pooled / max(norm, 1e-12)).astype(np.float32)


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    sentences = json.load(sys.stdin)
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        sys.exit("reference.py: stdin must be a JSON list of strings")
    model = MiniLM(sys.argv[1])
    embeddings = [[float(v) for v in model.embed(s)] for s in sentences]
    json.dump(embeddings, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
