"""Tests of the word-level adversarial aligner (paper 3.3, eqs 2-7), CSLS retrieval and lexicon evaluation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from xner_lib.aligner import AdversarialAligner, AlignConfig, Discriminator, OrthogonalMapping, align
from xner_lib.alignment_checks import identity_precision, random_rotation, rotated_target_check, rotation_recovery
from xner_lib.data import DataFormatError
from xner_lib.lexicon import (
    csls,
    csls_penalties,
    csls_scores,
    induce_lexicon,
    knn_mean_similarity,
    mean_cosine,
    nearest_neighbours,
    normalize_embeddings,
    similarity_distributions,
    similarity_lexicon,
    unit_rows,
)
from xner_lib.lexicon_eval import read_dictionary, translation_precision


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def clustered_vectors(n: int = 2000, dim: int = 64, clusters: int = 40, seed: int = 0) -> torch.Tensor:
    """(n, dim) synthetic 'word vectors': a Gaussian mixture with Zipfian cluster weights (a few big clusters,
    many small, like word frequencies) and a decaying spectrum (std 1 -> 0.01 over the axes), so a rotation of
    it is identifiable: random centres, within-cluster spread a quarter of the centres' spread."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, dim)
    centres = torch.randn(clusters, dim, generator=g) * spectrum * 2
    weights = 1.0 / torch.arange(1, clusters + 1).float() ** 1.5
    labels = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=g)
    return centres[labels] + torch.randn(n, dim, generator=g) * spectrum * 0.5


def _fast_config(**overrides) -> AlignConfig:
    """A small discriminator and short epochs: the method's logic with test-sized numbers, and the profiles'
    orthogonality setting (configs/cpu.yaml and paper.yaml: ``align_project_every: 0``, MUSE's
    ``(1+b)U - bUU^TU`` step alone, no SVD snap)."""
    base = dict(dis_hidden=128, batch_size=32, epoch_size=16_000, n_epochs=2, refinement_rounds=10, progress=False,
                project_every=0)
    return AlignConfig(**{**base, **overrides})


# ---- CSLS and lexicon induction -------------------------------------------------------------------------


def brute_csls(src: torch.Tensor, tgt: torch.Tensor, k: int) -> torch.Tensor:
    """CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y) (Conneau et al. 2018), one number at a time in Python floats."""

    def cos(a, b):
        return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))

    def r(vec, space):  # mean cosine of vec to its k nearest rows of space
        sims = sorted((cos(vec, row) for row in space), reverse=True)
        return sum(sims[:k]) / k

    r_src, r_tgt = [r(x, tgt) for x in src], [r(y, src) for y in tgt]
    return torch.tensor([[2 * cos(x, y) - r_src[i] - r_tgt[j] for j, y in enumerate(tgt)] for i, x in enumerate(src)])


def test_csls_matches_brute_force():
    src, tgt, k = _unit(7, 5, 1), _unit(9, 5, 2), 3
    expected = brute_csls(src, tgt, k)
    assert torch.allclose(csls_scores(src, tgt, k), expected, atol=1e-5)
    ids = torch.tensor([4, 0])
    assert torch.allclose(csls_scores(src, tgt, k, src_ids=ids), expected[ids], atol=1e-5)
    r_src, r_tgt = csls_penalties(src, tgt, k)
    assert torch.allclose(csls(src @ tgt.T, r_src, r_tgt), expected, atol=1e-5)


def test_nearest_neighbours_rank_by_csls_and_by_cosine():
    src, tgt = _unit(30, 8, 3), _unit(40, 8, 4)
    expected = brute_csls(src, tgt, 5).topk(4, dim=1)
    for batch_size in (1024, 7):  # one batch, and batches that split the queries
        scores, ids = nearest_neighbours(src, tgt, "csls", k=5, topk=4, batch_size=batch_size)
        assert torch.equal(ids, expected.indices)
        assert torch.allclose(scores, expected.values, atol=1e-5)
    _, nn_ids = nearest_neighbours(src, tgt, "nn", topk=1)
    assert torch.equal(nn_ids[:, 0], (src @ tgt.T).argmax(dim=1))


