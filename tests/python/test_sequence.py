"""Triton's sequence batcher on tern-node, end to end with the real `tritonclient` (gRPC, HTTP,
and the gRPC stream): the example models of examples/sequence_models.py served by one node for
the module.

Expected outcomes follow Triton's own: the client examples simple_grpc_sequence_sync_infer_client.py,
simple_http_sequence_sync_infer_client.py and simple_grpc_sequence_stream_infer_client.py
(triton-inference-server/client src/python/examples) against a model named `simple_sequence`
(OUTPUT = INPUT + START), and in their -d/--dyna mode against `simple_dyna_sequence` and
`simple_string_dyna_sequence`; the errors of Triton core's sequence batcher
(src/sequence_batch_scheduler/sequence_batch_scheduler.cc, sequence_utils.h) and
infer_request.cc's correlation ID check; a request's timeout in the backlog, cancellation
(server qa/L0_request_cancellation/scheduler_test.py) and priority as Triton treats them; and
model_warmup on a sequence model (server qa/L0_warmup).
"""

from __future__ import annotations

import http.client as http_client
import json
import queue
import shutil
import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tern_testlib import TernServer, copy_models

MODELS = [
    "simple_sequence",
    "seq_accumulate",
    "seq_accumulate_idle",
    "seq_accumulate_oldest",
    "simple_dyna_sequence",
    "simple_string_dyna_sequence",
]

# seq_accumulate's config with Triton-style warmup samples: one naming the control and state
# tensors itself (as Triton requires of a sequence model's sample), one naming only INPUT.
WARMUP = """
model_warmup [
  { name: "as in triton" batch_size: 2 count: 2
    inputs { key: "INPUT" value: { data_type: TYPE_INT32 dims: [ 1 ] random_data: true } }
    inputs { key: "START" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } }
    inputs { key: "READY" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } }
    inputs { key: "CORRID" value: { data_type: TYPE_UINT64 dims: [ 1 ] zero_data: true } }
    inputs { key: "INPUT_STATE" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } }
  },
  { name: "input only" batch_size: 1
    inputs { key: "INPUT" value: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } }
  }
]
"""
# The sequences of Triton's client examples: a START with 0 (100, 20), then these values.
VALUES = [11, 7, 5, 3, 2, 0, 1]


@pytest.fixture(scope="module")
def node(model_repo, tmp_path_factory):
    repo = copy_models(model_repo, tmp_path_factory.mktemp("sequence_repo"), MODELS)
    shutil.copytree(model_repo / "seq_accumulate", repo / "seq_warmup")
    config = (repo / "seq_warmup" / "config.pbtxt").read_text().replace('"seq_accumulate"', '"seq_warmup"')
    (repo / "seq_warmup" / "config.pbtxt").write_text(config + WARMUP)
    srv = TernServer([repo], log_dir=tmp_path_factory.mktemp("sequence_logs"), label="sequence")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def grpc(node):
    c = grpcclient.InferenceServerClient(node.url)
    yield c
    c.close()


@pytest.fixture
def http(node):
    c = httpclient.InferenceServerClient(node.http_addr)
    yield c
    c.close()


def value_input(module, value: int):
    x = module.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[value]], np.int32))
    return [x]


def step(client, module, model, value, sequence_id, start=False, end=False, outputs=("OUTPUT",), **kw):
    r = client.infer(
        model,
        value_input(module, value),
        outputs=[module.InferRequestedOutput(o) for o in outputs],
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
        **kw,
    )
    return r


def send_sequence(client, module, model, values, sequence_id, **kw) -> list[int]:
    """What the examples' sync_send does: START on the first value, END on the last."""
    out = []
    for i, v in enumerate(values):
        r = step(client, module, model, v, sequence_id, start=i == 0, end=i == len(values) - 1, **kw)
        out.append(int(r.as_numpy("OUTPUT")[0][0]))
    return out


def expect_error(fn, *fragments):
    with pytest.raises(InferenceServerException) as e:
        fn()
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return e.value


