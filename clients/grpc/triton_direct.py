"""Call a served model directly through Triton's KServe v2 gRPC API, as a hospital system could.

The gateway says what is served (``GET /v1/models/{name}``: tensor names, dtypes, shapes with -1
for dynamic axes, version, sha256); this script builds an input of that shape and sends it to
Triton's gRPC port (8001 by default) with ``tritonclient.grpc``. No gateway in the data path:
Triton has no API keys, so expose its port only inside the hospital network.

    python clients/grpc/triton_direct.py --gateway http://127.0.0.1:8080 --key "$MEDSTACK_KEY" \\
        --triton 127.0.0.1:8001 --model reference_hutissue --size 16 32 32
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


def call(gateway: str, key: str, triton: str, model: str, size: tuple[int, ...] = (16, 32, 32),
         seed: int = 0) -> dict[str, Any]:
    card = httpx.get(f"{gateway}/v1/models/{model}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    card.raise_for_status()
    spec = card.json()
    rng = np.random.default_rng(seed)
    client = grpcclient.InferenceServerClient(triton)
    try:
        inputs = []
        for tensor in spec["inputs"]:
            # batch 1; fixed axes as declared; dynamic spatial axes (-1) from --size
            dynamic = iter(size)
            shape = [1] + [d if d != -1 else next(dynamic) for d in tensor["shape"][1:]]
            array = rng.uniform(-1000, 1000, shape).astype(tensor["dtype"])
            infer_input = grpcclient.InferInput(tensor["name"], shape, np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        outputs = [grpcclient.InferRequestedOutput(t["name"]) for t in spec["outputs"]]
        result = client.infer(model, inputs, model_version=str(spec["version"]), outputs=outputs,
                              client_timeout=60)
        answer = result.get_response(as_json=True)
        arrays = {t["name"]: result.as_numpy(t["name"]) for t in spec["outputs"]}
    finally:
        client.close()
    return {
        "model": model, "version": answer["model_version"], "sha256": spec["sha256"],
        "inputs": {i.name(): [int(d) for d in i.shape()] for i in inputs},
        "outputs": {name: list(a.shape) for name, a in arrays.items()},
        "arrays": arrays,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--key", required=True, help="API key with the 'models' scope")
    parser.add_argument("--triton", default="127.0.0.1:8001", help="Triton gRPC host:port")
    parser.add_argument("--model", default="reference_hutissue")
    parser.add_argument("--size", type=int, nargs="+", default=[16, 32, 32], help="dynamic axes, in order")
    args = parser.parse_args(argv)
    report = call(args.gateway, args.key, args.triton, args.model, tuple(args.size))
    report.pop("arrays")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