def test_every_csls_score_goes_through_the_one_function(monkeypatch):
    """One place per idea: retrieval, lexicon induction, the criterion and the similarity start all score
    with lexicon.csls, so changing it changes them all."""
    from xner_lib import lexicon

    calls: list[int] = []
    real = lexicon.csls

    def spy(cos, r_src, r_tgt):
        calls.append(cos.shape[0])
        return real(cos, r_src, r_tgt)

    monkeypatch.setattr(lexicon, "csls", spy)
    src, tgt = _unit(30, 8, 3), _unit(40, 8, 4)
    consumers = {"csls_scores": lambda: csls_scores(src, tgt, 5),
                 "nearest_neighbours": lambda: nearest_neighbours(src, tgt, "csls", k=5),
                 "induce_lexicon": lambda: induce_lexicon(src, tgt, "csls", k=5),
                 "mean_cosine": lambda: mean_cosine(src, tgt, "csls", k=5),
                 "similarity_lexicon": lambda: similarity_lexicon(src, tgt, size=20),
                 "identity_precision": lambda: identity_precision(src, tgt[:30])}
    for name, run in consumers.items():
        calls.clear()
        run()
        assert calls, f"{name} scored CSLS without lexicon.csls"
    calls.clear()
    nearest_neighbours(src, tgt, "nn", k=5)
    assert not calls


def test_knn_mean_similarity_is_mean_of_top_k_cosines():
    q, keys = _unit(6, 4, 5), _unit(10, 4, 6)
    expected = torch.stack([(q[i] @ keys.T).sort(descending=True).values[:3].mean() for i in range(6)])
    assert torch.allclose(knn_mean_similarity(q, keys, 3), expected, atol=1e-6)


def test_induced_lexicon_pairs_are_mutual_csls_nearest_neighbours():
    src, tgt = _unit(60, 6, 7), _unit(50, 6, 8)
    lexicon = induce_lexicon(src, tgt, "csls", k=5, max_rank=0, build="mutual")
    full = brute_csls(src, tgt, 5)
    assert lexicon.shape[0] > 0
    for i, j in lexicon.tolist():
        assert full[i].argmax() == j and full[:, j].argmax() == i
    # and every mutual pair is found
    mutual = {(i, int(full[i].argmax())) for i in range(60) if full[:, full[i].argmax()].argmax() == i}
    assert {tuple(p) for p in lexicon.tolist()} == mutual


def test_lexicon_max_rank_keeps_only_mutual_pairs_among_the_frequent_words():
    src = _unit(60, 6, 9)
    tgt = unit_rows(src[:50] + 0.3 * torch.randn(50, 6, generator=torch.Generator().manual_seed(10)))
    full = brute_csls(src, tgt, 10)  # penalties over the whole vocabularies, as MUSE
    best_t, best_s = full.argmax(dim=1), full.argmax(dim=0)
    s2t = {(i, int(best_t[i])) for i in range(20)}  # the 20 most frequent sources, searched over all targets
    t2s = {(int(best_s[j]), j) for j in range(20)}
    expected = {(i, j) for i, j in s2t & t2s if i < 20 and j < 20}
    unlimited = {tuple(p) for p in induce_lexicon(src, tgt, max_rank=0).tolist()}
    assert len(expected) >= 10 and any(max(p) >= 20 for p in unlimited)  # the limit has something to remove
    assert {tuple(p) for p in induce_lexicon(src, tgt, max_rank=20).tolist()} == expected
    one_way = {(i, j) for i, j in s2t if j < 20}  # a frequent source whose best target is rare is dropped
    assert len(one_way) < len(s2t)
    assert {tuple(p) for p in induce_lexicon(src, tgt, max_rank=20, build="s2t").tolist()} == one_way


def test_mean_cosine_is_one_for_identical_spaces_and_lower_for_unrelated():
    x = _unit(300, 16, 11)
    assert mean_cosine(x, x) == pytest.approx(1.0, abs=1e-5)
    assert mean_cosine(x, _unit(300, 16, 12)) < 0.9


