"""ResNet50 as a custom MLServer runtime (``implementation: mlserver_resnet50.ResNet50Runtime``), for gawm's
``backend.kind: external`` tests and ``python -m gawm_lib.bench.peers``. The model repository (``settings.json``,
``model-settings.json``, written by :func:`gawm_lib.bench.peers.mlserver_repository`) puts this folder on the path.

Inputs: ``image`` (BYTES [-1], JPEG/PNG, base64 in JSON) or ``pixel_values`` (UINT8/FP32 [-1, 3, 224, 224]); outputs
``label`` (INT32) and ``score`` (FP32). With adaptive batching (``max_batch_size`` > 1) MLServer joins requests along
the first dimension and splits the answer again, so one call here may carry several requests' images.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resnet50_common import ResNet50  # noqa: E402


class ResNet50Runtime(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self.net = ResNet50(threads=extra.get("threads"))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = payload.inputs[0]
        if tensor.datatype == "BYTES":
            index, score = self.net.predict_items(StringCodec.decode_input(tensor))
        else:
            index, score = self.net.predict_pixels(NumpyCodec.decode_input(tensor).reshape(tensor.shape))
        n = len(index)
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            outputs=[
                ResponseOutput(name="label", shape=[n], datatype="INT32", data=index.tolist()),
                ResponseOutput(name="score", shape=[n], datatype="FP32", data=score.tolist()),
            ],
        )
