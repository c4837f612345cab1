"""DistilBERT sequence classification (transformers) with real uncased WordPiece tokenisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gawm_lib import paths
from gawm_lib.workloads import samples
from gawm_lib.workloads.base import InferenceError, Workload

VOCAB = paths.PACKAGE_DATA / "bert-base-uncased-vocab.txt"  # bert-base-uncased, identical to DistilBERT's
PRETRAINED = "distilbert-base-uncased-finetuned-sst-2-english"
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


class DistilBert(Workload):
    name = "distilbert"
    input_name = "text"
    binary_input = False

    def _build(self):
        import torch
        from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizer

        weights = self.cfg.weights
        if weights == "random":
            # vocab= (not vocab_file=): transformers 5 silently maps every token to [UNK] with the latter.
            self.tokenizer = DistilBertTokenizer(vocab=str(VOCAB))
            torch.manual_seed(0)
            config = DistilBertConfig(num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
            model = DistilBertForSequenceClassification(config)
            info = {"weights": "random", "seed": 0, "tokenizer": "bert-base-uncased WordPiece (shipped)"}
        else:
            source = PRETRAINED if weights == "pretrained" else str(Path(weights).expanduser())
            self.tokenizer = DistilBertTokenizer.from_pretrained(source)
            model = DistilBertForSequenceClassification.from_pretrained(source)
            info = {"weights": "pretrained" if weights == "pretrained" else "path", "source": source}
        return model.eval().to(self.cfg.device, self.torch_dtype), info

    def decode(self, raw: bytes | str) -> Any:
        if not isinstance(raw, str) or not raw.strip():
            raise InferenceError("text: expected a non-empty string")
        return raw

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        import torch

        encoded = self.tokenizer(items, truncation=True, max_length=self.cfg.max_seq_len, padding=True, return_tensors="pt")
        tokens = encoded["attention_mask"].sum(dim=1).tolist()
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.cfg.device) for k, v in encoded.items()}).logits.float()
            probs = torch.softmax(logits, dim=1).cpu()
        id2label = self.model.config.id2label
        return [
            {"label": id2label[int(p.argmax())], "score": float(p.max()), "tokens": int(n)}
            for p, n in zip(probs, tokens)
        ]

    def output_spec(self) -> list[dict[str, Any]]:
        return [*super().output_spec(), {"name": "tokens", "datatype": "INT32", "shape": [-1]}]

    def sample_items(self, count: int, seed: int) -> list[str]:
        return samples.sentences(count, seed)

    def warmup_item(self) -> str:
        return samples.sentences(1, 0)[0]