def test_normalize_embeddings_centres_then_gives_unit_rows():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(13)) + 3
    out, mean = normalize_embeddings(x, "renorm,center,renorm")
    assert torch.allclose(out.norm(dim=1), torch.ones(50), atol=1e-5)
    unit = x / x.norm(dim=1, keepdim=True)
    assert mean is not None and torch.allclose(mean, unit.mean(dim=0))  # centred after the first renorm
    assert torch.allclose(out, unit_rows(unit - unit.mean(dim=0)), atol=1e-6)
    again, _ = normalize_embeddings(x, "renorm,center,renorm", mean=mean)
    assert torch.allclose(again, out)
    with pytest.raises(ValueError, match="unknown normalisation step"):
        normalize_embeddings(x, "whiten")


def test_retrieval_rejects_mismatched_dimensions_with_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(5, 2\)"):
        csls_scores(torch.randn(4, 3), torch.randn(5, 2))


# ---- the equations ------------------------------------------------------------------------------------


def test_smoothed_labels_are_0_9_for_target_and_0_1_for_source_and_flipped_for_mapping():
    trainer = AdversarialAligner(_unit(10, 4, 14), _unit(10, 4, 15), _fast_config(dis_smooth=0.1))
    is_target = torch.tensor([False, False, True])
    assert torch.allclose(trainer.smoothed_labels(is_target), torch.tensor([0.1, 0.1, 0.9]))
    assert torch.allclose(trainer.smoothed_labels(is_target, flip=True), torch.tensor([0.9, 0.9, 0.1]))
    preds = torch.tensor([0.3, 0.6, 0.8])
    pairs = list(zip([0.1, 0.1, 0.9], preds.tolist(), strict=True))
    eq4 = -sum(y * math.log(p) + (1 - y) * math.log(1 - p) for y, p in pairs)
    eq6 = -sum((1 - y) * math.log(p) + y * math.log(1 - p) for y, p in pairs)
    assert float(trainer.discriminator_loss(preds, is_target)) == pytest.approx(eq4 / 3, rel=1e-5)
    assert float(trainer.mapping_loss(preds, is_target)) == pytest.approx(eq6 / 3, rel=1e-5)


def test_discriminator_is_muse_mlp_with_sigmoid_output():
    config = AlignConfig(dis_hidden=16)
    disc = Discriminator(8, config)
    linears = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 1)]
    assert isinstance(disc.net[0], torch.nn.Dropout) and disc.net[0].p == 0.1
    assert isinstance(disc.net[-1], torch.nn.Sigmoid)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    out = disc.eval()(x)  # eval: no dropout; LeakyReLU slope 0.2 (MUSE)
    hidden = torch.nn.functional.leaky_relu(linears[1](torch.nn.functional.leaky_relu(linears[0](x), 0.2)), 0.2)
    assert torch.allclose(out, torch.sigmoid(linears[2](hidden)).view(5), atol=1e-6)


def test_mapping_starts_at_identity_and_maps_rows_on_the_right():
    mapping = OrthogonalMapping(4)
    assert torch.equal(mapping.U.detach(), torch.eye(4))
    with torch.no_grad():
        mapping.U.copy_(random_rotation(4, 0))
    x = torch.randn(3, 4)
    assert torch.allclose(mapping(x), x @ mapping.U)


def test_dis_step_updates_only_the_discriminator_and_mapping_step_only_the_map():
    trainer = AdversarialAligner(_unit(40, 6, 16), _unit(40, 6, 17), _fast_config(dis_hidden=32))
    U0 = trainer.mapping.U.detach().clone()
    W0 = [p.detach().clone() for p in trainer.discriminator.parameters()]
    trainer.dis_step()
    assert torch.equal(trainer.mapping.U.detach(), U0)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(W0, trainer.discriminator.parameters(), strict=True))
    W1 = [p.detach().clone() for p in trainer.discriminator.parameters()]
    trainer.mapping_step()
    assert not torch.equal(trainer.mapping.U.detach(), U0)
    assert all(torch.equal(a, b.detach()) for a, b in zip(W1, trainer.discriminator.parameters(), strict=True))


