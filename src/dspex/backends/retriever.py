"""Dense retrieval over a small in-memory corpus: the ``retrieve`` module kind.

A :class:`Retriever` holds the passages of a corpus and their normalised embeddings, and answers
``await search(query, k)`` with the ``k`` passages of highest cosine similarity. Embedding runs in
a worker thread (``asyncio.to_thread``) so the event loop never blocks on the model. Corpus
embeddings from files are cached in-process per (path, modification time, size, model).

Corpus files:

- ``.txt``: one passage per non-empty line (ids ``"1"``, ``"2"``, … by line order),
- ``.jsonl``: one object per line with ``text`` and an optional ``id``,
- ``.json``: a list of such objects or of strings.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dspex.backends.embeddings import Embedder, SentenceTransformerEmbedder
from dspex.errors import ConfigError, ErrorDetail, ValidationError

__all__ = ["Passage", "Retriever", "clear_corpus_cache", "load_corpus"]

Matrix = npt.NDArray[np.float32]

_CORPUS_CACHE: dict[tuple[str, int, int, str], tuple[tuple[str, ...], tuple[str, ...], Matrix]] = {}
_CORPUS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved passage and its cosine similarity to the query."""

    id: str
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": self.score}


def clear_corpus_cache() -> None:
    """Forget every cached corpus embedding (tests; after changing a model in place)."""
    with _CORPUS_LOCK:
        _CORPUS_CACHE.clear()


def _normalise(vectors: Sequence[Sequence[float]], dim: int | None = None) -> Matrix:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or (dim is not None and matrix.shape[1] != dim):
        raise ConfigError(
            f"the embedder returned vectors of shape {matrix.shape}, expected (n, {dim})"
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # a zero vector has no direction; it stays zero and scores 0 against everything
    out: Matrix = (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)
    return out


def load_corpus(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Read a corpus file into ``(ids, texts)``.

    Raises:
        ConfigError: the file is missing or its extension unknown.
        ValidationError: the content is malformed (every bad line is listed).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"corpus file not found: {file}")
    suffix = file.suffix.lower()
    try:
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read corpus file {file}: {exc}") from exc
    if suffix == ".txt":
        texts = [line.strip() for line in content.splitlines() if line.strip()]
        ids = [str(i) for i in range(1, len(texts) + 1)]
    elif suffix == ".jsonl":
        records: list[tuple[str, Any]] = []
        problems: list[ErrorDetail] = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(ErrorDetail(f"line {number}", "invalid_json", exc.msg))
        if problems:
            raise ValidationError(f"corpus file {file} is not valid JSON lines:", problems)
        ids, texts = _records(file, records)
    elif suffix == ".json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"corpus file {file} is not valid JSON:",
                [ErrorDetail("", "invalid_json", f"{exc.msg} (line {exc.lineno})")],
            ) from None
        if not isinstance(data, list):
            raise ValidationError(
                f"corpus file {file} must hold a JSON list:",
                [ErrorDetail("", "not_a_list", f"found {type(data).__name__}")],
            )
        ids, texts = _records(file, [(f"[{i}]", item) for i, item in enumerate(data)])
    else:
        raise ConfigError(f"corpus file {file}: unknown extension {suffix!r} (.txt, .jsonl, .json)")
    if not texts:
        raise ValidationError(
            f"corpus file {file} has no passages:", [ErrorDetail("", "empty", "no passages")]
        )
    return ids, texts


def _records(file: Path, records: list[tuple[str, Any]]) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    problems: list[ErrorDetail] = []
    for position, (where, item) in enumerate(records, start=1):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            problems.append(ErrorDetail(where, "not_an_object", "expected an object with 'text'"))
            continue
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(ErrorDetail(where, "missing_text", "'text' must be a non-empty string"))
            continue
        raw_id = item.get("id", position)
        ids.append(str(raw_id))
        texts.append(text.strip())
    if problems:
        raise ValidationError(f"corpus file {file} has bad records:", problems)
    return ids, texts


class Retriever:
    """Top-k cosine-similarity search over a fixed set of passages.

    Build one with :meth:`from_texts` or :meth:`from_file`; corpus embeddings are computed
    lazily on the first search (in a thread), then reused.

    Example:
        >>> retriever = Retriever.from_texts(["Paris is in France.", "Rome is in Italy."])
        >>> passages = await retriever.search("French capital", k=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        embedder: Embedder | None = None,
        *,
        cache_key: tuple[str, int, int] | None = None,
    ) -> None:
        if len(ids) != len(texts):
            raise ConfigError(f"{len(ids)} ids for {len(texts)} passages")
        if len(set(ids)) != len(ids):
            raise ConfigError("passage ids must be unique")
        self.ids: tuple[str, ...] = tuple(ids)
        self.texts: tuple[str, ...] = tuple(texts)
        self.embedder: Embedder = embedder or SentenceTransformerEmbedder()
        self._cache_key = cache_key
        self._matrix: Matrix | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        embedder: Embedder | None = None,
        ids: Sequence[str] | None = None,
    ) -> Retriever:
        """A retriever over ``texts``; ids default to ``"1"``, ``"2"``, …"""
        if isinstance(texts, str):
            raise ConfigError("texts must be a sequence of passages, not one string")
        return cls(
            [str(i) for i in ids]
            if ids is not None
            else [str(i) for i in range(1, len(texts) + 1)],
            list(texts),
            embedder,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], embedder: Embedder | None = None) -> Retriever:
        """A retriever over a corpus file (``.txt``, ``.jsonl`` or ``.json``; see module docs)."""
        ids, texts = load_corpus(path)
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
        return cls(ids, texts, embedder, cache_key=key)

    def __len__(self) -> int:
        return len(self.texts)

    def _embed_corpus(self) -> Matrix:
        key = None
        if self._cache_key is not None:
            key = (*self._cache_key, self.embedder.name)
            with _CORPUS_LOCK:
                hit = _CORPUS_CACHE.get(key)
            if hit is not None and hit[0] == self.ids and hit[1] == self.texts:
                return hit[2]
        matrix = _normalise(self.embedder.embed(list(self.texts)))
        if matrix.shape[0] != len(self.texts):
            raise ConfigError(
                f"the embedder returned {matrix.shape[0]} vectors for {len(self.texts)} passages"
            )
        if key is not None:
            with _CORPUS_LOCK:
                _CORPUS_CACHE[key] = (self.ids, self.texts, matrix)
        return matrix

    async def _corpus_matrix(self) -> Matrix:
        if self._matrix is None:
            async with self._lock:
                if self._matrix is None:
                    self._matrix = await asyncio.to_thread(self._embed_corpus)
        return self._matrix

    async def search(self, query: str, k: int = 3) -> list[Passage]:
        """The ``k`` passages most similar to ``query``, best first.

        Ties keep corpus order. ``k`` larger than the corpus returns every passage.

        Raises:
            ValidationError: ``query`` is empty or ``k`` is not positive.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("invalid search:", [ErrorDetail("query", "empty", "empty query")])
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValidationError(
                "invalid search:", [ErrorDetail("k", "not_positive", f"k must be >= 1, got {k!r}")]
            )
        matrix = await self._corpus_matrix()
        vectors = await asyncio.to_thread(self.embedder.embed, [query])
        query_vector = _normalise(vectors, matrix.shape[1])[0]
        scores = matrix @ query_vector
        # stable sort on the negated scores: equal scores keep corpus order
        order = np.argsort(-scores, kind="stable")[:k]
        return [Passage(self.ids[i], self.texts[i], float(scores[i])) for i in order]
