"""ResNet50 image classification (torchvision): JPEG/PNG in, top-k ImageNet classes out."""

from __future__ import annotations

import io
from typing import Any

from gawm_lib.workloads.base import InferenceError, Workload, load_checkpoint
from gawm_lib.workloads import samples

TOP_K = 5


class ResNet50(Workload):
    name = "resnet50"
    input_name = "image"
    binary_input = True

    def _build(self):
        import torch
        import torchvision
        from torchvision.models import ResNet50_Weights

        from torchvision import transforms

        self.categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
        self.transform = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ])
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
        return model.eval().to(self.cfg.device, self.torch_dtype), info

    def decode(self, raw: bytes | str) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(raw)).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise InferenceError(f"image: not a JPEG/PNG image ({exc})") from None
        return self.transform(image)

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            batch = torch.stack(items).to(self.cfg.device, self.torch_dtype)
            probs = torch.softmax(self.model(batch).float(), dim=1)
            scores, indices = probs.topk(TOP_K, dim=1)
        return [
            {"label": self.categories[int(idx[0])], "score": float(sc[0]),
             "top_k": [[self.categories[int(i)], float(s)] for s, i in zip(sc, idx)]}
            for sc, idx in zip(scores.cpu(), indices.cpu())
        ]

    def sample_items(self, count: int, seed: int) -> list[bytes]:
        return samples.photos(count, seed)

    def warmup_item(self) -> bytes:
        return samples.photos(1, 0)[0]