def test_orthogonalize_update_drives_singular_values_to_one():
    trainer = AdversarialAligner(_unit(10, 6, 18), _unit(10, 6, 19), _fast_config(map_beta=0.1))
    A = random_rotation(6, 1)
    B = random_rotation(6, 2)
    with torch.no_grad():
        trainer.mapping.U.copy_(A @ torch.diag(torch.linspace(0.8, 1.2, 6)) @ B.T)
    before = trainer.orthogonality_error()
    for _ in range(100):
        trainer.orthogonalize()
    assert trainer.orthogonality_error() < 1e-4 < before


def test_procrustes_recovers_an_exact_rotation_from_pairs():
    x = _unit(100, 8, 20)
    R = random_rotation(8, 3)
    trainer = AdversarialAligner(x, x @ R, _fast_config())
    trainer.procrustes(torch.stack([torch.arange(100), torch.arange(100)], dim=1))
    assert torch.allclose(trainer.mapping.U.detach(), R, atol=1e-5)
    # eq. 3 brute force: no other orthogonal map fits better than the SVD solution
    noisy = x @ R + 0.05 * torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    trainer = AdversarialAligner(x, noisy, _fast_config())
    trainer.procrustes(torch.stack([torch.arange(100), torch.arange(100)], dim=1))
    best = float((x @ trainer.mapping.U.detach() - noisy).norm())
    for s in range(20):
        assert best <= float((x @ random_rotation(8, 100 + s) - noisy).norm()) + 1e-6
    assert best <= float((x @ R - noisy).norm()) + 1e-5


def test_one_orthogonalize_step_moves_each_singular_value_by_the_muse_update():
    """At MUSE's (and the profiles') b = 0.001, one step maps U = A diag(s) B^T to A diag((1+b)s - bs^3) B^T:
    same singular vectors, each singular value pulled towards 1."""
    config = _fast_config()
    assert config.map_beta == 0.001  # the default the profiles use
    trainer = AdversarialAligner(_unit(10, 6, 18), _unit(10, 6, 19), config)
    A, B = random_rotation(6, 1).double(), random_rotation(6, 2).double()
    sv = torch.linspace(0.7, 1.3, 6, dtype=torch.float64)
    with torch.no_grad():
        trainer.mapping.U.copy_(A @ torch.diag(sv) @ B.T)
    trainer.orthogonalize()
    b = config.map_beta
    expected = A @ torch.diag((1 + b) * sv - b * sv**3) @ B.T
    assert torch.allclose(trainer.mapping.U.detach().double(), expected, atol=1e-6)
    assert float((trainer.mapping.U.detach().double() - A @ torch.diag(sv) @ B.T).abs().max()) > 1e-4  # it moved


def _orth_frobenius(U: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(U.T @ U - torch.eye(U.shape[0])))


