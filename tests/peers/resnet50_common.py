"""ResNet50 for the peer servers (KServe, MLServer): torchvision's model with random weights (seed 0, as gawm's
``weights: random``), one torch thread unless told, the same pre-processing as gawm's server (decode, resize the short
side to 256, centre-crop 224, normalise with the ImageNet mean and std). Runs in a peer's own venv: no gawm import."""

from __future__ import annotations

import base64
import io
import os

import numpy as np

MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32).reshape(1, 3, 1, 1) * 255
STD = np.array((0.229, 0.224, 0.225), dtype=np.float32).reshape(1, 3, 1, 1) * 255
SIZE = 224


class ResNet50:
    def __init__(self, threads: int | None = None):
        import torch
        import torchvision

        torch.set_num_threads(int(threads or os.environ.get("GAWM_PEER_THREADS", "1")))
        torch.manual_seed(0)
        self.torch = torch
        self.model = torchvision.models.resnet50(weights=None).eval()
        self.predict_pixels(np.zeros((1, 3, SIZE, SIZE), dtype=np.uint8))  # warm up

    @staticmethod
    def decode(item: bytes | str) -> np.ndarray:
        """A JPEG/PNG (raw, or base64 as gawm sends BYTES in JSON) to uint8 [3, 224, 224]."""
        from PIL import Image

        raw = base64.b64decode(item) if isinstance(item, str) else item
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        resized = (max(256, int(width * scale)), max(256, int(height * scale)))
        sx, sy = resized[0] / width, resized[1] / height
        left, top = int(round((resized[0] - SIZE) / 2)) / sx, int(round((resized[1] - SIZE) / 2)) / sy
        box = (left, top, left + SIZE / sx, top + SIZE / sy)
        pixels = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def predict_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, 3, 224, 224] uint8 (or normalised floats) to (top-1 index, top-1 score) per item."""
        torch = self.torch
        x = (pixels.astype(np.float32) - MEAN) / STD if pixels.dtype == np.uint8 else pixels.astype(np.float32)
        with torch.inference_mode():
            probs = torch.softmax(self.model(torch.from_numpy(np.ascontiguousarray(x))), dim=1)
            score, index = probs.max(dim=1)
        return index.numpy().astype(np.int32), score.numpy().astype(np.float32)

    def predict_items(self, items: list) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_pixels(np.stack([self.decode(i) for i in items]))
