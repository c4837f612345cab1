"""ResNet50 on KServe's Python model server (V2 REST protocol), for gawm's ``backend.kind: external`` tests and
``python -m gawm_lib.bench.peers``. Run with the KServe venv's python (k8s/testenv/install-peers.sh)::

    python tests/peers/kserve_resnet50.py --http_port 8080 --enable_grpc false [--quirk]

Inputs (metadata): ``image`` (BYTES [-1], JPEG/PNG, base64 in JSON) and ``pixel_values`` (UINT8 or FP32
[-1, 3, 224, 224]). Outputs: ``label`` (INT32 [n]) and ``score`` (FP32 [n]). ``--quirk`` answers what gawm does not
expect: an extra FP64 output, scores as FP64, and HTTP 400 for requests whose id ends in an odd digit. KServe's REST
port listens on 0.0.0.0 (it has no loopback-only option): send to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kserve  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from resnet50_common import ResNet50  # noqa: E402


class KServeResNet50(Model):
    def __init__(self, name: str, quirk: bool):
        super().__init__(name)
        self.quirk = quirk
        self.net = ResNet50()
        self.ready = True

    def get_input_types(self):
        return [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixel_values", "datatype": "UINT8", "shape": [-1, 3, 224, 224]},
        ]

    def get_output_types(self):
        return [
            {"name": "label", "datatype": "INT32", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        if self.quirk and payload.id and payload.id[-1] in "13579":
            raise InvalidInput(f"quirk: request {payload.id} refused")
        tensor = payload.inputs[0]
        if tensor.datatype == "BYTES":
            index, score = self.net.predict_items(list(tensor.data))
        else:
            pixels = np.asarray(tensor.data, dtype=np.float32 if tensor.datatype.startswith("FP") else np.uint8)
            index, score = self.net.predict_pixels(pixels.reshape(tensor.shape))
        n = len(index)
        outputs = [
            InferOutput("label", [n], "INT32", data=index.tolist()),
            InferOutput("score", [n], "FP64" if self.quirk else "FP32", data=score.tolist()),
        ]
        if self.quirk:
            outputs.append(InferOutput("logits_sum", [n], "FP64", data=[0.0] * n))
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], conflict_handler="resolve")
    parser.add_argument("--quirk", action="store_true")
    args, _ = parser.parse_known_args()
    model = KServeResNet50(args.model_name if args.model_name != "model" else "resnet50", args.quirk)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, workers=1).start(
        [model]
    )