def test_orthogonalize_step_alone_keeps_the_map_near_orthogonal_through_adversarial_training(monkeypatch):
    """The profiles' setting, project_every = 0: only the (1+b)U - bUU^TU step after each of 1000 mapping steps
    (lr 0.1, b = 0.001) holds U near the orthogonal matrices. Measured on 8 seeds: ||U^T U - I||_F 0.09-0.17
    with the step and 0.24-0.40 without it (map_beta = 0), so 0.2 separates them. Source and target are the
    same space, so the mapping gradient is the discriminator's noise, a random walk the step must undo."""
    torch.set_num_threads(1)

    def no_snap(self):
        raise AssertionError("project_every = 0 must never snap U by SVD")

    monkeypatch.setattr(AdversarialAligner, "project_orthogonal", no_snap)
    x, _ = normalize_embeddings(clustered_vectors(400, 32, 10, seed=1))
    config = _fast_config(dis_hidden=16, dis_steps=1, epoch_size=1000 * 32, n_epochs=1)
    assert (config.project_every, config.map_beta, config.map_lr) == (0, 0.001, 0.1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the discriminator's initialisation
        trainer = AdversarialAligner(x, x, config)
        history = trainer.train_adversarial()
    assert trainer.n_mapping_steps == 1000
    U = trainer.mapping.U.detach()
    assert _orth_frobenius(U) < 0.2
    assert history[-1]["orth_error"] == pytest.approx(float((U.T @ U - torch.eye(32)).abs().max()))


def test_project_every_one_snaps_the_map_to_an_orthogonal_matrix_after_every_step():
    """The code default (project_every = 1): U is orthogonal to float precision after every mapping step of a
    run on a rotated copy, where the same run with the step alone (project_every = 0) drifts past 1e-2."""
    torch.set_num_threads(1)
    x = clustered_vectors(400, 16, 10, seed=1)
    worst = {}
    for project_every in (1, 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            trainer = AdversarialAligner(unit_rows(x), unit_rows(x @ random_rotation(16, 4)),
                                         _fast_config(dis_hidden=16, project_every=project_every))
            errors = []
            for _ in range(50):
                trainer.dis_step()
                trainer.mapping_step()
                errors.append(trainer.orthogonality_error())
        worst[project_every] = max(errors)
    assert worst[1] < 1e-5 < 1e-2 < worst[0]


def test_alignment_is_deterministic_and_leaves_global_rng_alone():
    x = clustered_vectors(300, 8, 6, seed=2)
    y = x @ random_rotation(8, 5)
    config = _fast_config(epoch_size=640, n_epochs=1, dis_hidden=16, refinement_rounds=1)
    state = torch.get_rng_state()
    a, b = align(x, y, config), align(x, y, config)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.mapping, b.mapping) and a.history == b.history


def test_aligner_rejects_spaces_of_different_dimension_with_shapes():
    with pytest.raises(ValueError, match=r"\(10, 4\) and \(10, 5\)"):
        AdversarialAligner(torch.randn(10, 4), torch.randn(10, 5), AlignConfig())


def test_config_rejects_smoothing_outside_zero_to_half():
    with pytest.raises(ValueError, match="dis_smooth"):
        AlignConfig(dis_smooth=0.5)


# ---- recovery checks ----------------------------------------------------------------------------------


def test_random_rotation_is_seeded_and_orthogonal_with_det_one():
    R = random_rotation(12, seed=7)
    assert torch.allclose(R.T @ R, torch.eye(12), atol=1e-5)
    assert float(torch.linalg.det(R)) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(R, random_rotation(12, seed=7)) and not torch.equal(R, random_rotation(12, seed=8))


@pytest.mark.xfail(strict=True, reason=(
    "known limitation, measured (docs/method.md, Alignment): on this Gaussian mixture adversarial training from "
    "U = I (the paper's method) matches clusters, not words: P@1 0.0 here, 0.0005 even after 40k steps. On real "
    "e5 vectors it recovered check (a)'s rotation in 1 of 5 40k-step runs (benchmarks/adversarial_seeds.py); the "
    "similarity start recovers this one (next tests). Strict, so a fix turns this red"))
def test_planted_rotation_is_recovered_by_adversarial_training_from_identity():
    torch.set_num_threads(1)
    x = clustered_vectors(2000, 64, 40, seed=0)
    noisy = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    result = rotation_recovery(x, noisy, _fast_config(starts="identity"), seed=0)
    assert result.frobenius_identity > 10  # a random rotation, far from the start
    assert result.p_at_1 >= 0.9
    assert result.frobenius < 1.0


def test_similarity_distributions_do_not_change_under_rotation():
    x, _ = normalize_embeddings(clustered_vectors(500, 32, 10, seed=5))
    R = random_rotation(32, 3)
    a, b = similarity_distributions(x, 400), similarity_distributions(x @ R, 400)
    assert a.shape == (400, 400)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a.norm(dim=1), torch.ones(400), atol=1e-5)
    assert not torch.allclose(a, similarity_distributions(x[torch.randperm(500)], 400), atol=1e-2)


def test_similarity_lexicon_pairs_words_of_a_rotated_copy_without_a_map():
    x, _ = normalize_embeddings(clustered_vectors(600, 32, 12, seed=6))
    lexicon = similarity_lexicon(x, x @ random_rotation(32, 4), size=500)
    assert lexicon.shape[1] == 2 and int(lexicon.max()) < 500
    assert float((lexicon[:, 0] == lexicon[:, 1]).float().mean()) > 0.5


