"""ResNet50 image classification (torchvision): top-k ImageNet classes with names and scores.

Two inputs, one per request:

- ``image`` (BYTES, ``[n]``): JPEG/PNG files. Each is decoded, resized (short side 256, bilinear with antialiasing),
  centre-cropped to 224 and kept as uint8 RGB; normalisation happens on the device, batched.
- ``pixel_values`` (``[n, 3, 224, 224]``): pre-processed images. UINT8 is RGB 0..255 (the server normalises);
  FP32/FP16/BF16 are already normalised with the ImageNet mean and std.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from gawm_lib.workloads import samples
from gawm_lib.workloads.base import InputSpec, Workload, load_checkpoint
from gawm_lib.workloads.device import maybe_compile, stack
from gawm_lib.workloads.oip import InferenceError, Tensor

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 224
# Far above any photo a client should send; refuses decompression bombs before their pixels are decoded.
MAX_PIXELS = 40_000_000


class ResNet50(Workload):
    name = "resnet50"
    inputs = (
        InputSpec("image", ("BYTES",), (-1,), "JPEG/PNG files (base64 in JSON, raw with the binary extension)"),
        InputSpec(
            "pixel_values",
            ("UINT8", "FP32", "FP16", "BF16"),
            (-1, 3, SIZE, SIZE),
            "pre-processed RGB: UINT8 0..255, or floats normalised with the ImageNet mean/std",
        ),
    )

    @property
    def outputs(self):
        k = (self.cfg.top_k,)
        return (
            ("label", "BYTES", ()),
            ("score", "FP32", ()),
            ("top_k_labels", "BYTES", k),
            ("top_k_scores", "FP32", k),
            ("top_k_indices", "INT32", k),
        )

    def _build(self):
        import torch
        import torchvision
        from torchvision.models import ResNet50_Weights

        self.categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
        weights = self.cfg.weights
        if weights == "pretrained":
            model = torchvision.models.resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)
            info = {"weights": "pretrained", "source": "torchvision ResNet50_Weights.IMAGENET1K_V2"}
        else:
            torch.manual_seed(0)
            model = torchvision.models.resnet50(weights=None)
            info = {"weights": "random", "seed": 0}
            if weights != "random":
                model.load_state_dict(load_checkpoint(weights))
                info = {"weights": "path", "path": str(weights)}
        model = model.eval().to(self.cfg.device, self.torch_dtype)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(MEAN, device=self.cfg.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.cfg.device).view(1, 3, 1, 1) * 255
        info.update(channels_last=self.cfg.channels_last, compiled=self.cfg.compile)
        return maybe_compile(model, self.cfg), info

    # -- request side -------------------------------------------------------------------------------------------------
    def decode_item(self, raw: bytes | str, where: str = "image") -> Any:
        """An encoded image to a uint8 ``[3, 224, 224]`` array (resize 256, centre crop 224)."""
        from PIL import Image

        if not isinstance(raw, bytes):
            raise InferenceError(where, "JPEG/PNG bytes")
        try:
            image = Image.open(io.BytesIO(raw))  # reads the header only
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InferenceError(where, f"an image of at most {MAX_PIXELS} pixels", f"{width}x{height}")
            image = image.convert("RGB")
            # Resize(256) then CenterCrop(224), done as one resample of the crop's source box: the same pixels
            # without the full-size intermediate (which a 1 x 100000 image would blow up to gigapixels).
            scale = 256 / min(width, height)
            resized = (max(256, int(width * scale)), max(256, int(height * scale)))
            sx, sy = resized[0] / width, resized[1] / height
            left, top = int(round((resized[0] - SIZE) / 2)) / sx, int(round((resized[1] - SIZE) / 2)) / sy
            box = (left, top, left + SIZE / sx, top + SIZE / sy)
            pixels = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
        except InferenceError:
            raise
        except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error ... on bad files
            raise InferenceError(where, "a decodable JPEG/PNG image", f"{type(exc).__name__}: {exc}") from None
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def decode_tensor(self, tensor: Tensor) -> list[Any]:
        if tensor.name == "image":
            return [
                self.decode_item(raw, f"{tensor.field}.data[{i}]") for i, raw in enumerate(self.bytes_items(tensor))
            ]
        array = self.finite(tensor, tensor.data)
        return list(array if array.dtype == np.uint8 else array.astype(np.float32, copy=False))  # rows are views

    # -- batch side ---------------------------------------------------------------------------------------------------
    def prepare(self, items: list[np.ndarray]):
        if not all(item.dtype == np.uint8 for item in items):  # a mix with normalised floats: normalise here
            mean = np.array(MEAN, dtype=np.float32).reshape(3, 1, 1) * 255
            std = np.array(STD, dtype=np.float32).reshape(3, 1, 1) * 255
            items = [((i - mean) / std if i.dtype == np.uint8 else i).astype(np.float32, copy=False) for i in items]
        return self.stager({"pixels": stack(items, self.padded_size(len(items)), self.cfg.device)})

    def compute(self, pixels):
        """Pixels (uint8 RGB, or normalised floats) to the top-k scores and class indices, all on the device."""
        import torch

        x = ((pixels.float() - self.mean) / self.std) if pixels.dtype == torch.uint8 else pixels
        x = x.to(self.torch_dtype)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(self.model(x).float(), dim=1)
        return probs.topk(self.cfg.top_k, dim=1)

    def forward(self, batch, count: int) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            scores, indices = self.device_forward(**batch.get())
            scores, indices = scores[:count].cpu().numpy(), indices[:count].cpu().numpy()
        return [
            {
                "label": self.categories[int(idx[0])],
                "score": float(sc[0]),
                "top_k_labels": [self.categories[int(i)] for i in idx],
                "top_k_scores": sc.tolist(),
                "top_k_indices": idx.astype(np.int32).tolist(),
            }
            for sc, idx in zip(scores, indices)
        ]

    # -- samples ------------------------------------------------------------------------------------------------------
    def sample_items(self, count: int, seed: int) -> list[bytes]:
        return samples.photos(count, seed)

    def sample_pixels(self, count: int, seed: int) -> np.ndarray:
        """``[count, 3, 224, 224]`` uint8: sample photos pre-processed as the server would."""
        return np.stack([self.decode_item(p) for p in samples.photos(count, seed)])

    def warmup_item(self) -> bytes:
        return samples.photos(1, 0)[0]
