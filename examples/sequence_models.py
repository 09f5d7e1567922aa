"""Stateful example models for Triton's sequence batcher (called by build_model_repository.py).

  simple_sequence        OUTPUT = INPUT + START: what Triton's client examples
                         simple_{grpc,http}_sequence_*_client.py expect of the model of that
                         name (1 on a START with 0, then each input as sent). Controls START and
                         READY (INT32), no CORRID, so integer and string sequence IDs both work.
                         Direct strategy, max_batch_size 8.
  seq_accumulate         a running sum per sequence with implicit state: INPUT_STATE ->
                         OUTPUT_STATE, OUTPUT = (START ? 0 : INPUT_STATE) + INPUT; CORRID (UINT64)
                         echoed as CORRID_OUT and READY as READY_OUT. Direct, max_batch_size 2,
                         one instance: two slots, so a third sequence waits in the backlog.
  seq_accumulate_idle    seq_accumulate's model with max_sequence_idle_microseconds 200000.
  seq_accumulate_oldest  the same sum with a STRING CORRID; Oldest strategy (4 candidate
                         sequences, preferred batch size 2, 2 ms max queue delay), max_batch_size 4.
  simple_dyna_sequence   Triton's example of that name (server docs/examples/model_repository):
                         OUTPUT = READY * (INPUT + START + END * CORRID), CORRID UINT64, the same
                         graph as Triton's model.onnx; Oldest, max_batch_size 8, two instances.
                         What the client examples' -d/--dyna mode expects of it.
  simple_string_dyna_sequence
                         what Triton's qa builds under that name (simple_dyna_sequence's config
                         with a STRING CORRID, served by its dyna_sequence test backend,
                         server src/test/dyna_sequence): a running sum per sequence, START sets
                         it to INPUT, END adds the correlation ID read as an integer (the
                         backend's std::stoi; ONNX's string Cast parses alike), here with implicit
                         state instead of the backend's own map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8


def _model(nodes, inputs, outputs, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _vi(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["N", 1])


def simple_sequence_bytes() -> bytes:
    i32 = TensorProto.INT32
    return _model(
        [helper.make_node("Add", ["INPUT", "START"], ["OUTPUT"])],
        [_vi("INPUT", i32), _vi("START", i32), _vi("READY", i32)],
        [_vi("OUTPUT", i32)],
        "simple_sequence",
    )


def accumulate_bytes(corrid_elem: int) -> bytes:
    i32 = TensorProto.INT32
    one = helper.make_tensor("one", i32, [], [1])
    nodes = [
        helper.make_node("Constant", [], ["ONE"], value=one),
        helper.make_node("Sub", ["ONE", "START"], ["KEEP"]),
        helper.make_node("Mul", ["INPUT_STATE", "KEEP"], ["KEPT"]),
        helper.make_node("Add", ["KEPT", "INPUT"], ["SUM"]),
        helper.make_node("Identity", ["SUM"], ["OUTPUT"]),
        helper.make_node("Identity", ["SUM"], ["OUTPUT_STATE"]),
        helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
        helper.make_node("Identity", ["READY"], ["READY_OUT"]),
    ]
    return _model(
        nodes,
        [_vi("INPUT", i32), _vi("START", i32), _vi("READY", i32), _vi("CORRID", corrid_elem), _vi("INPUT_STATE", i32)],
        [_vi("OUTPUT", i32), _vi("OUTPUT_STATE", i32), _vi("CORRID_OUT", corrid_elem), _vi("READY_OUT", i32)],
        "accumulate",
    )


def _check(model: bytes, corrid: np.ndarray) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feeds = {
        "INPUT": np.array([[5], [7]], np.int32),
        "START": np.array([[1], [0]], np.int32),
        "READY": np.array([[1], [1]], np.int32),
        "CORRID": corrid,
        "INPUT_STATE": np.array([[9], [10]], np.int32),
    }
    out, state, cid, _ = sess.run(None, feeds)
    assert out.tolist() == [[5], [17]] and state.tolist() == out.tolist(), out
    assert cid.tolist() == corrid.tolist()


def dyna_sequence_bytes() -> bytes:
    """Triton's simple_dyna_sequence/1/model.onnx, node for node."""
    i32 = TensorProto.INT32
    nodes = [
        helper.make_node("Identity", ["INPUT"], ["_INPUT"]),
        helper.make_node("Cast", ["CORRID"], ["CORRID_I32"], to=i32),
        helper.make_node("Add", ["_INPUT", "START"], ["ADD0"]),
        helper.make_node("Mul", ["END", "CORRID_I32"], ["MUL0"]),
        helper.make_node("Add", ["ADD0", "MUL0"], ["SUM0"]),
        helper.make_node("Mul", ["READY", "SUM0"], ["CAST"]),
        helper.make_node("Cast", ["CAST"], ["OUTPUT"], to=i32),
    ]
    controls = [_vi(n, i32) for n in ("INPUT", "START", "END", "READY")]
    return _model(nodes, controls + [_vi("CORRID", TensorProto.UINT64)], [_vi("OUTPUT", i32)], "dyna_sequence")