def test_planted_rotation_is_recovered_with_the_similarity_start_chosen_by_the_criterion():
    torch.set_num_threads(1)
    x = clustered_vectors(2000, 64, 40, seed=0)
    noisy = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    result = rotation_recovery(x, noisy, _fast_config(starts="identity,similarity"), seed=0)
    assert result.frobenius_identity > 10  # a Haar-random rotation, far from the start
    assert result.p_at_1 >= 0.9
    assert result.frobenius < 1.0
    U = result.alignment.mapping
    assert torch.allclose(U.T @ U, torch.eye(64), atol=1e-3)
    rows = {row["start"]: row for row in result.candidates}
    assert set(rows) == {"identity", "similarity"}  # both reported, the paper's start included
    assert result.alignment.chosen["start"] == "similarity"
    assert result.criterion == pytest.approx(max(row["criterion"] for row in result.candidates))
    assert rows["similarity"]["p_at_1"] == pytest.approx(result.p_at_1)
    assert rows["identity"]["criterion"] < rows["similarity"]["criterion"]


def test_similarity_start_finds_the_same_neighbours_in_a_rotated_target():
    x = clustered_vectors(600, 16, 12, seed=7)
    y = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    config = _fast_config(starts="similarity", n_epochs=0, refinement_rounds=3)
    check = rotated_target_check(x, y, config, seed=1, n_queries=300)
    assert check.neighbour_agreement > 0.95
    assert check.criterion_rotated == pytest.approx(check.criterion, abs=1e-3)


def test_restarts_and_starts_are_all_listed_and_the_best_criterion_wins():
    x = clustered_vectors(300, 8, 6, seed=4)
    y = x @ random_rotation(8, 6)
    config = _fast_config(epoch_size=640, n_epochs=1, dis_hidden=16, refinement_rounds=1, restarts=2,
                          starts="identity,similarity", similarity_size=200)
    result = align(x, y, config)
    assert [(c["start"], c["run"]) for c in result.candidates] == [
        ("identity", 0), ("identity", 1), ("similarity", 0), ("similarity", 1)]
    assert {(row["start"], row["run"]) for row in result.history} == {(c["start"], c["run"]) for c in result.candidates}
    assert result.criterion == pytest.approx(max(c["criterion"] for c in result.candidates))
    assert torch.equal(result.mapping, result.chosen["mapping"])


def test_config_rejects_an_unknown_start():
    with pytest.raises(ValueError, match="starts"):
        AlignConfig(starts="identity,random")
    with pytest.raises(ValueError, match="starts"):
        AlignConfig(starts="")


# ---- dictionary evaluation ----------------------------------------------------------------------------


