"""Offline text embeddings for the semantic cache and example-matched rules.

Two embedders, both in process and offline (nothing is ever fetched):

- ``wordllama``: WordLlama's static token embeddings (256 dimensions), whose weights ship inside
  the PyPI package ``wordllama`` (extra ``tierlm[semantic]``); loaded with downloads disabled.
- ``hashed``: no weights at all: word unigrams and bigrams and character trigrams, hashed into
  512 dimensions with sublinear counts. It knows no synonyms; the near-miss guard
  (:mod:`tierlm.layer0.guard`) does the precision work either way.

Both return unit-length ``float32`` vectors, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tierlm.errors import MissingDependency

Vector = npt.NDArray[np.float32]
_WORDS = re.compile(r"\w+")


class Embedder(Protocol):
    dim: int

    def embed(self, text: str) -> Vector: ...


class HashedEmbedder:
    """Deterministic feature hashing of words, word pairs and character trigrams."""

    dim = 512

    def embed(self, text: str) -> Vector:
        return _hashed(text.lower(), self.dim)


@lru_cache(maxsize=8192)
def _hashed(text: str, dim: int) -> Vector:
    words = _WORDS.findall(text)
    feats: list[str] = list(words)
    feats += [a + " " + b for a, b in pairwise(words)]
    for w in words:
        padded = f"<{w}>"
        feats += [padded[i : i + 3] for i in range(len(padded) - 2)]
    v = np.zeros(dim, dtype=np.float32)
    if not feats:
        return v
    idx = np.fromiter((zlib.crc32(f.encode()) % dim for f in feats), dtype=np.int64)
    np.add.at(v, idx, 1.0)
    v = np.log1p(v)
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


class WordLlamaEmbedder:
    """WordLlama's bundled 256-dimension model (average-pooled static token embeddings)."""

    dim = 256

    def __init__(self) -> None:
        try:
            import wordllama
        except ImportError:
            raise MissingDependency("the wordllama embedder", "semantic") from None
        # The package's own directory holds weights/ and tokenizers/ (as a download cache
        # would); downloads are off, so a missing file fails instead of reaching the hub.
        self._model = wordllama.WordLlama.load(
            dim=self.dim, cache_dir=Path(wordllama.__file__).parent, disable_download=True
        )

        self._cached = lru_cache(maxsize=1024)(self._embed)  # a miss is looked up, then stored

    def embed(self, text: str) -> Vector:
        return self._cached(text)

    def _embed(self, text: str) -> Vector:
        # lower case: the model's tokens are cased, and case rarely changes the question
        return np.asarray(self._model.embed([text.lower()], norm=True)[0], dtype=np.float32)


def load_embedder(name: str) -> Embedder:
    """The embedder called ``name`` (``wordllama`` or ``hashed``)."""
    if name == "hashed":
        return HashedEmbedder()
    return WordLlamaEmbedder()
