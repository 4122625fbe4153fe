"""Cross-lingual word retrieval: CSLS, mutual-nearest-neighbour lexicons and the unsupervised criterion.

Shared by the aligner (which induces lexicons for Procrustes refinement and selects models with the
criterion) and by the dictionary evaluation (which scores retrieval), after MUSE's ``dico_builder.py``
and ``utils.py`` (Conneau et al., ICLR 2018, "Word translation without parallel data"). This module
imports no training code.

Conventions: an embedding matrix is a float tensor of shape ``(V, d)``, one row per word, rows sorted by
descending frequency (ranks matter for ``max_rank``). Retrieval functions expect unit-length rows
(:func:`unit_rows`) so that dot products are cosines; the source matrix is the *mapped* source
``V_s U`` (eq. 2).

Public API
----------
``normalize_embeddings(emb, mode="renorm,center,renorm", mean=None) -> (emb, mean)``
    MUSE's centring and renormalisation (en-zh needs it).
``unit_rows(emb) -> emb``
    Rows scaled to unit length.
``knn_mean_similarity(queries, keys, k=10) -> (Q,)``
    ``r(x)``: mean cosine of each query to its ``k`` nearest keys (the CSLS penalty).
``csls_penalties(src, tgt, k=10, src_ids=None) -> (r_src, r_tgt)``
    ``r_T(x)`` of each source and ``r_S(y)`` of each target.
``csls(cos, r_src, r_tgt) -> (Q, T)``
    ``CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y)``: the one CSLS implementation, on a block of cosines.
``csls_scores(src, tgt, k=10, src_ids=None) -> (Q, T)``
    The whole CSLS matrix.
``nearest_neighbours(src, tgt, method="csls", k=10, topk=10, src_ids=None) -> (scores, ids)``
    Top targets of each source query under ``"nn"`` (cosine) or ``"csls"``.
``induce_lexicon(src, tgt, method="csls", k=10, max_rank=15000, build="mutual", max_size=0) -> (P, 2)``
    Translation pairs ``(source id, target id)``, most confident first.
``mean_cosine(src, tgt, method="csls", k=10, max_size=10000, max_rank=10000) -> float``
    The unsupervised model-selection criterion (MUSE's ``mean_cosine-csls_knn_10-S2T-10000``).
``similarity_distributions(emb, size=4000) -> (size, size)``
    Rotation-invariant word descriptors (Artetxe et al., ACL 2018): sorted rows of ``sqrt(X X^T)``.
``similarity_lexicon(src, tgt, size=4000, k=10) -> (P, 2)``
    A seed lexicon from those descriptors, without any map: the aligner's ``similarity`` start.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Method = Literal["nn", "csls"]
Build = Literal["mutual", "s2t", "t2s", "union"]
_BATCH = 1024


def _check_matrix(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D float tensor (words x dims), got {shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no rows: shape {tuple(x.shape)}")


def _check_pair(src: Tensor, tgt: Tensor) -> None:
    _check_matrix("src", src)
    _check_matrix("tgt", tgt)
    if src.shape[1] != tgt.shape[1]:
        raise ValueError(f"src and tgt must have the same dimension, got {tuple(src.shape)} and {tuple(tgt.shape)}")


def _check_method(method: str) -> None:
    if method not in ("nn", "csls"):
        raise ValueError(f"method must be 'nn' or 'csls', got {method!r}")


def unit_rows(emb: Tensor) -> Tensor:
    """Scale every row of ``emb`` (V, d) to unit L2 norm (zero rows stay zero); returns a new (V, d) tensor."""
    _check_matrix("emb", emb)
    return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


def normalize_embeddings(emb: Tensor, mode: str = "renorm,center,renorm",
                         mean: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Centre and/or renormalise word vectors, MUSE's ``normalize_embeddings``.

    Args:
        emb: (V, d) word vectors.
        mode: comma-separated steps applied in order: ``renorm`` (unit rows), ``center`` (subtract the
            column mean), ``""`` (nothing).
        mean: (d,) mean to subtract at ``center`` instead of ``emb``'s own (to map new vectors exactly as
            the training vectors were mapped).

    Returns:
        The (V, d) normalised copy and the (d,) mean subtracted at ``center`` (``None`` without it).
    """
    _check_matrix("emb", emb)
    out, used = emb.clone(), None
    for step in filter(None, (s.strip() for s in mode.split(","))):
        if step == "renorm":
            out = unit_rows(out)
        elif step == "center":
            used = out.mean(dim=0) if mean is None else mean.to(out)
            if used.shape != (out.shape[1],):
                raise ValueError(f"mean must have shape ({out.shape[1]},), got {tuple(used.shape)}")
            out = out - used
        else:
            raise ValueError(f"unknown normalisation step {step!r} in {mode!r} (use renorm, center)")
    return out, used