def test_dictionary_reader_names_file_and_line_of_a_malformed_line(tmp_path):
    path = tmp_path / "en-zh.txt"
    path.write_text("cat 猫\ndog\n\nbig dog 大狗\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        read_dictionary(path)
    assert f"{path}:2:" in str(err.value) and f"{path}:4:" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 2 malformed"):
        read = read_dictionary(path, on_error="warn")
    assert read.pairs == [("cat", "猫")] and len(read.bad_lines) == 2


def test_translation_precision_counts_missing_pairs_and_allows_any_gold_translation(tmp_path):
    src_words = [f"s{i}" for i in range(20)]
    tgt_words = [f"t{i}" for i in range(20)]
    x = _unit(20, 8, 21)
    ranking = {"nn": x[11] @ x.T, "csls": brute_csls(x, x, 10)[11]}  # of s11's targets (the same space)
    gold = int(ranking["nn"].argsort(descending=True)[3])  # s11's 4th-nearest target by cosine: wrong at 1
    path = tmp_path / "dico.txt"
    # s0..s9 -> t0..t9 (correct); s10 has a wrong and a right translation; two pairs are out of vocabulary
    lines = [f"s{i} t{i}" for i in range(10)] + ["s10 t3", "s10 t10", f"s11 t{gold}", "zzz t1", "s1 yyy"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="2 of 15 pairs"):
        scores = translation_precision(path, src_words, x, tgt_words, x.clone())
    assert scores.n_missing == 2 and scores.missing_source == 1 and scores.missing_target == 1
    assert scores.n_queries == 12 and scores.n_pairs == 13
    # s0..s10 find themselves first; s11 scores at k when its gold is among its k best targets
    for method in ("nn", "csls"):
        rank = int((ranking[method] > ranking[method][gold]).sum()) + 1
        assert 1 < rank <= 5, (method, rank)  # so P@1 and P@5 expect different numbers
        for k in (1, 5, 10):
            assert scores.precision[method][k] == pytest.approx((11 + (rank <= k)) / 12), (method, k)


def test_translation_precision_rejects_word_list_of_wrong_length():
    with pytest.raises(ValueError, match="3 words for an embedding matrix with 4 rows"):
        translation_precision([("a", "b")], ["a", "c", "d"], torch.randn(4, 3), ["b"], torch.randn(1, 3))


def test_identity_precision_is_one_for_the_true_map():
    x = _unit(200, 16, 22)
    R = random_rotation(16, 9)
    assert identity_precision(x @ R, x @ R) == 1.0
    assert identity_precision(x, x @ R) < 0.5


def _csls_best(src: torch.Tensor, tgt: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Each source's CSLS-best target and the cosine to it, straight from the definition (unit rows)."""
    cos = src @ tgt.T
    score = 2 * cos - cos.topk(k, dim=1).values.mean(1)[:, None] - cos.topk(k, dim=0).values.mean(0)[None, :]
    best = score.argmax(dim=1)
    return best, cos[torch.arange(src.shape[0]), best]


def test_rotated_target_check_reports_the_numbers_its_two_alignments_determine():
    x = clustered_vectors(300, 8, 6, seed=3)
    config = _fast_config(epoch_size=640, n_epochs=1, dis_hidden=16, refinement_rounds=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = rotated_target_check(x, x, config, seed=1, n_queries=100)
    R = random_rotation(8, 1)
    assert torch.equal(check.rotation, R)
    base, rot = check.unrotated, check.rotated
    xn, _ = normalize_embeddings(x)
    xr, _ = normalize_embeddings(x @ R)
    assert torch.equal(base.target, xn) and torch.equal(rot.target, xr)
    # identical spaces: aligned at U = I from the start, and nothing beats it
    assert check.criterion_start == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(base.mapping, torch.eye(8), atol=1e-5)
    assert check.criterion == pytest.approx(check.criterion_start, abs=1e-6)
    # the rotated start is the mean cosine of every source to its CSLS-best target under U = I (300 < 10000)
    assert check.criterion_start_rotated == pytest.approx(float(_csls_best(xn, xr)[1].mean()), abs=1e-5)
    assert check.criterion_rotated == pytest.approx(max(row["criterion"] for row in rot.history), abs=1e-6)
    nn_base = _csls_best(unit_rows(xn @ base.mapping), xn)[0][:100]  # penalties over all 300, 100 queried
    nn_rot = _csls_best(unit_rows(xn @ rot.mapping), xr)[0][:100]
    assert check.neighbour_agreement == pytest.approx(float((nn_base == nn_rot).float().mean()))
    assert check.rotation_error == pytest.approx(float((rot.mapping - base.mapping @ R).norm()), abs=1e-5)


def test_rotated_target_check_of_identical_spaces_agrees_fully_when_the_rotation_is_found():
    """The similarity start is rotation invariant: on a rotated copy of the same space it finds U R exactly, so
    every neighbour agrees and the criteria match."""
    x = clustered_vectors(300, 8, 6, seed=3)
    check = rotated_target_check(x, x, _fast_config(starts="similarity", n_epochs=0, refinement_rounds=2), seed=1,
                                 n_queries=100)
    assert check.neighbour_agreement == 1.0
    assert check.rotation_error < 1e-4
    assert check.criterion_rotated == pytest.approx(check.criterion, abs=1e-5)
