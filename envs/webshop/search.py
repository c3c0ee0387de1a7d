"""BM25 product search standing in for WebShop's Lucene index (pyserini/Anserini defaults), in-process.

Ranking: `bm25s` (method "lucene": Lucene's BM25 idf log(1 + (N - df + 0.5) / (df + 0.5)) and tf saturation)
with Anserini's defaults k1 = 0.9, b = 0.4, over the same document text WebShop indexes
(`data.search_text`). Top 50 hits, as WebShop shows them.

Analysis, meant to match Lucene's EnglishAnalyzer chain as Anserini configures it:
- tokens: a regular expression close to Lucene's StandardTokenizer (Unicode word segmentation, UAX #29) for
  the text this catalog holds: runs of letters/digits/underscore, kept together across "." "'" ":" between
  letters ("e.g", "don't") and across "." "," ";" "'" between digits ("3.5", "1,000"); everything else splits;
- the English possessive filter (a trailing "'s" is dropped);
- Lucene's 33 English stop words (the same list `bm25s` ships as "en");
- the original Porter stemmer (`PyStemmer`'s "porter", the algorithm of Lucene's PorterStemFilter).
Duplicated query terms count once per occurrence, as Anserini's bag-of-words query boosts a term by its count.
Lucene stores document lengths in a lossy one-byte norm; `bm25s` uses exact lengths, one of the few reasons
rankings can differ. `benchmarks/webshop_search.py` measures the agreement with Lucene's own top 50.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Sequence

import numpy as np

K1, B = 0.9, 0.4  # Anserini's BM25 defaults
TOP_K = 50  # WebShop's SEARCH_RETURN_N
_LETTER = r"[^\W\d_]"
_TOKEN = re.compile(
    rf"\w+(?:(?:(?<={_LETTER})[.'\u2019:](?={_LETTER})|(?<=\d)[.,;'\u2019](?=\d))\w+)*")
_POSSESSIVE = re.compile(r"['\u2019]s$")
STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not",
    "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was",
    "will", "with"))


@contextlib.contextmanager
def without_optional_backends(names=("torch", "jax", "tensorflow", "cupy", "mxnet")):
    """Import libraries as if these optional backends were absent (unless already imported).

    thinc (under spaCy) imports torch, and bm25s imports jax and runs a top-k on it, just to see whether they
    are there: seconds of start-up per worker for a CPU tagger and a numpy ranker. A `None` entry in
    sys.modules makes such an `import` raise ImportError, which both libraries treat as "not installed"; the
    entries are removed afterwards, so later imports of the real packages work as usual.
    """
    blocked = [n for n in names if n not in sys.modules]
    for n in blocked:
        sys.modules[n] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for n in blocked:
            if sys.modules.get(n, 0) is None:
                del sys.modules[n]


def _require():
    try:
        with without_optional_backends():
            import bm25s  # noqa: F401
        import Stemmer  # noqa: F401
    except ImportError as e:
        raise ImportError("envs.webshop's search needs `pip install bm25s PyStemmer` (or `pip install -e .[envs]`)") from e


class Analyzer:
    """Lower-case, tokenize, drop possessives and stop words, Porter-stem (cached per distinct word)."""

    def __init__(self):
        _require()
        import Stemmer

        self._stemmer = Stemmer.Stemmer("porter")
        self._cache: dict[str, str] = {}

    def __call__(self, text: str) -> list[str]:
        words = [_POSSESSIVE.sub("", w) for w in _TOKEN.findall(text.lower())]
        words = [w for w in words if w and w not in STOP_WORDS]
        todo = [w for w in set(words) if w not in self._cache]
        if todo:
            self._cache.update(zip(todo, self._stemmer.stemWords(todo)))
        return [self._cache[w] for w in words]


class SearchEngine:
    """A BM25 index over the given documents; `search(query)` -> indices of the top `k` documents, best first."""

    def __init__(self, documents: Sequence[str], k1: float = K1, b: float = B):
        _require()
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
        self.analyzer = Analyzer()
        self.num_docs = len(documents)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._bm25.index([self.analyzer(d) for d in documents], show_progress=False)
        self._vocab = set(self._bm25.vocab_dict)

    def scores(self, query: str) -> np.ndarray:
        tokens = [t for t in self.analyzer(query) if t in self._vocab]
        if not tokens:
            return np.zeros(self.num_docs, np.float32)
        return np.asarray(self._bm25.get_scores(tokens), np.float32)

    def search(self, query: str, k: int = TOP_K) -> list[int]:
        """Documents with a positive score, best first (ties: lower index first), at most `k`."""
        s = self.scores(query)
        order = np.lexsort((np.arange(self.num_docs), -s))[:k]
        return [int(i) for i in order if s[i] > 0]
