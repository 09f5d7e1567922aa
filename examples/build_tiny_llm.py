#!/usr/bin/env python3
"""Build a tiny decoder-only language model in ONNX Runtime GenAI's folder layout.

    .venv/bin/python examples/build_tiny_llm.py [--shape tiny|small] OUT_DIR

OUT_DIR gets:
  genai_config.json      ORT GenAI's config (model.type "llama": the plain decoder with
                         `past_key_values.%d.key/value` -> `present.%d.key/value`)
  model.onnx             llama-shaped decoder, seeded random weights (numpy default_rng)
  tokenizer.json         byte-level BPE trained here with PyPI `tokenizers` on a corpus this
                         script writes itself; BOS added by its post-processor
  tokenizer_config.json  bos/eos tokens, add_bos_token, a ChatML chat_template

Nothing is downloaded; the same script writes the same bytes every time (files are only
rewritten when their content changes).

--shape small (benchmarks only) keeps the tokenizer, the graph and the generation shaping but
widens the model to hidden 768, 6 layers, 12 query heads sharing 4 key/value heads (head size 64),
MLP 2048: about 41 M parameters, 165 MB of float32 weights that no CPU cache holds, so a decode
step streams every weight from memory as a real language model's does, and a batch of 16 costs
about twice a batch of one, not sixteen times. The default shape, below, is small enough for tests.

The model: vocabulary of the tokenizer (about 2,000 tokens), hidden 256, 4 layers, 8 query heads
sharing 2 key/value heads (grouped-query attention), head size 32, SiLU-gated MLP, RMSNorm, rotary
position embeddings indexed by `position_ids`, context 512. Its I/O:

  input_ids             int64 [batch, sequence]
  attention_mask        int64 [batch, past + sequence]   1 = attend, 0 = padding (anywhere)
  position_ids          int64 [batch, sequence]
  past_key_values.N.key / .value    float32 [batch, 2, past, 32]
  -> logits             float32 [batch, sequence, vocab]
  -> present.N.key / .value         float32 [batch, 2, past + sequence, 32]

Query i of the new tokens (at column past + i) sees key column j iff attention_mask[j] == 1 and
j <= past + i, so left-padded batches give the same tokens as sequences run alone.

Generation is shaped for tests:
- the logits have a standard deviation of about 16, so greedy top-1 margins are wide compared
  with the rounding differences between a padded batch and a sequence alone (about 4e-5);
- EOS ("</s>") gets a bias growing with the position (EOS_SLOPE * (position - EOS_POSITION)):
  greedy runs of short prompts never stop before position ~180 and do stop with a real EOS
  by ~210 (so long prompts end almost at once: use ignore_eos or max_tokens there);
- tokens that are not whole printable UTF-8 (lone bytes of multi-byte characters, control
  characters) and the special tokens other than EOS are never generated, so generated text is
  always valid and every token boundary falls between characters.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --- Shape of the model ---------------------------------------------------------------------
VOCAB_TARGET = 2048
HIDDEN = 256
LAYERS = 4
HEADS = 8
KV_HEADS = 2
HEAD_SIZE = HIDDEN // HEADS  # 32
INTERMEDIATE = 768
CONTEXT = 512
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
OPSET = 17
IR_VERSION = 8
SEED = 20

# --shape small: the benchmark model (see the module docstring).
SHAPES = {
    "tiny": dict(HIDDEN=256, LAYERS=4, HEADS=8, KV_HEADS=2, HEAD_SIZE=32, INTERMEDIATE=768),
    "small": dict(HIDDEN=768, LAYERS=6, HEADS=12, KV_HEADS=4, HEAD_SIZE=64, INTERMEDIATE=2048),
}


def use_shape(name: str) -> None:
    """Rebinds the shape constants above (read at build time) to one of SHAPES."""
    globals().update(SHAPES[name])


LOGIT_SCALE = 16.0  # standard deviation of the logits: greedy margins wide, sampling still varied
# EOS's logit gets EOS_SLOPE * (position - EOS_POSITION): never chosen early, certain late, so
# greedy runs of short prompts end with a real EOS somewhere past position ~EOS_POSITION.
EOS_POSITION = 180
EOS_SLOPE = 2.0

# --- Tokenizer ------------------------------------------------------------------------------
BOS, EOS, PAD, IM_START, IM_END = "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"
SPECIALS = [BOS, EOS, PAD, IM_START, IM_END]  # ids 0..4 in this order
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def log(msg: str) -> None:
    print(msg, flush=True)


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    # mkstemp's 0600 would keep a server running as another user from reading it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return True


# --------------------------------------------------------------------------------------------
# Corpus and tokenizer
# --------------------------------------------------------------------------------------------


def corpus_lines() -> list[str]:
    """A deterministic English-looking corpus: made-up words in simple sentences, digits,
    punctuation, a little code and non-ASCII text, so the BPE has something to merge."""
    rng = np.random.default_rng(SEED)
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v",
              "w", "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt"]
    words = sorted({
        "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))]
                + codas[rng.integers(len(codas))] for _ in range(1 + int(rng.integers(3))))
        for _ in range(1500)
    })
    common = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on",
              "with", "as", "by", "at", "from", "this", "model", "token", "server", "tern",
              "stream", "batch", "hello", "world", "language", "cache", "request", "reply"]
    # Zipf-like choice: common words often, invented words with a long tail.
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    lines = []
    for n in range(6000):
        k = 4 + int(rng.integers(12))
        ws = []
        for _ in range(k):
            if rng.random() < 0.35:
                ws.append(common[int(rng.integers(len(common)))])
            else:
                ws.append(words[int(rng.choice(len(words), p=weights))])
        s = " ".join(ws)
        s = s[0].upper() + s[1:]
        if n % 7 == 0:
            s += f", {int(rng.integers(10000))}"
        s += [".", ".", ".", "!", "?", ";"][int(rng.integers(6))]
        lines.append(s)
    lines += [
        "def add(a, b):\n    return a + b\n",
        "for i in range(10): print(i)",
        '{"key": "value", "n": [1, 2, 3]}',
        "Grüße aus Zürich — naïve café, 東京, Ünïcödé ✓",
    ] * 20
    return lines


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"special token {s} should have id {i}"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return tok


def byte_level_table() -> dict[str, int]:
    """The byte-level alphabet: the printable character standing for each byte (GPT-2's table,
    which the `tokenizers` ByteLevel pre-tokenizer uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


def unprintable_tokens(tok) -> list[int]:
    """Tokens whose bytes are not complete UTF-8 text, or hold control characters other than
    newline and tab: the model never generates them, so any generated sequence is valid text
    and token boundaries fall between characters."""
    table = byte_level_table()
    out = []
    for token, i in tok.get_vocab().items():
        if i < len(SPECIALS):
            continue
        raw = bytes(table[c] for c in token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
            continue
        if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in text):
            out.append(i)
    return sorted(out)


def tokenizer_files(tok) -> dict[str, bytes]:
    data = json.loads(tok.to_str())
    tokenizer_json = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONTEXT,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, s in enumerate(SPECIALS)
        },
    }
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                   "additional_special_tokens": [IM_START, IM_END]}
    return {
        "tokenizer.json": tokenizer_json.encode(),
        "tokenizer_config.json": (json.dumps(cfg, indent=2) + "\n").encode(),
        "special_tokens_map.json": (json.dumps(special_map, indent=2) + "\n").encode(),
    }


