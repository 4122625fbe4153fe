"""Word-level adversarial alignment with Procrustes refinement (paper section 3.3, eqs 2-7).

The source space is mapped onto the target space by an orthogonal matrix ``U`` (eq. 2,
``V~_s = V_s U``), found without bilingual data as in MUSE (Conneau, Lample et al., ICLR 2018): a
discriminator ``D`` learns to tell mapped source vectors from target vectors with label-smoothed binary
cross-entropy (eqs 4-5), the mapping learns to fool it on flipped labels (eqs 6-7), ``U`` is kept
orthogonal by ``U <- (1 + b) U - b U U^T U`` after each mapping step, and then refined by the exact
orthogonal Procrustes solution (eq. 3) on a lexicon of CSLS mutual nearest neighbours. Model selection
uses the unsupervised mean-cosine criterion (:func:`xner_lib.lexicon.mean_cosine`).

Starting points (``starts``, not in the paper or MUSE). ``identity`` is eq. 2's initialisation, the paper's
method. ``similarity`` starts instead from the Procrustes solution (eq. 3) on a seed lexicon built without
any map from rotation-invariant similarity distributions (Artetxe et al., ACL 2018,
:func:`xner_lib.lexicon.similarity_lexicon`). The adversarial epochs and refinement then run from each start,
and the unsupervised criterion picks the winner. This was added because, measured on real e5 vectors,
adversarial training from the identity found a planted rotation in only 1 of 5 runs of 40k steps
(docs/method.md, "Alignment").

Conventions: rows are word vectors (``(V, d)``), sorted by descending frequency; the map acts on the
right (``x @ U``), so MUSE's ``W`` (acting on columns) is ``U^T``. ``D(x)`` is the probability that ``x``
is a *target* word (the paper's reading), so the smoothed labels are ``1 - eps`` for target words and
``eps`` for mapped source words. Both spaces must have the same dimension (an orthogonal map is square).

Public API
----------
``AlignConfig``
    Every number of the method (MUSE's defaults).
``OrthogonalMapping(dim)``, ``Discriminator(dim, config)``
    The two small modules.
``AdversarialAligner(source, target, config)``
    One method per equation: ``smoothed_labels`` (eqs 5, 7), ``discriminator_loss`` (eq. 4),
    ``mapping_loss`` (eq. 6), ``dis_step``, ``mapping_step``, ``orthogonalize``, ``procrustes`` (eq. 3);
    and ``build_lexicon``, ``criterion``, ``discriminator_accuracy``, ``train_adversarial``, ``refine``,
    ``fit``.
``align(source, target, config) -> AlignmentResult``
    Preprocess; per start and restart: adversarial epochs, refinement; best mapping by the criterion.
``AlignmentResult``
    ``mapping`` (d, d), ``lexicon`` (P, 2), ``history``, ``criterion``, ``map_source``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .lexicon import induce_lexicon, mean_cosine, normalize_embeddings, similarity_lexicon, unit_rows
from .progress import progress

STARTS = ("identity", "similarity")


@dataclass
class AlignConfig:
    """Hyper-parameters of the aligner; defaults are MUSE's ``unsupervised.py`` unless noted."""

    # discriminator (MUSE models.py)
    dis_hidden: int = 2048
    dis_layers: int = 2
    dis_input_dropout: float = 0.1
    dis_dropout: float = 0.0
    dis_leaky_slope: float = 0.2
    dis_lr: float = 0.1  # SGD
    dis_steps: int = 5  # discriminator steps per mapping step
    dis_smooth: float = 0.1  # eps of eqs 5 and 7
    dis_most_frequent: int = 75000  # sample discriminator batches from the most frequent words (0: all)
    # mapping
    map_lr: float = 0.1  # SGD
    map_beta: float = 0.001  # orthogonalisation step, U <- (1 + b) U - b U U^T U
    project_every: int = 1  # SVD-project U onto the orthogonal matrices every this many mapping steps (0: never)
    # adversarial schedule
    batch_size: int = 32  # words per language per step
    n_epochs: int = 5
    epoch_size: int = 1_000_000  # words per epoch (epoch_size // batch_size iterations)
    lr_decay: float = 0.98  # per epoch
    min_lr: float = 1e-6  # stop when the mapping lr falls below
    lr_shrink: float = 0.5  # halve the lr when the criterion drops (from the second drop on)
    # refinement and lexicon
    refinement_rounds: int = 5
    csls_k: int = 10
    lexicon_max_rank: int = 15000  # MUSE dico_max_rank
    lexicon_build: str = "mutual"  # MUSE S2T&T2S
    criterion_max_size: int = 10000
    # preprocessing: MUSE's normalize_embeddings (MUSE default ""; en-zh needs centring)
    normalize: str = "renorm,center,renorm"
    restarts: int = 1  # independent runs (seeds seed, seed+1, ...); the best criterion wins (not in MUSE)
    starts: str = "identity"  # comma-separated starting points: identity (eq. 2, MUSE), similarity (Artetxe)
    similarity_size: int = 4000  # words described by the similarity start (Artetxe et al.'s sim_size)
    seed: int = 0
    progress: bool = True  # xner_lib.progress over epochs (a bar in a terminal, one line in a notebook)

    def __post_init__(self) -> None:
        if not 0 <= self.dis_smooth < 0.5:
            raise ValueError(f"dis_smooth must be in [0, 0.5), got {self.dis_smooth}")
        for name in ("dis_hidden", "dis_steps", "batch_size", "csls_k", "restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dis_input_dropout", "dis_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.start_list or any(x not in STARTS for x in self.start_list):
            raise ValueError(f"starts must be a comma-separated list of {', '.join(STARTS)}, got {self.starts!r}")
        if self.lexicon_build not in ("mutual", "s2t", "t2s", "union"):
            raise ValueError(f"lexicon_build must be mutual, s2t, t2s or union, got {self.lexicon_build!r}")

    @property
    def start_list(self) -> list[str]:
        """``starts`` as a list, in order."""
        return [x.strip() for x in self.starts.split(",") if x.strip()]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for metrics.json and YAML)."""
        return asdict(self)


def smoothed_labels(is_target: Tensor, eps: float, flip: bool = False) -> Tensor:
    """Smoothed labels ``y = delta (1 - 2 eps) + eps`` (eqs 5, 7): (B,) bool -> (B,) float.

    ``delta`` is 1 for target words; ``flip`` gives the mapping's labels ``1 - y`` (eq. 6).
    """
    y = is_target.float() * (1 - 2 * eps) + eps
    return 1 - y if flip else y


def discriminator_loss(preds: Tensor, is_target: Tensor, eps: float) -> Tensor:
    """Discriminator loss with label smoothing (eqs 4-5): mean BCE of (B,) ``D(w)`` against ``y``."""
    return F.binary_cross_entropy(preds, smoothed_labels(is_target, eps).to(preds.dtype))


def mapping_loss(preds: Tensor, is_target: Tensor, eps: float) -> Tensor:
    """Mapping (generator) loss on flipped labels (eqs 6-7): mean BCE of (B,) ``D(w)`` against ``1 - y``."""
    return F.binary_cross_entropy(preds, smoothed_labels(is_target, eps, flip=True).to(preds.dtype))


@torch.no_grad()
def orthogonalize_(U: Tensor, beta: float) -> None:
    """Pull ``U`` towards the orthogonal manifold in place: ``U <- (1 + b) U - b U U^T U`` (MUSE's update,
    keeping eq. 3's constraint); ``b <= 0`` leaves it unchanged."""
    if beta > 0:
        U.copy_((1 + beta) * U - beta * U @ (U.T @ U))


@torch.no_grad()
def project_orthogonal_(U: Tensor) -> None:
    """Snap ``U`` in place to the nearest orthogonal matrix (eq. 3's SVD constraint): ``U = A B^T``,
    ``A S B^T = SVD(U)``."""
    A, _, Bt = torch.linalg.svd(U.double())
    U.copy_((A @ Bt).to(U))


class OrthogonalMapping(nn.Module):
    """The linear map of eq. 2, ``V~_s = V_s U``, with ``U`` (d, d) initialised to the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.U = nn.Parameter(torch.eye(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Map source vectors: (B, d) -> (B, d)."""
        return x @ self.U


class Discriminator(nn.Module):
    """MLP ``D(x)``: probability that ``x`` (d,) is a target word (eq. 4).

    Input dropout, ``dis_layers`` hidden layers of ``dis_hidden`` units with LeakyReLU and dropout, one
    sigmoid output (MUSE ``models.Discriminator``).
    """

    def __init__(self, dim: int, config: AlignConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(config.dis_input_dropout)]
        width = dim
        for _ in range(config.dis_layers):
            layers += [nn.Linear(width, config.dis_hidden), nn.LeakyReLU(config.dis_leaky_slope),
                       nn.Dropout(config.dis_dropout)]
            width = config.dis_hidden
        layers += [nn.Linear(width, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, d) vectors -> (B,) probabilities of being target words."""
        return self.net(x).view(-1)


@torch.no_grad()
def map_lexicon(mapped: Tensor, target: Tensor, config: AlignConfig) -> Tensor:
    """(P, 2) CSLS lexicon between mapped source rows ``V_s U`` and target rows under ``config``
    (``csls_k``, ``lexicon_max_rank``, ``lexicon_build``): refinement's dictionary and the result's lexicon."""
    return induce_lexicon(unit_rows(mapped), unit_rows(target), "csls", config.csls_k,
                          max_rank=config.lexicon_max_rank, build=config.lexicon_build)  # type: ignore[arg-type]


@torch.no_grad()
def map_criterion(mapped: Tensor, target: Tensor, config: AlignConfig) -> float:
    """The unsupervised model-selection criterion of mapped source rows ``V_s U`` against target rows: mean
    cosine of the top ``criterion_max_size`` CSLS pairs (:func:`~xner_lib.lexicon.mean_cosine`)."""
    return mean_cosine(mapped, target, "csls", config.csls_k, max_size=config.criterion_max_size,
                       max_rank=config.criterion_max_size)


@dataclass
class AlignmentResult:
    """Outcome of :func:`align`.

    Attributes:
        mapping: (d, d) orthogonal ``U`` of the best criterion, acting on *preprocessed* source rows.
        lexicon: (P, 2) ``(source id, target id)`` induced with ``mapping`` (CSLS, mutual), most confident
            first.
        criterion: mean-cosine criterion of ``mapping``.
        history: one dict per adversarial epoch and refinement round (stage, epoch, losses, accuracy,
            criterion, lr).
        source: (S, d) preprocessed source rows; ``target``: (T, d) preprocessed target rows.
        source_mean: (d,) mean subtracted from the source at preprocessing (``None`` without centring).
        candidates: one dict per start and restart: ``start``, ``run``, ``seed``, ``criterion`` and the
            (d, d) ``mapping`` that run kept; the result is the candidate of the best criterion.
        config: the configuration used.
    """

    mapping: Tensor
    lexicon: Tensor
    criterion: float
    history: list[dict[str, Any]]
    source: Tensor
    target: Tensor
    source_mean: Tensor | None
    config: AlignConfig = field(repr=False)
    candidates: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def chosen(self) -> dict[str, Any]:
        """The candidate whose mapping this result holds (best criterion)."""
        return max(self.candidates, key=lambda c: c["criterion"])

    def map_source(self, x: Tensor) -> Tensor:
        """Preprocess new source vectors (V, d) as the training ones were, then map them (eq. 2)."""
        x, _ = normalize_embeddings(x, self.config.normalize, mean=self.source_mean)
        return x @ self.mapping

    @property
    def mapped_source(self) -> Tensor:
        """(S, d) preprocessed source rows mapped by ``U``."""
        return self.source @ self.mapping


class AdversarialAligner:
    """MUSE-style trainer: adversarial steps and Procrustes refinement on two preprocessed matrices.

    Args:
        source: (S, d) source word vectors (already preprocessed; :func:`align` does it), rows by frequency.
        target: (T, d) target word vectors, same ``d``.
        config: hyper-parameters.
        generator: random source for batch sampling (seeded from ``config.seed`` when ``None``).
    """

    def __init__(self, source: Tensor, target: Tensor, config: AlignConfig,
                 generator: torch.Generator | None = None):
        _check_inputs(source, target)
        self.source, self.target, self.config = source.float(), target.float(), config
        dim = source.shape[1]
        self.mapping = OrthogonalMapping(dim)
        self.discriminator = Discriminator(dim, config)
        self.map_optimizer = torch.optim.SGD(self.mapping.parameters(), lr=config.map_lr)
        self.dis_optimizer = torch.optim.SGD(self.discriminator.parameters(), lr=config.dis_lr)
        self.generator = generator or torch.Generator().manual_seed(config.seed)
        self.n_mapping_steps = 0
        self.best_criterion = -math.inf
        self.best_mapping = self.mapping.U.detach().clone()
        self._criterion_dropped_before = False

    # ---- equations -------------------------------------------------------------------------------------

    def smoothed_labels(self, is_target: Tensor, flip: bool = False) -> Tensor:
        """Smoothed labels of eqs 5 and 7 (:func:`smoothed_labels`) with ``config.dis_smooth``."""
        return smoothed_labels(is_target, self.config.dis_smooth, flip)

    def discriminator_loss(self, preds: Tensor, is_target: Tensor) -> Tensor:
        """Discriminator loss with label smoothing (eqs 4-5), :func:`discriminator_loss`."""
        return discriminator_loss(preds, is_target, self.config.dis_smooth)

    def mapping_loss(self, preds: Tensor, is_target: Tensor) -> Tensor:
        """Mapping loss on flipped labels (eqs 6-7), :func:`mapping_loss`."""
        return mapping_loss(preds, is_target, self.config.dis_smooth)

    def sample_batch(self, grad: bool) -> tuple[Tensor, Tensor]:
        """A discriminator batch: ``batch_size`` mapped source and target rows drawn from the most frequent.

        Returns ``(x, is_target)``: (2B, d) vectors (mapped sources first; differentiable in ``U`` iff
        ``grad``) and (2B,) bool.
        """
        bs, mf = self.config.batch_size, self.config.dis_most_frequent
        n_src = self.source.shape[0] if mf <= 0 else min(mf, self.source.shape[0])
        n_tgt = self.target.shape[0] if mf <= 0 else min(mf, self.target.shape[0])
        src = self.source[torch.randint(n_src, (bs,), generator=self.generator)]
        tgt = self.target[torch.randint(n_tgt, (bs,), generator=self.generator)]
        with torch.set_grad_enabled(grad):
            mapped = self.mapping(src)
        is_target = torch.cat([torch.zeros(bs, dtype=torch.bool), torch.ones(bs, dtype=torch.bool)])
        return torch.cat([mapped, tgt]), is_target

    def dis_step(self) -> float:
        """One SGD step of ``D`` on the smoothed loss (eqs 4-5), ``U`` fixed; returns the loss."""
        self.discriminator.train()
        x, is_target = self.sample_batch(grad=False)
        loss = self.discriminator_loss(self.discriminator(x), is_target)
        if not torch.isfinite(loss):
            raise FloatingPointError("discriminator loss is not finite")
        self.dis_optimizer.zero_grad()
        loss.backward()
        self.dis_optimizer.step()
        return float(loss.detach())

    def mapping_step(self) -> float:
        """One SGD step of ``U`` to fool ``D`` (eqs 6-7), then :meth:`orthogonalize` (and, every
        ``project_every`` steps, :meth:`project_orthogonal`); returns the loss."""
        self.discriminator.eval()
        x, is_target = self.sample_batch(grad=True)
        loss = self.mapping_loss(self.discriminator(x), is_target)
        if not torch.isfinite(loss):
            raise FloatingPointError("mapping loss is not finite")
        self.map_optimizer.zero_grad()
        loss.backward()
        self.map_optimizer.step()
        self.orthogonalize()
        self.n_mapping_steps += 1
        if self.config.project_every > 0 and self.n_mapping_steps % self.config.project_every == 0:
            self.project_orthogonal()
        return float(loss.detach())

    def orthogonalize(self) -> None:
        """Pull ``U`` towards the orthogonal manifold (:func:`orthogonalize_`, ``b = config.map_beta``)."""
        orthogonalize_(self.mapping.U, self.config.map_beta)

    def project_orthogonal(self) -> None:
        """Snap ``U`` to the nearest orthogonal matrix (:func:`project_orthogonal_`, eq. 3)."""
        project_orthogonal_(self.mapping.U)

    @torch.no_grad()
    def procrustes(self, lexicon: Tensor) -> None:
        """Exact orthogonal solution on a lexicon (eq. 3): ``U = A B^T`` with ``A S B^T = SVD(X^T Y)``.

        ``X`` (P, d) and ``Y`` (P, d) are the source and target rows of the (P, 2) lexicon pairs; ``U``
        minimises ``||X U - Y||_F`` over orthogonal matrices.
        """
        if lexicon.dim() != 2 or lexicon.shape[1] != 2 or lexicon.shape[0] == 0:
            raise ValueError(f"lexicon must be a non-empty (P, 2) id tensor, got {tuple(lexicon.shape)}")
        X = self.source[lexicon[:, 0]].double()
        Y = self.target[lexicon[:, 1]].double()
        A, _, Bt = torch.linalg.svd(X.T @ Y)
        self.mapping.U.copy_((A @ Bt).to(self.mapping.U))

    # ---- lexicon, criterion, diagnostics ---------------------------------------------------------------

    @torch.no_grad()
    def build_lexicon(self) -> Tensor:
        """(P, 2) CSLS mutual-nearest-neighbour lexicon of the current map (refinement's dictionary)."""
        return map_lexicon(self.mapping(self.source), self.target, self.config)

    @torch.no_grad()
    def criterion(self) -> float:
        """Unsupervised model-selection criterion: mean cosine of the top CSLS translation pairs."""
        return map_criterion(self.mapping(self.source), self.target, self.config)

    @torch.no_grad()
    def discriminator_accuracy(self, batch_size: int = 4096) -> dict[str, float]:
        """Accuracy of ``D`` (eval mode) on every source and target row, and its mean predictions."""
        self.discriminator.eval()
        src = torch.cat([self.discriminator(self.mapping(self.source[i:i + batch_size]))
                         for i in range(0, self.source.shape[0], batch_size)])
        tgt = torch.cat([self.discriminator(self.target[i:i + batch_size])
                         for i in range(0, self.target.shape[0], batch_size)])
        correct = int((src < 0.5).sum()) + int((tgt >= 0.5).sum())
        return {"dis_acc": correct / (src.numel() + tgt.numel()), "dis_acc_src": float((src < 0.5).float().mean()),
                "dis_acc_tgt": float((tgt >= 0.5).float().mean()), "dis_pred_src": float(src.mean()),
                "dis_pred_tgt": float(tgt.mean())}

    def _keep_if_best(self, value: float) -> bool:
        if value > self.best_criterion:
            self.best_criterion = value
            self.best_mapping = self.mapping.U.detach().clone()
            return True
        return False

    def _update_lr(self, value: float) -> None:
        """MUSE's SGD schedule: decay every epoch, shrink when the criterion drops (from the second drop)."""
        c = self.config
        group = self.map_optimizer.param_groups[0]
        group["lr"] = max(c.min_lr, group["lr"] * c.lr_decay)
        if c.lr_shrink < 1 and value < self.best_criterion:
            if self._criterion_dropped_before:
                group["lr"] *= c.lr_shrink
            self._criterion_dropped_before = True

    # ---- loops -----------------------------------------------------------------------------------------

    def train_adversarial(self) -> list[dict[str, Any]]:
        """Adversarial epochs (``dis_steps`` discriminator steps per mapping step); keeps the best ``U``.

        Returns one history row per epoch.
        """
        c = self.config
        history = []
        n_iter = max(1, c.epoch_size // c.batch_size)
        for epoch in progress(range(c.n_epochs), desc="adversarial", unit="epochs", disable=not c.progress):
            dis_losses, map_losses = [], []
            for _ in range(n_iter):
                dis_losses += [self.dis_step() for _ in range(c.dis_steps)]
                map_losses.append(self.mapping_step())
            value = self.criterion()
            row = {"stage": "adversarial", "epoch": epoch, "dis_loss": sum(dis_losses) / len(dis_losses),
                   "map_loss": sum(map_losses) / len(map_losses), "criterion": value,
                   "lr": self.map_optimizer.param_groups[0]["lr"], "orth_error": self.orthogonality_error(),
                   **self.discriminator_accuracy()}
            history.append(row)
            self._update_lr(value)
            self._keep_if_best(value)
            if self.map_optimizer.param_groups[0]["lr"] < c.min_lr:
                break
        return history

    def refine(self) -> list[dict[str, Any]]:
        """Procrustes refinement from the best map: rounds of lexicon induction then eq. 3; keeps the best."""
        c = self.config
        history = []
        with torch.no_grad():
            self.mapping.U.copy_(self.best_mapping)
        for rnd in progress(range(c.refinement_rounds), desc="refinement", unit="rounds",
                            disable=not c.progress):
            lexicon = self.build_lexicon()
            if lexicon.shape[0] == 0:
                break
            self.procrustes(lexicon)
            value = self.criterion()
            self._keep_if_best(value)
            history.append({"stage": "refinement", "epoch": rnd, "lexicon_size": int(lexicon.shape[0]),
                            "criterion": value, "orth_error": self.orthogonality_error()})
        return history

    def orthogonality_error(self) -> float:
        """``max |U^T U - I|`` of the current map."""
        U = self.mapping.U.detach()
        return float((U.T @ U - torch.eye(U.shape[0])).abs().max())

    def fit(self) -> list[dict[str, Any]]:
        """Criterion at the start (``U = I`` unless set before), adversarial epochs, refinement; leaves the
        best ``U`` in place."""
        self._keep_if_best(self.criterion())
        history = [{"stage": "init", "epoch": 0, "criterion": self.best_criterion}]
        if self.config.n_epochs > 0:
            history += self.train_adversarial()
        history += self.refine()
        with torch.no_grad():
            self.mapping.U.copy_(self.best_mapping)
        return history


def _check_inputs(source: Tensor, target: Tensor) -> None:
    for name, x in (("source", source), ("target", target)):
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[0] < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a 2-D float tensor with at least 2 rows (words x dims), got {shape}")
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"source and target must have the same dimension for an orthogonal map, got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")


def preprocess(source: Tensor, target: Tensor, normalize: str, source_mean: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None, Tensor]:
    """Both spaces as :func:`align` maps them: float32 copies under ``normalize`` (MUSE's
    ``normalize_embeddings``). Returns ``(source rows, the mean the source was centred on, target rows)``; with
    ``source_mean`` the source is centred on it rather than on its own mean (02's saved ``source_mean.npy``)."""
    src, mean = normalize_embeddings(source.detach().float(), normalize, mean=source_mean)
    tgt, _ = normalize_embeddings(target.detach().float(), normalize)
    return src, mean, tgt


def align(source: Tensor, target: Tensor, config: AlignConfig | None = None) -> AlignmentResult:
    """Align ``source`` (S, d) onto ``target`` (T, d) without supervision; returns the best map and lexicon.

    Preprocesses both with ``config.normalize``, then, for each of ``config.starts`` (``identity``: ``U = I``,
    eq. 2; ``similarity``: eq. 3 on :func:`~xner_lib.lexicon.similarity_lexicon`), runs
    :meth:`AdversarialAligner.fit` ``config.restarts`` times (seeds ``seed``, ``seed + 1``, ...) and keeps
    the run with the best criterion; every run is listed in ``candidates``. Each run has a private random
    state (the global torch RNG is left as it was), so results are reproducible.
    """
    config = copy.deepcopy(config) if config is not None else AlignConfig()
    _check_inputs(source, target)
    src, src_mean, tgt = preprocess(source, target, config.normalize)
    seed_lexicon = (similarity_lexicon(src, tgt, config.similarity_size, config.csls_k)
                    if "similarity" in config.start_list else None)
    best: AdversarialAligner | None = None
    history: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    for start in config.start_list:
        for run in range(config.restarts):
            seed = config.seed + run
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                trainer = AdversarialAligner(src, tgt, config, generator=torch.Generator().manual_seed(seed))
                if start == "similarity":
                    assert seed_lexicon is not None
                    trainer.procrustes(seed_lexicon)
                history += [{"start": start, "run": run, **row} for row in trainer.fit()]
            candidates.append({"start": start, "run": run, "seed": seed, "criterion": trainer.best_criterion,
                               "mapping": trainer.best_mapping.clone()})
            if best is None or trainer.best_criterion > best.best_criterion:
                best = trainer
    assert best is not None
    return AlignmentResult(mapping=best.mapping.U.detach().clone(), lexicon=best.build_lexicon(),
                           criterion=best.best_criterion, history=history, source=src, target=tgt,
                           source_mean=src_mean, config=config, candidates=candidates)
