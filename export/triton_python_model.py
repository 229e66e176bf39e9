"""Triton python-backend model that runs the version folder's ``model.onnx`` with ONNX Runtime or OpenVINO.

The export pipeline copies this file to ``<model>/<version>/model.py`` for the embedded server,
whose wheel ships only the python backend. Shapes, dtypes and batching live in the config; this
file only loads and executes. Requests that Triton's dynamic batcher groups together are
concatenated along the batch axis and run as one call.

The config's ``runtime`` (``onnxruntime`` or ``openvino``) and ``precision`` (``fp32`` or ``bf16``,
what the export's parity check allowed: export/precision.py) pick the runtime. bf16 runs only where
this CPU reports native bf16 and ``MEDSTACK_FORCE_FP32`` is not set; otherwise fp32, said in the log.
"""

import json
import os
import sys

# The stub embeds the system libpython and ignores PYTHONPATH when it builds sys.path; the
# launcher points PYTHONPATH at the Triton environment (numpy < 2, onnxruntime), so add it here.
for _path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

TRUE = ("1", "true", "yes", "on")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}

        self.input_names = [t["name"] for t in config["input"]]
        self.outputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]
        ]
        path = os.path.join(version_dir, "model.onnx")
        threads = int(params.get("intra_op_threads", "0"))
        if params.get("runtime", "onnxruntime") == "openvino":
            self._run = self._openvino(path, threads, params.get("precision", "fp32"), config["name"])
        else:
            self._run = self._onnxruntime(path, threads)

    def _onnxruntime(self, path, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [name for name, _ in self.outputs]
        return lambda feed: session.run(names, feed)

    def _openvino(self, path, threads, precision, model_name):
        import openvino as ov

        core = ov.Core()
        if precision == "bf16" and os.environ.get("MEDSTACK_FORCE_FP32", "").lower() in TRUE:
            precision, why = "fp32", "MEDSTACK_FORCE_FP32 is set"
        elif precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            precision, why = "fp32", "this CPU has no native bf16"
        else:
            why = "as exported"
        # always name the precision: OpenVINO's CPU default is bf16 wherever the CPU has it
        properties = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(path, "CPU", properties)
        request = compiled.create_infer_request()  # execute() is never re-entered within an instance
        ports = [compiled.output(name) for name, _ in self.outputs]
        pb_utils.Logger.log_info(f"{model_name}: OpenVINO {ov.__version__}, {precision} ({why})")

        def run(feed):
            # outputs come back as arrays of their own (share_outputs=False): no second copy
            results = request.infer(feed, share_inputs=True)
            return [results[port] for port in ports]

        return run

    def execute(self, requests):
        feeds = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            for request in requests
        ]
        try:
            results = self._run_batched(feeds)
        except Exception:  # one bad request must not fail the others: retry one by one
            results = [self._run_one(feed) for feed in feeds]
        return [self._response(result) for result in results]

    def _run_batched(self, feeds):
        if len(feeds) == 1:
            return [self._run(feeds[0])]
        sizes = [len(feed[self.input_names[0]]) for feed in feeds]
        merged = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.input_names}
        outputs = self._run(merged)
        splits = np.cumsum(sizes)[:-1]
        per_output = [np.split(array, splits) for array in outputs]
        return [[parts[i] for parts in per_output] for i in range(len(feeds))]

    def _run_one(self, feed):
        try:
            return self._run(feed)
        except Exception as error:
            return pb_utils.TritonError(f"inference failed: {error}", pb_utils.TritonError.INVALID_ARG)

    def _response(self, result):
        if isinstance(result, pb_utils.TritonError):
            return pb_utils.InferenceResponse(output_tensors=[], error=result)
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(array, dtype=dtype))
            for (name, dtype), array in zip(self.outputs, result, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