# --------------------------------------------------------------------------------------------
# The ONNX graph
# --------------------------------------------------------------------------------------------


class Graph:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const_i64(self, name: str, values) -> str:
        return self.init(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs):
        self.n += 1
        base = name or f"{op_type.lower()}_{self.n}"
        outs = [base] if n_out == 1 else [f"{base}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"n{self.n}_{op_type}", **attrs))
        return outs[0] if n_out == 1 else outs


def rms_norm(g: Graph, x: str, weight: str, prefix: str) -> str:
    sq = g.op("Mul", [x, x], f"{prefix}_sq")
    mean = g.op("ReduceMean", [sq], f"{prefix}_mean", axes=[-1], keepdims=1)
    var = g.op("Add", [mean, "rms_eps"], f"{prefix}_var")
    inv = g.op("Reciprocal", [g.op("Sqrt", [var], f"{prefix}_std")], f"{prefix}_inv")
    return g.op("Mul", [g.op("Mul", [x, inv], f"{prefix}_normed"), weight], f"{prefix}_out")


def rope(g: Graph, x: str, prefix: str) -> str:
    """Rotate-half rotary embedding on x [B, heads, S, D] with cos/sin [B, 1, S, D/2]."""
    x1, x2 = g.op("Split", [x, "half_split"], f"{prefix}_half", n_out=2, axis=-1)
    a = g.op("Sub", [g.op("Mul", [x1, "rope_cos"]), g.op("Mul", [x2, "rope_sin"])], f"{prefix}_r1")
    b = g.op("Add", [g.op("Mul", [x2, "rope_cos"]), g.op("Mul", [x1, "rope_sin"])], f"{prefix}_r2")
    return g.op("Concat", [a, b], f"{prefix}_rot", axis=-1)


def build_model(vocab: int, eos_ids: list[int], never: list[int]) -> bytes:
    rng = np.random.default_rng(SEED)

    def normal(shape, std) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    g = Graph()
    D, H, HQ, HKV, GROUP = HEAD_SIZE, HIDDEN, HEADS, KV_HEADS, HEADS // KV_HEADS

    # Constants
    g.init("rms_eps", np.array(RMS_EPS, dtype=np.float32))
    g.const_i64("half_split", [D // 2, D // 2])
    g.const_i64("axis0", [0])
    g.const_i64("axis1", [1])
    g.const_i64("axis2", [2])
    g.const_i64("axis_last", [-1])
    g.const_i64("axes_1_2_3", [1, 2, 3])
    g.const_i64("shape_q", [0, 0, HQ, D])
    g.const_i64("shape_kv", [0, 0, HKV, D])
    g.const_i64("shape_groups", [0, HKV, GROUP, -1, D])
    g.const_i64("shape_heads", [0, HQ, -1, D])
    g.const_i64("shape_merge", [0, 0, HQ * D])
    g.init("scale", np.array(1.0 / np.sqrt(D), dtype=np.float32))
    g.init("zero_f", np.array(0.0, dtype=np.float32))
    g.init("neg_big", np.array(-1e9, dtype=np.float32))
    g.init("one_i", np.array(1, dtype=np.int64))
    g.init("zero_i", np.array(0, dtype=np.int64))

    # Rotary tables indexed by position_ids: [context, D/2] -> [B, 1, S, D/2]
    inv_freq = 1.0 / (ROPE_THETA ** (np.arange(0, D, 2, dtype=np.float64) / D))
    angles = np.outer(np.arange(CONTEXT, dtype=np.float64), inv_freq)
    g.init("cos_table", np.cos(angles).astype(np.float32))
    g.init("sin_table", np.sin(angles).astype(np.float32))
    g.op("Unsqueeze", [g.op("Gather", ["cos_table", "position_ids"]), "axis1"], "rope_cos")
    g.op("Unsqueeze", [g.op("Gather", ["sin_table", "position_ids"]), "axis1"], "rope_sin")

    # Attention bias [B, 1, 1, S, T]: 0 where query i may see key j, -1e9 elsewhere.
    # Key j is visible to query i iff attention_mask[b, j] == 1 and j <= (T - S) + i.
    total = g.op("Shape", ["attention_mask"], "total_len_1d", start=1, end=2)
    seq = g.op("Shape", ["input_ids"], "seq_len_1d", start=1, end=2)
    total_s = g.op("Squeeze", [total, "axis0"], "total_len")
    seq_s = g.op("Squeeze", [seq, "axis0"], "seq_len")
    past_s = g.op("Sub", [total_s, seq_s], "past_len")
    cols = g.op("Range", ["zero_i", total_s, "one_i"], "key_cols")  # [T]
    rows = g.op("Add", [g.op("Range", ["zero_i", seq_s, "one_i"], "query_rows0"), past_s], "query_rows")
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [cols, "axis0"], "cols_2d"),
                                  g.op("Unsqueeze", [rows, "axis1"], "rows_2d")], "causal")  # [S, T]
    pad_ok = g.op("Equal", [g.op("Unsqueeze", ["attention_mask", "axes_1_2_3"], "mask_5d"), "one_i"], "pad_ok")
    allowed = g.op("And", [causal, pad_ok], "allowed")  # [B, 1, 1, S, T]
    g.op("Where", [allowed, "zero_f", "neg_big"], "attn_bias")

    g.init("embed", normal((vocab, H), 1.0))
    x = g.op("Gather", ["embed", "input_ids"], "embedded")  # [B, S, H]

    for layer in range(LAYERS):
        p = f"l{layer}"
        g.init(f"{p}_ln1", (1.0 + normal((H,), 0.1)))
        g.init(f"{p}_ln2", (1.0 + normal((H,), 0.1)))
        g.init(f"{p}_wq", normal((H, HQ * D), 1.0 / np.sqrt(H)))
        g.init(f"{p}_wk", normal((H, HKV * D), 1.0 / np.sqrt(H)))
        g.init(f"{p}_wv", normal((H, HKV * D), 1.0 / np.sqrt(H)))
        g.init(f"{p}_wo", normal((HQ * D, H), 1.0 / np.sqrt(HQ * D)))
        g.init(f"{p}_wg", normal((H, INTERMEDIATE), 1.0 / np.sqrt(H)))
        g.init(f"{p}_wu", normal((H, INTERMEDIATE), 1.0 / np.sqrt(H)))
        g.init(f"{p}_wd", normal((INTERMEDIATE, H), 1.0 / np.sqrt(INTERMEDIATE)))

        h = rms_norm(g, x, f"{p}_ln1", f"{p}_attn_norm")
        q = g.op("Transpose", [g.op("Reshape", [g.op("MatMul", [h, f"{p}_wq"]), "shape_q"])],
                 f"{p}_q", perm=[0, 2, 1, 3])  # [B, HQ, S, D]
        k = g.op("Transpose", [g.op("Reshape", [g.op("MatMul", [h, f"{p}_wk"]), "shape_kv"])],
                 f"{p}_k", perm=[0, 2, 1, 3])  # [B, HKV, S, D]
        v = g.op("Transpose", [g.op("Reshape", [g.op("MatMul", [h, f"{p}_wv"]), "shape_kv"])],
                 f"{p}_v", perm=[0, 2, 1, 3])
        q = rope(g, q, f"{p}_q")
        k = rope(g, k, f"{p}_k")
        present_k = g.op("Concat", [f"past_key_values.{layer}.key", k], f"present.{layer}.key", axis=2)
        present_v = g.op("Concat", [f"past_key_values.{layer}.value", v], f"present.{layer}.value", axis=2)

        # Grouped-query attention: query head h uses key/value head h // GROUP.
        qg = g.op("Reshape", [q, "shape_groups"], f"{p}_qg")  # [B, HKV, GROUP, S, D]
        kg = g.op("Unsqueeze", [present_k, "axis2"], f"{p}_kg")  # [B, HKV, 1, T, D]
        vg = g.op("Unsqueeze", [present_v, "axis2"], f"{p}_vg")
        kt = g.op("Transpose", [kg], f"{p}_kt", perm=[0, 1, 2, 4, 3])  # [B, HKV, 1, D, T]
        scores = g.op("Mul", [g.op("MatMul", [qg, kt]), "scale"], f"{p}_scores")  # [B,HKV,G,S,T]
        probs = g.op("Softmax", [g.op("Add", [scores, "attn_bias"])], f"{p}_probs", axis=-1)
        ctx = g.op("MatMul", [probs, vg], f"{p}_ctx")  # [B, HKV, GROUP, S, D]
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("Reshape", [ctx, "shape_heads"])], perm=[0, 2, 1, 3]),
                               "shape_merge"], f"{p}_ctx_merged")  # [B, S, HQ*D]
        x = g.op("Add", [x, g.op("MatMul", [ctx, f"{p}_wo"])], f"{p}_resid1")

        h = rms_norm(g, x, f"{p}_ln2", f"{p}_mlp_norm")
        gate = g.op("MatMul", [h, f"{p}_wg"], f"{p}_gate")
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])], f"{p}_silu")
        up = g.op("MatMul", [h, f"{p}_wu"], f"{p}_up")
        x = g.op("Add", [x, g.op("MatMul", [g.op("Mul", [silu, up]), f"{p}_wd"])], f"{p}_resid2")

    g.init("final_ln", (1.0 + normal((H,), 0.1)))
    h = rms_norm(g, x, "final_ln", "final_norm")
    g.init("lm_head", normal((H, vocab), LOGIT_SCALE / np.sqrt(H)))
    # Special tokens other than EOS and tokens that are not whole printable UTF-8 are never
    # generated (-1e4); EOS's bias grows with the position.
    bias = np.zeros(vocab, dtype=np.float32)
    bias[[i for i in range(len(SPECIALS)) if i != eos_ids[0]]] = -1e4
    bias[never] = -1e4
    g.init("lm_bias", bias)
    eos_hot = np.zeros(vocab, dtype=np.float32)
    eos_hot[eos_ids[0]] = 1.0
    g.init("eos_hot", eos_hot)
    g.init("eos_position", np.array(EOS_POSITION, dtype=np.float32))
    g.init("eos_slope", np.array(EOS_SLOPE, dtype=np.float32))
    pos_f = g.op("Cast", ["position_ids"], "position_f", to=TensorProto.FLOAT)
    ramp = g.op("Mul", [g.op("Sub", [pos_f, "eos_position"]), "eos_slope"], "eos_ramp")  # [B, S]
    eos_bias = g.op("Mul", [g.op("Unsqueeze", [ramp, "axis_last"]), "eos_hot"], "eos_bias")  # [B,S,V]
    logits = g.op("Add", [g.op("MatMul", [h, "lm_head"]), "lm_bias"], "logits_raw")
    g.op("Add", [logits, eos_bias], "logits")

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", vocab])]
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{layer}.{kind}", f32, ["batch_size", HKV, "past_sequence_length", D]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{layer}.{kind}", f32, ["batch_size", HKV, "total_sequence_length", D]))
    graph = helper.make_graph(g.nodes, "tiny_llm", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tern-examples")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def genai_config(vocab: int, eos_ids: list[int]) -> dict:
    # Field names as ONNX Runtime GenAI's model builder writes them (src/python/py/models/
    # builders/base.py, make_genai_config) and src/config.cpp reads them.
    return {
        "model": {
            "bos_token_id": 0,
            "context_length": CONTEXT,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": HEAD_SIZE,
                "hidden_size": HIDDEN,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": HEADS,
                "num_hidden_layers": LAYERS,
                "num_key_value_heads": KV_HEADS,
            },
            "eos_token_id": eos_ids,
            "pad_token_id": SPECIALS.index(PAD),
            "type": "llama",
            "vocab_size": vocab,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": CONTEXT,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # A plain (non-GroupQueryAttention) model: present grows by the new tokens.
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }


# --------------------------------------------------------------------------------------------
# Checks with onnxruntime (the same as tests/python/llm_reference.py, kept local so the
# example builder needs nothing from tests/)
# --------------------------------------------------------------------------------------------


def _empty_past(batch: int) -> dict:
    z = np.zeros((batch, KV_HEADS, 0, HEAD_SIZE), dtype=np.float32)
    return {f"past_key_values.{i}.{k}": z for i in range(LAYERS) for k in ("key", "value")}


def check_model(model_bytes: bytes, tok, eos_ids: list[int]) -> dict:
    """Cache vs full recompute, and a left-padded batch vs sequences alone."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    prompts = ["Hello world, the model", "A", "The stream of tokens in the batch is long and"]
    ids = [tok.encode(p).ids for p in prompts]

    def full(seq: list[int]) -> np.ndarray:
        n = len(seq)
        feeds = {"input_ids": np.array([seq], np.int64), "attention_mask": np.ones((1, n), np.int64),
                 "position_ids": np.arange(n, dtype=np.int64)[None], **_empty_past(1)}
        return sess.run(["logits"], feeds)[0][0, -1]

    # 1. Greedy with the cache equals greedy recomputing everything (12 steps).
    seq = list(ids[0])
    feeds = {"input_ids": np.array([seq], np.int64), "attention_mask": np.ones((1, len(seq)), np.int64),
             "position_ids": np.arange(len(seq), dtype=np.int64)[None], **_empty_past(1)}
    names = [o.name for o in sess.get_outputs()]
    for _ in range(12):
        out = dict(zip(names, sess.run(names, feeds)))
        last = out["logits"][0, -1]
        ref = full(seq)
        assert np.allclose(last, ref, atol=1e-3), f"cache/no-cache mismatch {np.abs(last - ref).max()}"
        nxt = int(np.argmax(last))
        seq.append(nxt)
        feeds = {"input_ids": np.array([[nxt]], np.int64),
                 "attention_mask": np.ones((1, len(seq)), np.int64),
                 "position_ids": np.array([[len(seq) - 1]], np.int64)}
        for i in range(LAYERS):
            for k in ("key", "value"):
                feeds[f"past_key_values.{i}.{k}"] = out[f"present.{i}.{k}"]

    # 2. Left-padded batch prefill equals each prompt alone.
    width = max(len(s) for s in ids)
    batch_ids = np.full((len(ids), width), SPECIALS.index(PAD), np.int64)
    mask = np.zeros((len(ids), width), np.int64)
    pos = np.zeros((len(ids), width), np.int64)
    for b, s in enumerate(ids):
        batch_ids[b, width - len(s):] = s
        mask[b, width - len(s):] = 1
        pos[b, width - len(s):] = np.arange(len(s))
    logits = sess.run(["logits"], {"input_ids": batch_ids, "attention_mask": mask,
                                   "position_ids": pos, **_empty_past(len(ids))})[0]
    for b, s in enumerate(ids):
        alone = full(s)
        assert np.allclose(logits[b, -1], alone, atol=1e-3), "padded batch differs from alone"
        assert int(np.argmax(logits[b, -1])) == int(np.argmax(alone))

    # 3. Decode step time, batch 1, 64 tokens of past.
    step = {"input_ids": np.array([[7]], np.int64), "attention_mask": np.ones((1, 65), np.int64),
            "position_ids": np.array([[64]], np.int64)}
    z = np.zeros((1, KV_HEADS, 64, HEAD_SIZE), np.float32)
    step.update({f"past_key_values.{i}.{k}": z for i in range(LAYERS) for k in ("key", "value")})
    for _ in range(5):
        sess.run(names, step)
    t0 = time.perf_counter()
    n = 50
    for _ in range(n):
        sess.run(names, step)
    return {"decode_step_ms": (time.perf_counter() - t0) / n * 1e3}


# --------------------------------------------------------------------------------------------


def build(out: Path, check: bool = True) -> dict:
    """Write the folder into `out`; returns a summary. Safe to call repeatedly."""
    t0 = time.monotonic()
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    eos_ids = [SPECIALS.index(EOS), SPECIALS.index(IM_END)]
    never = unprintable_tokens(tok)
    model_bytes = build_model(vocab, eos_ids, never)
    files = tokenizer_files(tok)
    files["model.onnx"] = model_bytes
    files["genai_config.json"] = (json.dumps(genai_config(vocab, eos_ids), indent=4) + "\n").encode()
    summary = {"vocab": vocab, "params": None, "never_generated": len(never)}
    if check:
        summary.update(check_model(model_bytes, tok, eos_ids))
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_if_changed(out / name, data)
    m = onnx.load_from_string(model_bytes)
    summary["params"] = int(sum(np.prod(t.dims) for t in m.graph.initializer))
    summary["seconds"] = time.monotonic() - t0
    return summary


def main(argv: list[str]) -> int:
    shape = "tiny"
    if len(argv) == 4 and argv[1] == "--shape" and argv[2] in SHAPES:
        shape = argv[2]
        argv = [argv[0], argv[3]]
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) == 2 else 2
    use_shape(shape)
    s = build(Path(argv[1]).resolve())
    log(f"{shape} model: vocab {s['vocab']}, {s['params'] / 1e6:.1f} M parameters, "
        f"decode step {s.get('decode_step_ms', float('nan')):.2f} ms (batch 1, 1 thread), "
        f"built in {s['seconds']:.1f} s -> {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