def knn_mean_similarity(queries: Tensor, keys: Tensor, k: int = 10, batch_size: int = _BATCH) -> Tensor:
    """Mean cosine of each query to its ``k`` nearest keys: ``r_T(x)`` for source queries over target keys.

    Args:
        queries: (Q, d) unit rows.
        keys: (K, d) unit rows.
        k: neighbourhood size (clipped to K).

    Returns:
        (Q,) mean similarities.
    """
    _check_pair(queries, keys)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, keys.shape[0])
    out = [(queries[i:i + batch_size] @ keys.T).topk(k, dim=1).values.mean(dim=1)
           for i in range(0, queries.shape[0], batch_size)]
    return torch.cat(out)


def csls_penalties(src: Tensor, tgt: Tensor, k: int = 10, src_ids: Tensor | None = None,
                   batch_size: int = _BATCH) -> tuple[Tensor, Tensor]:
    """The two CSLS penalties: ``r_T(x)`` of each (queried) mapped source and ``r_S(y)`` of each target.

    ``r_T(x)`` is the mean cosine of ``x`` to its ``k`` nearest targets, ``r_S(y)`` that of ``y`` to its
    ``k`` nearest mapped sources, both over the whole vocabularies (Conneau et al. 2018, section 2.3).

    Args:
        src: (S, d) unit rows of the mapped source vectors.
        tgt: (T, d) unit rows of the target vectors.
        src_ids: (Q,) source rows whose ``r_T`` is wanted; all S rows when ``None``.

    Returns:
        ``(r_src, r_tgt)``: (Q,) and (T,).
    """
    _check_pair(src, tgt)
    query = src if src_ids is None else src[src_ids]
    return knn_mean_similarity(query, tgt, k, batch_size), knn_mean_similarity(tgt, src, k, batch_size)


def csls(cos: Tensor, r_src: Tensor, r_tgt: Tensor) -> Tensor:
    """Cross-domain similarity local scaling, ``CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y)``.

    The one implementation of CSLS (Conneau et al. 2018, section 2.3); every CSLS score in the project
    goes through it.

    Args:
        cos: (Q, T) cosines of Q mapped sources to T targets.
        r_src: (Q,) ``r_T`` of those sources; ``r_tgt``: (T,) ``r_S`` of those targets
            (:func:`csls_penalties`).

    Returns:
        (Q, T) scores.
    """
    return 2 * cos - r_src[:, None] - r_tgt[None, :]


def csls_scores(src: Tensor, tgt: Tensor, k: int = 10, src_ids: Tensor | None = None) -> Tensor:
    """The full (Q, T) matrix of :func:`csls` between mapped sources ``src`` (S, d) and targets ``tgt``
    (T, d), unit rows, with penalties over ``k`` neighbours; ``src_ids`` (Q,) selects the source rows
    (all S when ``None``)."""
    r_src, r_tgt = csls_penalties(src, tgt, k, src_ids)
    query = src if src_ids is None else src[src_ids]
    return csls(query @ tgt.T, r_src, r_tgt)


