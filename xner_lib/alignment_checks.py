"""Planted-rotation checks of the aligner (issue 4, evaluation (a) and (b)).

Multilingual encoders are already partly aligned, so a good English-Chinese criterion does not show that
the adversarial part works. A planted rotation does: rotate one space by a random orthogonal ``R`` and
ask the aligner, started from the identity, to find it again.

Public API
----------
``random_rotation(dim, seed=0, angle=None) -> (dim, dim)``
    A Haar-random rotation (orthogonal, determinant +1), or one of bounded angle; reproducible from ``seed``.
``identity_precision(mapped_source, target, method="csls") -> float``
    P@1 when row ``i`` of the source should retrieve row ``i`` of the target.
``rotation_recovery(source, source_estimate=None, config=None, rotation=None, seed=0) -> RecoveryResult``
    Check (a): align ``source`` to ``source_estimate @ R``; distance of ``U`` to ``R`` and identity P@1.
``rotated_target_check(source, target, config=None, seed=0, unrotated=None) -> RotationCheck``
    Check (b): align to ``target`` and to ``target @ R``; criteria and nearest neighbours, before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .aligner import AlignConfig, AlignmentResult, align
from .lexicon import Method, mean_cosine, nearest_neighbours, unit_rows


def random_rotation(dim: int, seed: int = 0, angle: float | None = None) -> Tensor:
    """A (dim, dim) random rotation (``R^T R = I``, ``det R = +1``) drawn from a private generator.

    With ``angle=None`` it is Haar-distributed (uniform over all rotations). With ``angle`` it is
    ``exp(K)`` for a random skew-symmetric ``K`` scaled so that the largest principal angle is ``angle``
    radians: every plane turns by at most that much, a rotation of controlled size.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    if angle is not None:
        k = a - a.T
        norm = torch.linalg.matrix_norm(k, ord=2)
        return torch.linalg.matrix_exp(k * (angle / norm) if norm > 0 else k).float()
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # uniform over O(d)
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def identity_precision(mapped_source: Tensor, target: Tensor, method: Method = "csls", k: int = 10,
                       n_queries: int = 0) -> float:
    """P@1 of retrieving target row ``i`` for mapped source row ``i`` (same words, two spaces).

    Args:
        mapped_source: (V, d) mapped source rows.
        target: (V, d) target rows, same words in the same order.
        n_queries: evaluate only the first (most frequent) rows (0: all).
    """
    if mapped_source.shape != target.shape:
        raise ValueError(f"identity pairs need equal shapes, got {tuple(mapped_source.shape)} and "
                         f"{tuple(target.shape)}")
    n = target.shape[0] if n_queries <= 0 else min(n_queries, target.shape[0])
    ids = torch.arange(n)
    _, top = nearest_neighbours(unit_rows(mapped_source), unit_rows(target), method, k=k, topk=1, src_ids=ids)
    return float((top[:, 0] == ids).float().mean())


@dataclass
class RecoveryResult:
    """Check (a): the rotation ``R`` (d, d) and how well the aligner found it.

    Attributes:
        frobenius: ``||U - R||_F``; ``frobenius_identity`` is ``||I - R||_F``, the distance at the start.
        p_at_1: identity-pair P@1 with CSLS retrieval; ``p_at_1_nn`` with cosine.
        criterion: the aligner's best mean-cosine criterion.
        candidates: one row per start and restart of the aligner (``start``, ``run``, ``criterion``,
            ``frobenius``, ``p_at_1``), so the identity start (the paper's method) is reported even when
            another start wins.
    """

    frobenius: float
    frobenius_identity: float
    p_at_1: float
    p_at_1_nn: float
    criterion: float
    rotation: Tensor
    alignment: AlignmentResult
    candidates: list[dict[str, float | str | int]]