# === Triton's client examples ================================================================


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_simple_sequence_sync_examples(module, grpc, http):
    """Mirrors simple_grpc_sequence_sync_infer_client.py and
    simple_http_sequence_sync_infer_client.py: two integer sequences and one string (UUID)
    sequence, each sent whole; every answer is the input, plus 1 on the START."""
    client = grpc if module is grpcclient else http
    seq0 = send_sequence(client, module, "simple_sequence", [0] + VALUES, 1000)
    seq1 = send_sequence(client, module, "simple_sequence", [100] + [-v for v in VALUES], 1001)
    text = send_sequence(client, module, "simple_sequence", [20] + [-v for v in VALUES], str(uuid.uuid4()))
    assert seq0 == [1] + VALUES
    assert seq1 == [101] + [-v for v in VALUES]
    assert text == [21] + [-v for v in VALUES]


def test_simple_sequence_stream_example(node):
    """Mirrors simple_grpc_sequence_stream_infer_client.py: two sequences interleaved on one
    gRPC stream, answers matched by request id."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(node.url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    seqs = {1000: [0] + VALUES, 1001: [100] + [-v for v in VALUES]}
    for i in range(len(VALUES) + 1):
        for sid, values in seqs.items():
            client.async_stream_infer(
                "simple_sequence",
                value_input(grpcclient, values[i]),
                request_id=f"{sid}_{i}",
                sequence_id=sid,
                sequence_start=i == 0,
                sequence_end=i == len(VALUES),
            )
    got = {}
    for _ in range(2 * (len(VALUES) + 1)):
        result, error = results.get(timeout=30)
        assert error is None, error
        got[result.get_response().id] = int(result.as_numpy("OUTPUT")[0][0])
    client.stop_stream()
    client.close()
    for sid, values in seqs.items():
        expected = [values[0] + 1] + values[1:]
        assert [got[f"{sid}_{i}"] for i in range(len(values))] == expected


def dyna_expected(int_id: int, string_id: str):
    """What the examples' -d/--dyna checks expect: simple_dyna_sequence answers each input, 1 more
    on the START, plus the correlation ID on the END (the last value, 1); the string model sums
    its inputs (the START's alone) and adds the ID read as a number on the END."""
    ints = [1] + VALUES[:-1] + [VALUES[-1] + int_id]
    sums = list(np.cumsum([20] + [-v for v in VALUES]))
    sums[-1] += int(string_id)
    return ints, [int(x) for x in sums]


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_dyna_sequence_sync_examples(module, grpc, http):
    """Mirrors simple_grpc_sequence_sync_infer_client.py -d and
    simple_http_sequence_sync_infer_client.py -d."""
    client = grpc if module is grpcclient else http
    seq0 = send_sequence(client, module, "simple_dyna_sequence", [0] + VALUES, 1000)
    seq1 = send_sequence(client, module, "simple_dyna_sequence", [100] + [-v for v in VALUES], 1001)
    text = send_sequence(client, module, "simple_string_dyna_sequence", [20] + [-v for v in VALUES], "1002")
    ints, sums = dyna_expected(1000, "1002")
    assert seq0 == ints
    assert seq1 == [101] + [-v for v in VALUES[:-1]] + [-VALUES[-1] + 1001]
    assert text == sums


def test_dyna_sequence_stream_example(node):
    """Mirrors simple_grpc_sequence_stream_infer_client.py -d: three sequences sent whole, one
    after the other, on one stream; answers matched by request id."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(node.url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    seqs = [
        ("simple_dyna_sequence", 1002, [0] + VALUES),
        ("simple_dyna_sequence", 1003, [100] + [-v for v in VALUES]),
        ("simple_string_dyna_sequence", "1004", [20] + [-v for v in VALUES]),
    ]
    for model, sid, values in seqs:
        for i, v in enumerate(values):
            client.async_stream_infer(
                model,
                value_input(grpcclient, v),
                request_id=f"{sid}_{i}",
                sequence_id=sid,
                sequence_start=i == 0,
                sequence_end=i == len(values) - 1,
            )
    got = {}
    for _ in range(3 * (len(VALUES) + 1)):
        result, error = results.get(timeout=30)
        assert error is None, error
        got[result.get_response().id] = int(result.as_numpy("OUTPUT")[0][0])
    client.stop_stream()
    client.close()
    answers = [[got[f"{sid}_{i}"] for i in range(len(VALUES) + 1)] for _, sid, _ in seqs]
    ints, sums = dyna_expected(1002, "1004")
    assert answers[0] == ints
    assert answers[1][-1] == -1 + 1003
    assert answers[2] == sums


def test_a_string_id_the_string_dyna_model_cannot_read_fails(grpc):
    """Triton's dyna_sequence backend parses the ID with std::stoi and fails a request whose ID
    is not a number; the ONNX model's string Cast fails alike (ONNX Runtime's stoll)."""
    expect_error(lambda: step(grpc, grpcclient, "simple_string_dyna_sequence", 1, "abc", start=True, end=True))


# === running sums with implicit state ========================================================


def run_concurrently(fns):
    out: dict = {}

    def wrap(key, f):
        try:
            out[key] = f()
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            out[key] = e

    threads = [threading.Thread(target=wrap, args=(k, f)) for k, f in fns.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def running_sum(client, model, sequence_id, values):
    """Sends a sequence; returns (outputs, correlation IDs echoed, READY echoed)."""
    outs, ids, ready = [], [], []
    for i, v in enumerate(values):
        r = step(client, grpcclient, model, v, sequence_id, start=i == 0, end=i == len(values) - 1,
                 outputs=("OUTPUT", "CORRID_OUT", "READY_OUT"))
        outs.append(int(r.as_numpy("OUTPUT")[0][0]))
        cid = r.as_numpy("CORRID_OUT")[0][0]
        ids.append(cid.decode() if isinstance(cid, bytes) else int(cid))
        ready.append(int(r.as_numpy("READY_OUT")[0][0]))
    return outs, ids, ready


@pytest.mark.parametrize(
    "model,ids",
    [("seq_accumulate", [7, 8]), ("seq_accumulate_oldest", ["alpha", "beta", "gamma", "delta"])],
    ids=["direct-int-ids", "oldest-string-ids"],
)
def test_interleaved_sequences_keep_their_own_running_sum(node, model, ids):
    values = {sid: [(k + 1) * (i + 1) for i in range(12)] for k, sid in enumerate(ids)}

    def one(sid):
        c = grpcclient.InferenceServerClient(node.url)
        try:
            return running_sum(c, model, sid, values[sid])
        finally:
            c.close()

    out = run_concurrently({sid: (lambda sid=sid: one(sid)) for sid in ids})
    for sid in ids:
        assert not isinstance(out[sid], Exception), out[sid]
        sums, echoed, ready = out[sid]
        assert sums == list(np.cumsum(values[sid])), (sid, sums)
        assert echoed == [sid] * len(sums), "CORRID carries the sequence's own ID"
        assert ready == [1] * len(sums)


def test_start_resets_the_state(grpc):
    assert running_sum(grpc, "seq_accumulate", 31, [5, 6])[0] == [5, 11]
    # The same ID again: START begins from the initial state (zero_data), not from 11.
    assert running_sum(grpc, "seq_accumulate", 31, [1, 2, 3])[0] == [1, 3, 6]


def test_a_full_slot_table_queues_the_next_sequence(node, grpc):
    """seq_accumulate has 2 slots (max_batch_size 2, one instance): a third sequence waits in the
    backlog until one of the others ends, then runs with its own state (Triton's backlog)."""
    step(grpc, grpcclient, "seq_accumulate", 1, 41, start=True)
    step(grpc, grpcclient, "seq_accumulate", 1, 42, start=True)
    done: queue.Queue = queue.Queue()

    def third():
        c = grpcclient.InferenceServerClient(node.url)
        try:
            done.put(running_sum(c, "seq_accumulate", 43, [10, 20])[0])
        except Exception as e:  # noqa: BLE001
            done.put(e)
        finally:
            c.close()

    worker = threading.Thread(target=third)
    worker.start()
    time.sleep(0.3)
    assert done.empty(), "the third sequence ran while both slots were held"
    r = step(grpc, grpcclient, "seq_accumulate", 5, 41, end=True)
    assert int(r.as_numpy("OUTPUT")[0][0]) == 6
    assert done.get(timeout=30) == [10, 30]
    worker.join(10)
    r = step(grpc, grpcclient, "seq_accumulate", 2, 42, end=True)
    assert int(r.as_numpy("OUTPUT")[0][0]) == 3


def test_http_parameters_reach_the_sequence_batcher(http):
    outs = []
    for i, v in enumerate([4, 5, 6]):
        r = step(http, httpclient, "seq_accumulate", v, 51, start=i == 0, end=i == 2)
        outs.append(int(r.as_numpy("OUTPUT")[0][0]))
    assert outs == [4, 9, 15]


# === Triton's errors =========================================================================


def test_triton_errors(grpc, http):
    for client, module in ((grpc, grpcclient), (http, httpclient)):
        expect_error(
            lambda: client.infer("seq_accumulate", value_input(module, 1)),
            "inference request to model 'seq_accumulate' must specify a non-zero or non-empty correlation ID",
        )
        expect_error(
            lambda: step(client, module, "seq_accumulate", 1, 999),
            "inference request for sequence 999 to model 'seq_accumulate' must specify the START flag "
            "on the first request of the sequence",
        )
    expect_error(
        lambda: step(grpc, grpcclient, "seq_accumulate", 1, "abc", start=True),
        "sequence batching control 'CORRID' data-type is 'BYTES', but model 'seq_accumulate' expects 'UINT64'",
    )
    expect_error(
        lambda: step(grpc, grpcclient, "seq_accumulate_oldest", 1, 12, start=True),
        "sequence batching control 'CORRID' data-type is 'UINT64', but model 'seq_accumulate_oldest' "
        "expects 'BYTES'",
    )
    x = grpcclient.InferInput("INPUT", [2, 1], "INT32")
    x.set_data_from_numpy(np.array([[1], [2]], np.int32))
    expect_error(
        lambda: grpc.infer("seq_accumulate", [x], sequence_id=5, sequence_start=True),
        "must specify batch-size 1 due to requirements of sequence batcher",
    )


def test_an_idle_sequence_is_released(grpc):
    """max_sequence_idle_microseconds (200 ms here): the reaper frees the slot of a sequence with
    no request for that long; its next request without START is refused."""
    assert running_sum(grpc, "seq_accumulate_idle", 61, [3])[0] == [3]  # START and END at once
    step(grpc, grpcclient, "seq_accumulate_idle", 3, 62, start=True)
    time.sleep(0.8)
    expect_error(
        lambda: step(grpc, grpcclient, "seq_accumulate_idle", 1, 62),
        "inference request for sequence 62 to model 'seq_accumulate_idle' must specify the START flag",
    )
    # Both slots are free again: two new sequences run at once.
    assert int(step(grpc, grpcclient, "seq_accumulate_idle", 7, 63, start=True).as_numpy("OUTPUT")[0][0]) == 7
    assert int(step(grpc, grpcclient, "seq_accumulate_idle", 8, 64, start=True).as_numpy("OUTPUT")[0][0]) == 8


# === timeout, priority, cancellation ========================================================


def hold_both_slots(grpc, first: int):
    """seq_accumulate's two slots, held by sequences `first` and `first + 1`."""
    step(grpc, grpcclient, "seq_accumulate", 1, first, start=True)
    step(grpc, grpcclient, "seq_accumulate", 1, first + 1, start=True)


def release_both_slots(grpc, first: int):
    for sid in (first, first + 1):
        step(grpc, grpcclient, "seq_accumulate", 1, sid, end=True)


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_a_timeout_refuses_a_sequence_waiting_in_the_backlog(module, grpc, http):
    """Triton's reaper refuses a backlog queue once the earliest timeout of its requests has
    passed (UNAVAILABLE, "timeout of the corresponding sequence has been expired") and forgets
    the sequence; a request waiting in a slot has no such deadline."""
    client = grpc if module is grpcclient else http
    hold_both_slots(grpc, 101)
    try:
        expect_error(
            lambda: step(client, module, "seq_accumulate", 5, 103, start=True, timeout=200_000),
            "timeout of the corresponding sequence has been expired",
        )
        expect_error(
            lambda: step(client, module, "seq_accumulate", 5, 103),
            "inference request for sequence 103 to model 'seq_accumulate' must specify the START flag",
        )
    finally:
        release_both_slots(grpc, 101)
    # With a slot free, the same timeout is no bound: the sequence runs.
    assert send_sequence(client, module, "seq_accumulate", [5, 6], 103, timeout=200_000) == [5, 11]


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_priority_is_accepted_and_ignored(module, grpc, http):
    """A model without dynamic_batching has no priority levels: Triton turns every request's
    priority into the default (core infer_request.cc SetPriority), and so does Tern."""
    client = grpc if module is grpcclient else http
    assert send_sequence(client, module, "seq_accumulate", [2, 3, 4], 111, priority=7) == [2, 5, 9]
    assert send_sequence(client, module, "seq_accumulate_oldest", [1, 1], "p", priority=1) == [1, 2]


def cancel_grpc(node, sid):
    c = grpcclient.InferenceServerClient(node.url)
    call = c.async_infer(
        "seq_accumulate", value_input(grpcclient, 9), lambda result, error: None, sequence_id=sid, sequence_start=True
    )
    time.sleep(0.3)
    call.cancel()
    return c


def cancel_stream(node, sid):
    c = grpcclient.InferenceServerClient(node.url)
    c.start_stream(callback=lambda result, error: None)
    c.async_stream_infer("seq_accumulate", value_input(grpcclient, 9), sequence_id=sid, sequence_start=True)
    time.sleep(0.3)
    c.stop_stream(cancel_requests=True)
    return c


def cancel_http(node, sid):
    """An HTTP client that closes its connection while its request waits."""
    body = json.dumps({
        "parameters": {"sequence_id": sid, "sequence_start": True},
        "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [9]}],
    })
    host, port = node.http_addr.rsplit(":", 1)
    conn = http_client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v2/models/seq_accumulate/infer", body, {"Content-Type": "application/json"})
    time.sleep(0.3)
    conn.close()
    return None


@pytest.mark.parametrize("cancel", [cancel_grpc, cancel_stream, cancel_http], ids=["grpc", "stream", "http"])
def test_a_cancelled_request_cancels_its_sequence(node, grpc, cancel):
    """As in Triton (server qa/L0_request_cancellation, sequence_batch_scheduler.cc
    ReleaseSequenceSlot): a backlogged sequence one of whose requests was cancelled is cancelled
    whole when a slot frees: its other requests get CANCELLED, the slot goes to the next
    sequence, and the cancelled one must START again."""
    hold_both_slots(grpc, 121)
    answers: queue.Queue = queue.Queue()
    client = None
    try:
        client = cancel(node, 123)
        # The cancelled sequence's next request joins it in the backlog; 124 waits behind it.
        def answer(key):
            return lambda result, error: answers.put((key, result, error))

        grpc.async_infer("seq_accumulate", value_input(grpcclient, 1), answer("123"), sequence_id=123)
        grpc.async_infer(
            "seq_accumulate", value_input(grpcclient, 40), answer("124"), sequence_id=124, sequence_start=True
        )
        time.sleep(0.3)
        assert answers.empty(), "nothing runs while both slots are held"
        step(grpc, grpcclient, "seq_accumulate", 1, 121, end=True)
        got = {k: (r, e) for k, r, e in (answers.get(timeout=30), answers.get(timeout=30))}
        result, error = got["123"]
        assert result is None and error.status() == "StatusCode.CANCELLED", error
        result, error = got["124"]
        assert error is None and int(result.as_numpy("OUTPUT")[0][0]) == 40
        expect_error(
            lambda: step(grpc, grpcclient, "seq_accumulate", 1, 123),
            "inference request for sequence 123 to model 'seq_accumulate' must specify the START flag",
        )
    finally:
        for sid in (122, 124):
            try:
                step(grpc, grpcclient, "seq_accumulate", 1, sid, end=True)
            except InferenceServerException:
                pass
        if client is not None:
            client.close()


def test_model_warmup_on_a_sequence_model(grpc):
    """The samples run past the sequence batcher (Triton's warmup): the model loads, and its
    first sequence starts from the initial state."""
    assert grpc.is_model_ready("seq_warmup")
    assert running_sum(grpc, "seq_warmup", 131, [4, 5])[0] == [4, 9]


def test_statistics_count_sequence_requests(grpc):
    before = grpc.get_inference_statistics("seq_accumulate", as_json=True)["model_stats"][0]
    running_sum(grpc, "seq_accumulate", 71, [1, 2, 3])
    after = grpc.get_inference_statistics("seq_accumulate", as_json=True)["model_stats"][0]
    count = lambda s, k: int(s.get(k, 0))  # noqa: E731
    assert count(after, "inference_count") - count(before, "inference_count") == 3
    success = lambda s: int(s["inference_stats"].get("success", {}).get("count", 0))  # noqa: E731
    assert success(after) - success(before) == 3
    assert count(after, "execution_count") - count(before, "execution_count") == 3