def nearest_neighbours(src: Tensor, tgt: Tensor, method: Method = "csls", k: int = 10, topk: int = 10,
                       src_ids: Tensor | None = None, batch_size: int = _BATCH) -> tuple[Tensor, Tensor]:
    """Best targets for each source query, by cosine (``"nn"``) or CSLS with ``k`` neighbours.

    Args:
        src: (S, d) unit rows of the mapped source vectors.
        tgt: (T, d) unit rows of the target vectors.
        topk: how many targets to return per query (clipped to T).
        src_ids: (Q,) source rows to query; all S rows when ``None``.

    Returns:
        ``(scores, ids)``, both (Q, topk), best first.
    """
    _check_pair(src, tgt)
    _check_method(method)
    ids = torch.arange(src.shape[0]) if src_ids is None else torch.as_tensor(src_ids, dtype=torch.long)
    topk = min(topk, tgt.shape[0])
    if method == "csls":
        r_src, r_tgt = csls_penalties(src, tgt, k, ids, batch_size)
    scores, targets = [], []
    for i in range(0, ids.shape[0], batch_size):
        s = src[ids[i:i + batch_size]] @ tgt.T
        if method == "csls":
            s = csls(s, r_src[i:i + batch_size], r_tgt)
        top = s.topk(topk, dim=1)
        scores.append(top.values)
        targets.append(top.indices)
    return torch.cat(scores), torch.cat(targets)


def _candidates(src: Tensor, tgt: Tensor, r_src: Tensor | None, r_tgt: Tensor | None,
                max_rank: int) -> tuple[Tensor, Tensor]:
    """Each of the first ``max_rank`` sources with its best target, sorted by margin to the second best.

    ``r_src`` (S,) and ``r_tgt`` (T,) are the CSLS penalties, ``None`` for plain cosine.
    Returns ``(pairs, margins)``: (Q, 2) ``(source id, target id)`` and (Q,) best-minus-second scores.
    """
    n_src = src.shape[0] if max_rank <= 0 else min(max_rank, src.shape[0])
    best, second, targets = [], [], []
    for i in range(0, n_src, _BATCH):
        s = src[i:min(i + _BATCH, n_src)] @ tgt.T
        if r_src is not None and r_tgt is not None:
            s = csls(s, r_src[i:min(i + _BATCH, n_src)], r_tgt)
        top = s.topk(min(2, tgt.shape[0]), dim=1)
        best.append(top.values[:, 0])
        second.append(top.values[:, -1] if top.values.shape[1] > 1 else top.values[:, 0])
        targets.append(top.indices[:, 0])
    margins = torch.cat(best) - torch.cat(second)
    pairs = torch.stack([torch.arange(n_src), torch.cat(targets)], dim=1)
    order = margins.argsort(descending=True, stable=True)
    return pairs[order], margins[order]


def induce_lexicon(src: Tensor, tgt: Tensor, method: Method = "csls", k: int = 10, max_rank: int = 15000,
                   build: Build = "mutual", max_size: int = 0) -> Tensor:
    """Induce a bilingual lexicon from aligned spaces, MUSE's ``build_dictionary``.

    ``build="mutual"`` (MUSE's ``S2T&T2S``, used for Procrustes refinement) keeps ``(i, j)`` only when
    ``j`` is the best target of source ``i`` and ``i`` the best source of target ``j``: mutual nearest
    neighbours under ``method`` over the whole vocabularies. ``"s2t"``/``"t2s"`` keep one direction,
    ``"union"`` both.

    Args:
        src: (S, d) unit rows of the mapped source vectors.
        tgt: (T, d) unit rows of the target vectors.
        max_rank: consider only the most frequent ``max_rank`` words on each side (0: all).
        max_size: keep at most this many pairs, most confident first (0: all).

    Returns:
        (P, 2) long tensor of ``(source id, target id)``, sorted by confidence (margin between the best
        and second-best score of the pair's query), most confident first.
    """
    _check_pair(src, tgt)
    _check_method(method)
    if build not in ("mutual", "s2t", "t2s", "union"):
        raise ValueError(f"build must be mutual, s2t, t2s or union, got {build!r}")
    r_src = r_tgt = None
    if method == "csls":  # penalties over the whole vocabularies, as MUSE
        r_src, r_tgt = csls_penalties(src, tgt, k)
    if build != "t2s":
        s2t, s2t_m = _candidates(src, tgt, r_src, r_tgt, max_rank)
    if build != "s2t":
        t2s, t2s_m = _candidates(tgt, src, r_tgt, r_src, max_rank)
        t2s = t2s.flip(1)
    if build == "s2t":
        pairs, margins = s2t, s2t_m
    elif build == "t2s":
        pairs, margins = t2s, t2s_m
    else:
        other = {(int(a), int(b)) for a, b in (t2s if build == "mutual" else s2t)}
        if build == "mutual":
            keep = torch.tensor([(int(a), int(b)) in other for a, b in s2t], dtype=torch.bool)
            pairs, margins = s2t[keep], s2t_m[keep]
        else:
            extra = torch.tensor([(int(a), int(b)) not in other for a, b in t2s], dtype=torch.bool)
            pairs, margins = torch.cat([s2t, t2s[extra]]), torch.cat([s2t_m, t2s_m[extra]])
            order = margins.argsort(descending=True, stable=True)
            pairs, margins = pairs[order], margins[order]
    if max_rank > 0:
        pairs = pairs[(pairs < max_rank).all(dim=1)]
    if max_size > 0:
        pairs = pairs[:max_size]
    return pairs.reshape(-1, 2)


