"""Triton Python-backend model that runs the same model.onnx through onnxruntime: what a Triton
user on CPU without Triton's ONNX Runtime backend would deploy (benches/peer/make_repo.py
writes it beside each model). With dynamic batching Triton hands execute() several requests:
they are concatenated along the batch dimension, run once, and the outputs split back."""
import json
import os
import site

# The stub's embedded Python runs isolated (PYTHONPATH is ignored): make_repo.py writes the
# peer venv's site-packages into site_dir.txt beside this file.
_site = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site_dir.txt")
if os.path.exists(_site):
    site.addsitedir(open(_site).read().strip())

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        so.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        self.batched = cfg.get("max_batch_size", 0) > 0

    @staticmethod
    def _feed(array):
        # ORT's string tensors take str (or object arrays of str); Triton gives bytes.
        if array.dtype == np.object_:
            return np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                                otypes=[object])(array)
        return array

    def execute(self, requests):
        per_input = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests] for n in self.inputs}
        if len(requests) == 1 or not self.batched:
            responses = []
            for k in range(len(requests)):
                outs = self.session.run(self.outputs, {n: self._feed(per_input[n][k]) for n in self.inputs})
                responses.append(self._response(outs))
            return responses
        rows = [a.shape[0] for a in per_input[self.inputs[0]]]
        feed = {n: self._feed(np.concatenate(arrays, axis=0)) for n, arrays in per_input.items()}
        outs = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for r in rows:
            responses.append(self._response([o[start:start + r] for o in outs]))
            start += r
        return responses

    def _response(self, outs):
        tensors = []
        for name, out in zip(self.outputs, outs):
            if out.dtype == np.object_:
                out = np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else s, otypes=[object])(out)
            tensors.append(pb_utils.Tensor(name, out))
        return pb_utils.InferenceResponse(output_tensors=tensors)