def rotation_recovery(source: Tensor, source_estimate: Tensor | None = None, config: AlignConfig | None = None,
                      rotation: Tensor | None = None, seed: int = 0, n_queries: int = 0) -> RecoveryResult:
    """Check (a): recover a planted rotation with the aligner (every start of ``config.starts``, e.g. ``U = I``).

    The target is ``source_estimate @ R`` (``source_estimate`` defaults to ``source``; pass a second, noisy
    estimate of the same words, e.g. vectors averaged over the other half of the occurrences). The
    preprocessing (renorm, centre) commutes with ``R``, so the true map is ``R`` itself.

    Args:
        source: (V, d) source vectors, rows by frequency.
        source_estimate: (V, d) another estimate of the same V words, same row order.
        config: aligner configuration (its ``seed`` drives training).
        rotation: (d, d) orthogonal ``R``; :func:`random_rotation` of ``seed`` when ``None``.
        n_queries: identity pairs to score (0: all V).
    """
    estimate = source if source_estimate is None else source_estimate
    if estimate.shape != source.shape or source.dim() != 2:
        raise ValueError(f"source and source_estimate must be the same (V, d) shape, got {tuple(source.shape)} "
                         f"and {tuple(estimate.shape)}")
    d = source.shape[1]
    R = random_rotation(d, seed) if rotation is None else rotation.float()
    if R.shape != (d, d):
        raise ValueError(f"rotation must be ({d}, {d}), got {tuple(R.shape)}")
    result = align(source, estimate.float() @ R, config)
    k = result.config.csls_k
    candidates = [{"start": c["start"], "run": c["run"], "criterion": c["criterion"],
                   "frobenius": float((c["mapping"] - R).norm()),
                   "p_at_1": identity_precision(result.source @ c["mapping"], result.target, "csls", k, n_queries)}
                  for c in result.candidates]
    chosen = max(candidates, key=lambda c: c["criterion"])  # the candidate whose map ``result`` holds
    return RecoveryResult(
        frobenius=chosen["frobenius"], frobenius_identity=float((torch.eye(d) - R).norm()),
        p_at_1=chosen["p_at_1"],
        p_at_1_nn=identity_precision(result.mapped_source, result.target, "nn", k, n_queries),
        criterion=result.criterion, rotation=R, alignment=result, candidates=candidates)


@dataclass
class RotationCheck:
    """Check (b): the target space rotated by ``rotation``, aligned from the identity, against the unrotated run.

    Attributes:
        criterion_start, criterion_start_rotated: criterion at ``U = I`` before training (unrotated, rotated).
        criterion, criterion_rotated: best criterion after alignment.
        neighbour_agreement: fraction of queried source words whose CSLS nearest target is the same word in
            both runs.
        rotation_error: ``||U_rotated - U R||_F``, 0 when the rotated run found the same map.
    """

    criterion_start: float
    criterion_start_rotated: float
    criterion: float
    criterion_rotated: float
    neighbour_agreement: float
    rotation_error: float
    rotation: Tensor
    unrotated: AlignmentResult
    rotated: AlignmentResult


def rotated_target_check(source: Tensor, target: Tensor, config: AlignConfig | None = None, seed: int = 0,
                         unrotated: AlignmentResult | None = None, n_queries: int = 1000) -> RotationCheck:
    """Check (b): align ``source`` (S, d) to ``target`` (T, d) and to ``target @ R``; compare the outcomes.

    Args:
        unrotated: a finished alignment of ``source`` to ``target`` with the same config, to reuse.
        n_queries: most frequent source words whose nearest neighbours are compared.
    """
    R = random_rotation(target.shape[1], seed)
    base = unrotated if unrotated is not None else align(source, target, config)
    rotated = align(source, target.float() @ R, base.config)
    k = base.config.csls_k
    size = base.config.criterion_max_size
    start = mean_cosine(base.source, base.target, "csls", k, max_size=size, max_rank=size)
    start_rot = mean_cosine(rotated.source, rotated.target, "csls", k, max_size=size, max_rank=size)
    ids = torch.arange(min(n_queries, source.shape[0]))
    _, nn_base = nearest_neighbours(unit_rows(base.mapped_source), unit_rows(base.target), "csls", k, 1, ids)
    _, nn_rot = nearest_neighbours(unit_rows(rotated.mapped_source), unit_rows(rotated.target), "csls", k, 1, ids)
    return RotationCheck(
        criterion_start=start, criterion_start_rotated=start_rot, criterion=base.criterion,
        criterion_rotated=rotated.criterion, neighbour_agreement=float((nn_base == nn_rot).float().mean()),
        rotation_error=float((rotated.mapping - base.mapping @ R).norm()), rotation=R, unrotated=base,
        rotated=rotated)
