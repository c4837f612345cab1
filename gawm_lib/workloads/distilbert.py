"""DistilBERT sequence classification (transformers) with real uncased WordPiece tokenisation.

Input ``text`` (BYTES, ``[n]``): UTF-8 strings of at most ``max_text_chars`` characters. Each is tokenised on arrival
(truncated to ``max_seq_len`` tokens, [CLS] and [SEP] included); a batch is padded to its longest sequence (to
``max_seq_len`` when compiled, for one static shape). Answers: label, score and the tokens processed (padding not counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gawm_lib import paths
from gawm_lib.workloads import samples
from gawm_lib.workloads.base import InputSpec, Workload
from gawm_lib.workloads.device import maybe_compile
from gawm_lib.workloads.oip import InferenceError, Tensor

VOCAB = paths.PACKAGE_DATA / "bert-base-uncased-vocab.txt"  # bert-base-uncased, identical to DistilBERT's
PRETRAINED = "distilbert-base-uncased-finetuned-sst-2-english"
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


class DistilBert(Workload):
    name = "distilbert"
    inputs = (InputSpec("text", ("BYTES",), (-1,), "UTF-8 text, one string per item"),)
    outputs = (("label", "BYTES", ()), ("score", "FP32", ()), ("tokens", "INT32", ()))

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
        self.id2label = model.config.id2label
        self.pad_id = self.tokenizer.pad_token_id
        info["compiled"] = self.cfg.compile
        return maybe_compile(model.eval().to(self.cfg.device, self.torch_dtype), self.cfg), info

    # -- request side -------------------------------------------------------------------------------------------------
    def decode_item(self, raw: bytes | str, where: str = "text") -> list[int]:
        """A text to its token ids (truncated to ``max_seq_len``)."""
        try:
            # JSON strings may hold lone surrogates, which are no text (and which the Rust tokenizer refuses).
            raw = raw.decode("utf-8") if isinstance(raw, bytes) else raw.encode("utf-8") and raw
        except UnicodeError as exc:
            raise InferenceError(where, "UTF-8 text", f"invalid character at {exc.start}") from None
        if not raw.strip():
            raise InferenceError(where, "a non-empty string")
        if len(raw) > self.cfg.max_text_chars:
            raise InferenceError(where, f"at most {self.cfg.max_text_chars} characters (max_text_chars)",
                                 f"{len(raw)} characters")
        return self.tokenizer(raw, truncation=True, max_length=self.cfg.max_seq_len)["input_ids"]

    def decode_tensor(self, tensor: Tensor) -> list[Any]:
        return [self.decode_item(raw, f"{tensor.field}.data[{i}]") for i, raw in enumerate(tensor.data)]

    # -- batch side ---------------------------------------------------------------------------------------------------
    def prepare(self, items: list[list[int]]):
        import torch

        length = self.cfg.max_seq_len if self.cfg.compile else max(len(ids) for ids in items)
        rows = self.padded_size(len(items))
        input_ids = torch.full((rows, length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((rows, length), dtype=torch.int64)
        for row, ids in enumerate(items + [items[0]] * (rows - len(items))):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        return self.stager({"input_ids": input_ids, "attention_mask": mask}), mask.sum(dim=1).tolist()

    def forward(self, batch, count: int) -> list[dict[str, Any]]:
        import torch

        staged, tokens = batch
        with torch.inference_mode():
            logits = self.model(**staged.get()).logits[:count].float()
            probs = torch.softmax(logits, dim=1).cpu()
        return [{"label": self.id2label[int(p.argmax())], "score": float(p.max()), "tokens": int(n)}
                for p, n in zip(probs, tokens)]

    def request_stats(self, answers: list[dict[str, Any]]) -> dict[str, float]:
        return {"tokens": sum(a["tokens"] for a in answers)}

    # -- samples ------------------------------------------------------------------------------------------------------
    def sample_items(self, count: int, seed: int) -> list[str]:
        return samples.sentences(count, seed)

    def warmup_item(self) -> str:
        return samples.sentences(1, 0)[0]
