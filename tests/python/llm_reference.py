"""The reference for generation tests: a plain onnxruntime greedy loop on a model folder in ONNX
Runtime GenAI's layout (genai_config.json, model.onnx, tokenizer.json, tokenizer_config.json).

One sequence, no padding, the KV cache fed back step by step; the prompt is tokenized with the
folder's tokenizer.json (its post-processor adds BOS, as tokenizer_config.json's add_bos_token
says). Nothing here knows Tern: the end-to-end tests compare Tern's token ids with these.

    from llm_reference import Reference
    ref = Reference(folder)
    ids = ref.greedy("Hello world", max_tokens=64)        # generated ids, EOS excluded
    text = ref.decode(ids)

Also usable from the command line: `python tests/python/llm_reference.py FOLDER "prompt" [N]`
prints the generated ids and text (and, with `--genai`, onnxruntime-genai's ids beside them).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort


# Prompts the tests and the benchmark share: 16 prompts of 2 to 90 tokens whose greedy runs on
# examples/build_tiny_llm.py's model keep a top-1 margin of at least 0.01 all the way to EOS
# (about 100x the rounding difference between a padded batch and a sequence alone).
_WORDS = (
    "Tern serves language models token by token over the stream while the batch grows and "
    "shrinks between decode steps so a long generation never holds up a short one and every "
    "client sees its text as soon as it is made by the model"
).split()
PROMPTS = [
    "Tern",
    "Grüße aus Zürich",
    "1 2 3 4",
    "What is a cache?",
    '{"key": "value"}',
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
] + [" ".join(_WORDS[:n]) for n in (4, 5, 10, 12, 16, 18, 22, 24, 32, 37)]


@dataclass
class GreedyResult:
    prompt_ids: list[int]
    ids: list[int]  # generated, the stopping EOS excluded
    finish_reason: str  # "stop" (EOS) or "length" (max_tokens or the context)
    margins: list[float] = field(default_factory=list)  # top1 - top2 logit at each step


class Reference:
    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        cfg = json.loads((self.folder / "genai_config.json").read_text())
        model = cfg["model"]
        dec = model["decoder"]
        self.context = int(model["context_length"])
        eos = model["eos_token_id"]
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.layers = int(dec["num_hidden_layers"])
        self.kv_heads = int(dec["num_key_value_heads"])
        self.head_size = int(dec["head_size"])
        self.names_in = dec["inputs"]
        self.names_out = dec["outputs"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.folder / dec.get("filename", "model.onnx")), opts, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tcfg = json.loads((self.folder / "tokenizer_config.json").read_text())
        self.tokenizer_config = tcfg
        self.output_names = [o.name for o in self.session.get_outputs()]

    # --- tokenizer ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Prompt ids as a server tokenizes them: with the post-processor's BOS."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --- the loop -----------------------------------------------------------------------------

    def _past_names(self, layer: int) -> tuple[str, str]:
        return self.names_in["past_key_names"] % layer, self.names_in["past_value_names"] % layer

    def _present_names(self, layer: int) -> tuple[str, str]:
        return self.names_out["present_key_names"] % layer, self.names_out["present_value_names"] % layer

    def step(self, ids: list[int], past: dict | None, past_len: int) -> tuple[np.ndarray, dict]:
        """One forward pass of `ids` after `past_len` cached tokens: last logits, new cache."""
        n = len(ids)
        feeds = {
            self.names_in["input_ids"]: np.array([ids], dtype=np.int64),
            self.names_in["attention_mask"]: np.ones((1, past_len + n), dtype=np.int64),
            self.names_in["position_ids"]: np.arange(past_len, past_len + n, dtype=np.int64)[None],
        }
        for layer in range(self.layers):
            pk, pv = self._past_names(layer)
            if past is None:
                empty = np.zeros((1, self.kv_heads, 0, self.head_size), dtype=np.float32)
                feeds[pk], feeds[pv] = empty, empty
            else:
                feeds[pk], feeds[pv] = past[layer]
        out = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        cache = {layer: tuple(out[n] for n in self._present_names(layer)) for layer in range(self.layers)}
        return out[self.names_out["logits"]][0, -1], cache

    def greedy_ids(self, prompt_ids: list[int], max_tokens: int, ignore_eos: bool = False) -> GreedyResult:
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) > self.context:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens is longer than the context {self.context}")
        out: list[int] = []
        margins: list[float] = []
        past = None
        pending = list(prompt_ids)
        total = 0
        reason = "length"
        while len(out) < max_tokens and total + len(pending) <= self.context:
            logits, past = self.step(pending, past, total)
            total += len(pending)
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(abs(top2[1] - top2[0])))
            nxt = int(np.argmax(logits))
            if nxt in self.eos_ids and not ignore_eos:
                reason = "stop"
                break
            out.append(nxt)
            pending = [nxt]
            if total + 1 > self.context:
                break
        return GreedyResult(list(prompt_ids), out, reason, margins)

    def greedy_batch(self, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
        """Greedy for several prompts in one left-padded batch (the layout Tern's engine uses:
        the valid positions of a row are its last columns), `max_tokens` each, EOS not treated
        specially. Returns the ids per prompt and the largest |logit| seen."""
        b = len(prompts)
        width = max(len(p) for p in prompts)
        pad = 0
        ids = np.full((b, width), pad, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        pos = np.zeros((b, width), dtype=np.int64)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
            pos[r, width - len(p):] = np.arange(len(p))
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        feeds = {self.names_in["input_ids"]: ids, self.names_in["attention_mask"]: mask,
                 self.names_in["position_ids"]: pos}
        for layer in range(self.layers):
            for name in self._past_names(layer):
                feeds[name] = np.zeros((b, self.kv_heads, 0, self.head_size), dtype=np.float32)
        out_ids: list[list[int]] = [[] for _ in range(b)]
        biggest = 0.0
        for _ in range(max_tokens):
            out = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
            logits = out[self.names_out["logits"]][:, -1]
            biggest = max(biggest, float(np.abs(logits).max()))
            nxt = logits.argmax(axis=-1)
            for r in range(b):
                out_ids[r].append(int(nxt[r]))
            mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
            feeds = {self.names_in["input_ids"]: nxt[:, None].astype(np.int64),
                     self.names_in["attention_mask"]: mask,
                     self.names_in["position_ids"]: lengths[:, None].copy()}
            lengths += 1
            for layer in range(self.layers):
                for pn, qn in zip(self._past_names(layer), self._present_names(layer)):
                    feeds[pn] = out[qn]
        return out_ids, biggest

    def greedy(self, prompt: str, max_tokens: int, ignore_eos: bool = False) -> list[int]:
        return self.greedy_ids(self.encode(prompt), max_tokens, ignore_eos).ids

    def greedy_text(self, prompt: str, max_tokens: int) -> str:
        return self.decode(self.greedy(prompt, max_tokens))


def genai_greedy(folder: str | Path, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy ids from PyPI onnxruntime-genai's `og.Generator` on the same folder and prompt ids
    (EOS excluded), for comparing with `Reference.greedy_ids`."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + max_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(prompt_ids, dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    seq = [int(t) for t in gen.get_sequence(0)]
    out = seq[len(prompt_ids):]
    cfg = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos = set(cfg if isinstance(cfg, list) else [cfg])
    for i, t in enumerate(out):
        if t in eos:
            return out[:i]
    return out


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("--")]
    if len(args) < 2:
        print(__doc__)
        return 2
    folder, prompt = args[0], args[1]
    n = int(args[2]) if len(args) > 2 else 32
    ref = Reference(folder)
    r = ref.greedy_ids(ref.encode(prompt), n)
    print("prompt ids:", r.prompt_ids)
    print("greedy ids:", r.ids, r.finish_reason)
    print("text:", repr(ref.decode(r.ids)))
    print("smallest top1-top2 margin:", min(r.margins))
    if "--genai" in argv:
        g = genai_greedy(folder, r.prompt_ids, n)
        print("genai ids: ", g)
        print("equal:", g == r.ids)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
