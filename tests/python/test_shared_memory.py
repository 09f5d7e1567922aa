"""Client system shared memory (Triton's shared-memory extension) with --allow-client-shm=true,
through tritonclient's own `tritonclient.utils.shared_memory` over gRPC and HTTP, on tern-node,
`tern serve` and tern-router (which reads and writes regions itself, in front of a node that has
client shared memory off). The disabled default is tested in test_health_metadata.py and
test_http.py."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tern_clusterlib import NodeProc, RouterProc, wait_until
from tern_testlib import ROOT, TernServer, copy_models

ALLOW = ["--allow-client-shm=true"]


class Serve(TernServer):
    ready_mark = "tern ready"

    def binary(self):
        return ROOT / "target" / "release" / "tern"

    def command(self):
        return [str(self.binary()), "serve", *super().command()[1:]]


@pytest.fixture(scope="module", params=["tern-node", "tern serve", "tern-router"])
def shm_server(request, model_repo, tmp_path_factory):
    """One server per kind for the module; yields (grpc url, http address)."""
    repo = copy_models(model_repo, tmp_path_factory.mktemp("shm_repo"), ["simple", "identity_fp32"])
    logs = tmp_path_factory.mktemp("shm_logs")
    procs = []
    try:
        if request.param == "tern-node":
            procs.append(TernServer([repo], ALLOW, log_dir=logs, label="shm-node").start())
        elif request.param == "tern serve":
            procs.append(Serve([repo], ALLOW, log_dir=logs, label="shm-serve").start())
        else:
            # The node behind keeps client shared memory off: the router serves regions itself.
            node = NodeProc(repo, log_dir=logs, label="shm-node-behind").start()
            procs.append(node)
            procs.append(RouterProc(["--node", node.addr, *ALLOW], log_dir=logs, label="shm-router").start())
        front = procs[-1]
        with grpcclient.InferenceServerClient(front.url) as c:
            wait_until(lambda: c.is_model_ready("simple"), 15, "model simple ready through the router")
        http_addr = front.http_addr or f"127.0.0.1:{front.http_port}"
        yield front.url, http_addr
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(params=["grpc", "http"])
def client(request, shm_server):
    url, http_addr = shm_server
    c = grpcclient.InferenceServerClient(url) if request.param == "grpc" else httpclient.InferenceServerClient(http_addr)
    # Start clean, as Triton's examples do (CUDA's unregister succeeds with no GPU).
    c.unregister_system_shared_memory()
    c.unregister_cuda_shared_memory()
    yield request.param, c
    c.unregister_system_shared_memory()
    c.close()


class Regions:
    """POSIX shared-memory objects made with tritonclient's own helpers; destroyed at exit."""

    def __init__(self):
        self.handles = []

    def create(self, key: str, size: int):
        handle = shm.create_shared_memory_region(key.strip("/"), key, size)
        self.handles.append(handle)
        return handle

    def close(self):
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions():
    r = Regions()
    yield r
    r.close()


def mod(protocol):
    return grpcclient if protocol == "grpc" else httpclient


def region_names(protocol, client) -> list[str]:
    status = client.get_system_shared_memory_status()
    if protocol == "grpc":
        return sorted(status.regions.keys())
    return sorted(r["name"] for r in status)


def error_text(fn) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.message()