def mean_cosine(src: Tensor, tgt: Tensor, method: Method = "csls", k: int = 10, max_size: int = 10000,
                max_rank: int = 10000) -> float:
    """Unsupervised model-selection criterion: mean cosine of the top induced translation pairs.

    MUSE's ``mean_cosine-csls_knn_10-S2T-10000``: each of the ``max_rank`` most frequent sources is paired
    with its best target (CSLS), pairs are ranked by confidence, and the cosine of the top ``max_size`` is
    averaged. Higher is better; it tracks translation accuracy without any dictionary.

    Args:
        src: (S, d) mapped source vectors (normalised here).
        tgt: (T, d) target vectors (normalised here).

    Returns:
        The mean cosine, in [-1, 1] (-1e9 if no pair survives, as MUSE).
    """
    _check_pair(src, tgt)
    src, tgt = unit_rows(src), unit_rows(tgt)
    pairs = induce_lexicon(src, tgt, method, k, max_rank=max_rank, build="s2t", max_size=max_size)
    if pairs.shape[0] == 0:
        return -1e9
    return float((src[pairs[:, 0]] * tgt[pairs[:, 1]]).sum(dim=1).mean())


def similarity_distributions(emb: Tensor, size: int = 4000) -> Tensor:
    """Rotation-invariant descriptors of the ``size`` most frequent words (Artetxe, Labaka and Agirre, ACL 2018).

    Row ``i`` is the sorted row ``i`` of ``sqrt(X X^T)`` (``X`` the first ``size`` rows of ``emb``; the square
    root is ``U S U^T`` from ``X = U S V^T``), then centred and renormalised. ``X X^T`` holds only the cosines
    between words, so ``emb @ R`` gives the same descriptors for any orthogonal ``R`` (eq. 2's map included),
    and sorting makes them comparable across two vocabularies with no known word correspondence.

    Args:
        emb: (V, d) word vectors (normalised: unit rows, centred), rows by frequency.
        size: words described (0: all V).

    Returns:
        (n, n) float32 unit rows, ``n = min(size, V)`` (or V).
    """
    _check_matrix("emb", emb)
    n = emb.shape[0] if size <= 0 else min(size, emb.shape[0])
    u, s, _ = torch.linalg.svd(emb[:n].double(), full_matrices=False)
    sqrt_sim = (u * s) @ u.T
    desc = sqrt_sim.sort(dim=1).values.float()
    return normalize_embeddings(desc, "renorm,center,renorm")[0]


def similarity_lexicon(src: Tensor, tgt: Tensor, size: int = 4000, k: int = 10) -> Tensor:
    """Seed lexicon with no map: CSLS nearest neighbours between :func:`similarity_distributions`.

    The two descriptor sets live in different spaces of sizes ``n_s`` and ``n_t``; both are truncated to the
    smaller so that they can be compared (``sqrt(X X^T)`` rows of equal length). Pairs are taken in both
    directions (``build="union"``, as Artetxe et al.'s initial dictionary).

    Args:
        src: (S, d) normalised source vectors; ``tgt``: (T, d) normalised target vectors (``d`` may differ).

    Returns:
        (P, 2) long ``(source id, target id)`` pairs among the first ``min(size, S, T)`` words of each side.
    """
    _check_matrix("src", src)
    _check_matrix("tgt", tgt)
    n = min(src.shape[0], tgt.shape[0]) if size <= 0 else min(size, src.shape[0], tgt.shape[0])
    return induce_lexicon(similarity_distributions(src, n), similarity_distributions(tgt, n), "csls", k,
                          max_rank=0, build="union")