def string_dyna_sequence_bytes() -> bytes:
    """The dyna_sequence backend's accumulator (ModelInstanceExecute): with READY, START sets it
    to INPUT, otherwise INPUT is added; END adds the correlation ID (a decimal string, parsed);
    the output is the accumulator."""
    i32 = TensorProto.INT32
    one = helper.make_tensor("one", i32, [], [1])
    nodes = [
        helper.make_node("Constant", [], ["ONE"], value=one),
        helper.make_node("Cast", ["CORRID"], ["CORRID_I64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["CORRID_I64"], ["CORRID_I32"], to=i32),
        helper.make_node("Sub", ["ONE", "START"], ["KEEP"]),
        helper.make_node("Mul", ["ACCUMULATOR", "KEEP"], ["KEPT"]),
        helper.make_node("Add", ["KEPT", "INPUT"], ["ADDED"]),
        helper.make_node("Mul", ["END", "CORRID_I32"], ["ENDING"]),
        helper.make_node("Add", ["ADDED", "ENDING"], ["SUM"]),
        helper.make_node("Mul", ["READY", "SUM"], ["OUTPUT"]),
        helper.make_node("Identity", ["SUM"], ["ACCUMULATOR_OUT"]),
    ]
    inputs = [_vi(n, i32) for n in ("INPUT", "START", "END", "READY")]
    inputs += [_vi("CORRID", TensorProto.STRING), _vi("ACCUMULATOR", i32)]
    return _model(nodes, inputs, [_vi("OUTPUT", i32), _vi("ACCUMULATOR_OUT", i32)], "string_dyna_sequence")


def _check_dyna(int_model: bytes, string_model: bytes) -> None:
    import onnxruntime as ort

    rows = lambda *v: np.array([[x] for x in v], np.int32)  # noqa: E731
    controls = {
        "INPUT": rows(0, 7, 1, 9),
        "START": rows(1, 0, 0, 0),
        "END": rows(0, 0, 1, 1),
        "READY": rows(1, 1, 1, 0),
    }
    sess = ort.InferenceSession(int_model, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {**controls, "CORRID": np.array([[1000]] * 4, np.uint64)})
    assert out.ravel().tolist() == [1, 7, 1001, 0], out
    sess = ort.InferenceSession(string_model, providers=["CPUExecutionProvider"])
    feeds = {**controls, "CORRID": np.array([["1002"]] * 4, object), "ACCUMULATOR": rows(50, 20, 13, 5)}
    out, acc = sess.run(None, feeds)
    assert out.ravel().tolist() == [0, 27, 1016, 0] and acc.ravel().tolist()[:3] == [0, 27, 1016], (out, acc)


# Triton's server docs/examples/model_repository/simple_dyna_sequence/config.pbtxt (its license
# header aside); simple_string_dyna_sequence is that config as Triton's qa (L0_grpc, L0_http
# test.sh) rewrites it: renamed, CORRID TYPE_STRING; here with the accumulator as implicit state.
DYNA_CONFIG = """name: "{name}"
{runtime}
max_batch_size: 8
sequence_batching {{
    max_sequence_idle_microseconds: 10000000
    oldest {{
      max_candidate_sequences: 1024
      max_queue_delay_microseconds: 10000
    }}

  control_input [
    {{
      name: "START"
      control [
        {{
          kind: CONTROL_SEQUENCE_START
          int32_false_true: [ 0, 1 ]
        }}
      ]
    }},
    {{
      name: "END"
      control [
        {{
          kind: CONTROL_SEQUENCE_END
          int32_false_true: [ 0, 1 ]
        }}
      ]
    }},
    {{
      name: "READY"
      control [
        {{
          kind: CONTROL_SEQUENCE_READY
          int32_false_true: [ 0, 1 ]
        }}
      ]
    }},
    {{
      name: "CORRID"
      control [
        {{
          kind: CONTROL_SEQUENCE_CORRID
          data_type: {corrid}
        }}
      ]
    }}
  ]
{state}}}
input [
  {{
    name: "INPUT"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "OUTPUT"
    data_type: TYPE_INT32
    dims: [ 1 ]
  }}
]
parameters [
  {{
    key: "execute_delay_ms"
    value: {{ string_value: "3" }}
  }}
]
instance_group [
  {{
    count: 2
    kind: KIND_CPU
  }}
]
"""

DYNA_STATE = """  state [ {
    input_name: "ACCUMULATOR" output_name: "ACCUMULATOR_OUT" data_type: TYPE_INT32 dims: [ 1 ]
    initial_state: { name: "zero" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }
  } ]
"""


CONTROLS = """  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }}{corrid}
  ]
"""

CORRID = """,
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {type} }} ] }}"""

STATE = """  state [ {
    input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ]
    initial_state: { name: "zero" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }
  } ]
"""


def _config(name: str, max_batch: int, outputs: list[str], corrid: str | None, state: bool, extra: str) -> str:
    outs = ",\n".join(
        f'  {{ name: "{o}" data_type: {"TYPE_STRING" if o == "CORRID_OUT" and corrid == "TYPE_STRING" else ("TYPE_UINT64" if o == "CORRID_OUT" else "TYPE_INT32")} dims: [ 1 ] }}'
        for o in outputs
    )
    controls = CONTROLS.format(corrid=CORRID.format(type=corrid) if corrid else "")
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
        f'input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]\n'
        f"output [\n{outs}\n]\n"
        f"sequence_batching {{\n{extra}{controls}{STATE if state else ''}}}\n"
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
    )


def build(out: Path, install: Callable[[Path, str, bytes, str], None], built: list) -> None:
    install(
        out,
        "simple_sequence",
        simple_sequence_bytes(),
        _config("simple_sequence", 8, ["OUTPUT"], None, False, "  max_sequence_idle_microseconds: 5000000\n"),
    )
    outputs = ["OUTPUT", "CORRID_OUT", "READY_OUT"]
    direct = accumulate_bytes(TensorProto.UINT64)
    _check(direct, np.array([[3], [4]], np.uint64))
    install(
        out,
        "seq_accumulate",
        direct,
        _config("seq_accumulate", 2, outputs, "TYPE_UINT64", True, "  direct { }\n  max_sequence_idle_microseconds: 5000000\n"),
    )
    install(
        out,
        "seq_accumulate_idle",
        direct,
        _config("seq_accumulate_idle", 2, outputs, "TYPE_UINT64", True, "  max_sequence_idle_microseconds: 200000\n"),
    )
    oldest = accumulate_bytes(TensorProto.STRING)
    _check(oldest, np.array([["a"], ["b"]], object))
    install(
        out,
        "seq_accumulate_oldest",
        oldest,
        _config(
            "seq_accumulate_oldest",
            4,
            outputs,
            "TYPE_STRING",
            True,
            "  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 2000 }\n"
            "  max_sequence_idle_microseconds: 5000000\n",
        ),
    )
    dyna, string_dyna = dyna_sequence_bytes(), string_dyna_sequence_bytes()
    _check_dyna(dyna, string_dyna)
    install(
        out,
        "simple_dyna_sequence",
        dyna,
        DYNA_CONFIG.format(
            name="simple_dyna_sequence", runtime='platform: "onnxruntime_onnx"', corrid="TYPE_UINT64", state=""
        ),
    )
    install(
        out,
        "simple_string_dyna_sequence",
        string_dyna,
        DYNA_CONFIG.format(
            name="simple_string_dyna_sequence",
            runtime='backend: "onnxruntime"',
            corrid="TYPE_STRING",
            state=DYNA_STATE,
        ),
    )
    built.append(
        (
            "simple_sequence, seq_accumulate*, *dyna_sequence",
            "stateful (sequence batcher: Direct, Oldest, implicit state)",
            "config.pbtxt",
        )
    )
