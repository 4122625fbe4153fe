"""Figures reported by the paper (Wang et al., Appl. Sci. 13(4):2548, 2023), in one place.

Tables of ours print these in a ``paper`` column beside our measurements; nothing here is ever used to
choose or tune anything.
"""

from __future__ import annotations

#: Table 1. The CoNLL figures are token counts that include one line per ``-DOCSTART-``
#: (203,621 + 946 = 204,567), with entity counts in brackets for dev and test; Weibo and People's
#: Daily figures are sentence counts (the paper's People's Daily train and dev differ from the HF release).
TABLE1: dict[tuple[str, str], tuple[int, str]] = {
    ("conll2003", "train"): (204_567, "tokens incl. -DOCSTART- lines"),
    ("conll2003", "dev"): (51_578, "tokens incl. -DOCSTART- lines; 5942 entities"),
    ("conll2003", "test"): (46_666, "tokens incl. -DOCSTART- lines; 5648 entities"),
    ("weibo", "train"): (1_350, "sentences"),
    ("weibo", "dev"): (270, "sentences"),
    ("weibo", "test"): (270, "sentences"),
    ("peoples_daily", "train"): (28_046, "sentences"),
    ("peoples_daily", "dev"): (4_636, "sentences"),
    ("peoples_daily", "test"): (4_636, "sentences"),
}

#: Table 2: the paper's training settings.
TABLE2: dict[str, float] = {"epochs": 3, "batch_size": 20, "lr": 4e-5, "dropout": 0.5, "proj_dim": 100}

#: Table 3 (People's Daily, P / R / F1): model -> (precision, recall, F1), as printed. The M-Bert row does not
#: add up (P 0.4222 and R 0.1843 give F1 0.2566, not 0.4693; its F1 is Table 4's baseline).
TABLE3: dict[str, tuple[float, float, float]] = {
    "crf": (0.5698, 0.2526, 0.3500),
    "pipeline": (0.6422, 0.3608, 0.4620),
    "word2vec": (0.3199, 0.5600, 0.3290),
    "elmo": (0.3870, 0.4428, 0.4131),
    "mbert": (0.4222, 0.1843, 0.4693),
}

#: Table 4 (F1): model -> {dataset: F1}.
TABLE4: dict[str, dict[str, float]] = {
    "baseline": {"weibo": 0.5032, "peoples_daily": 0.4693},
    "adv_att": {"weibo": 0.5217, "peoples_daily": 0.5208},
    "adv_att_pos": {"weibo": 0.5192, "peoples_daily": 0.5322},
}

#: Table 5 (F1), ablations of the full model.
TABLE5: dict[str, dict[str, float]] = {
    "full": {"weibo": 0.5192, "peoples_daily": 0.5322},
    "without_attention": {"weibo": 0.5012, "peoples_daily": 0.4834},
    "without_position": {"weibo": 0.5107, "peoples_daily": 0.5214},
}