def test_simple_shm_client_example(client, regions):
    # What Triton's src/python/examples/simple_grpc_shm_client.py and simple_http_shm_client.py
    # do: inputs and outputs of model `simple` in two system shared-memory regions.
    protocol, c = client
    m = mod(protocol)
    input0 = np.arange(16, dtype=np.int32)
    input1 = np.ones(16, dtype=np.int32)
    size = input0.nbytes
    out = regions.create("/output_simple", size * 2)
    inp = regions.create("/input_simple", size * 2)
    shm.set_shared_memory_region(inp, [input0])
    shm.set_shared_memory_region(inp, [input1], offset=size)
    c.register_system_shared_memory("input_data", "/input_simple", size * 2)
    c.register_system_shared_memory("output_data", "/output_simple", size * 2)
    assert region_names(protocol, c) == ["input_data", "output_data"]

    inputs = [m.InferInput("INPUT0", [1, 16], "INT32"), m.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", size)
    inputs[1].set_shared_memory("input_data", size, offset=size)
    outputs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", size)
    outputs[1].set_shared_memory("output_data", size, offset=size)
    result = c.infer("simple", inputs, outputs=outputs)

    for name, offset, want in [("OUTPUT0", 0, input0 + input1), ("OUTPUT1", size, input0 - input1)]:
        o = result.get_output(name)
        shape = list(o.shape) if protocol == "grpc" else o["shape"]
        datatype = o.datatype if protocol == "grpc" else o["datatype"]
        assert (shape, datatype) == ([1, 16], "INT32")
        # No data in the response, as Triton: an empty raw entry (gRPC), no data fields (HTTP).
        if protocol == "grpc":
            index = [out.name for out in result.get_response().outputs].index(name)
            assert result.get_response().raw_output_contents[index] == b""
        else:
            assert "data" not in o and "parameters" not in o, o
        got = shm.get_contents_as_numpy(out, np.int32, [1, 16], offset=offset)
        np.testing.assert_array_equal(got[0], want)

    status = c.get_system_shared_memory_status("input_data")
    one = status.regions["input_data"] if protocol == "grpc" else status[0]
    if protocol == "grpc":
        assert (one.name, one.key, one.offset, one.byte_size) == ("input_data", "/input_simple", 0, size * 2)
    else:
        assert one == {"name": "input_data", "key": "/input_simple", "offset": 0, "byte_size": size * 2}
    c.unregister_system_shared_memory("input_data")
    assert region_names(protocol, c) == ["output_data"]
    c.unregister_system_shared_memory()
    assert region_names(protocol, c) == []


def test_regions_mixed_with_tensors_in_the_request(client, regions):
    protocol, c = client
    m = mod(protocol)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 5, dtype=np.int32)
    inp = regions.create("/tern_mixed_in", a.nbytes + 8)
    out = regions.create("/tern_mixed_out", a.nbytes)
    shm.set_shared_memory_region(inp, [a], offset=8)
    c.register_system_shared_memory("mixed_in", "/tern_mixed_in", a.nbytes + 8)
    c.register_system_shared_memory("mixed_out", "/tern_mixed_out", a.nbytes)
    inputs = [m.InferInput("INPUT0", [2, 16], "INT32"), m.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_shared_memory("mixed_in", a.nbytes, offset=8)
    inputs[1].set_data_from_numpy(b)
    outputs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
    outputs[1].set_shared_memory("mixed_out", a.nbytes)
    result = c.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.int32, [2, 16]), a - b)


def test_bad_registrations_are_refused(client, regions):
    protocol, c = client
    regions.create("/tern_bad_reg", 64)
    for key in ["/../etc/passwd", "/tern_no_such_object", "/dev/shm/tern_bad_reg"]:
        assert error_text(lambda: c.register_system_shared_memory("r", key, 8)) == (
            f"Unable to open shared memory region: '{key}'"
        )
    invalid = "failed to register shared memory region 'r': invalid args"
    assert error_text(lambda: c.register_system_shared_memory("r", "/tern_bad_reg", 8, offset=60)) == invalid
    assert error_text(lambda: c.register_system_shared_memory("r", "/tern_bad_reg", 128)) == invalid
    c.register_system_shared_memory("r", "/tern_bad_reg", 64)
    assert error_text(lambda: c.register_system_shared_memory("r", "/tern_bad_reg", 8)) == (
        "shared memory region 'r' already in manager"
    )
    assert "GPUs not supported" in error_text(lambda: c.register_cuda_shared_memory("g", b"\0" * 64, 0, 64))
    assert region_names(protocol, c) == ["r"]


def test_bad_references_in_requests_name_model_tensor_and_region(client, regions):
    protocol, c = client
    m = mod(protocol)
    regions.create("/tern_bad_ref", 64)
    c.register_system_shared_memory("small", "/tern_bad_ref", 32)
    c.register_system_shared_memory("whole", "/tern_bad_ref", 64)

    def infer(in_region=("whole", 64, 0), out_region=None):
        inputs = [m.InferInput("INPUT0", [1, 16], "INT32"), m.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory(in_region[0], in_region[1], offset=in_region[2])
        inputs[1].set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
        outputs = [m.InferRequestedOutput("OUTPUT0")]
        if out_region:
            outputs[0].set_shared_memory(*out_region)
        return c.infer("simple", inputs, outputs=outputs)

    assert error_text(lambda: infer(("nope", 64, 0))) == (
        "Unable to find shared memory region: 'nope' (input 'INPUT0' of model 'simple')"
    )
    assert error_text(lambda: infer(("whole", 64, 64))) == (
        "Invalid offset for shared memory region: 'whole' (input 'INPUT0' of model 'simple')"
    )
    assert error_text(lambda: infer(("whole", 64, 8))) == (
        "Invalid offset + byte size for shared memory region: 'whole' (input 'INPUT0' of model 'simple')"
    )
    assert "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 32" in error_text(
        lambda: infer(("small", 32, 0))
    )
    assert error_text(lambda: infer(out_region=("small", 32))) == (
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at least "
        "64 bytes to hold the results (model 'simple', region 'small')"
    )
    assert infer(out_region=("whole", 64)).get_output("OUTPUT0") is not None
