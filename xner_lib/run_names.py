"""How runs are named: the one place each convention is spelt (run directories under ``runs/`` and
``checkpoints/``, the shared protocol's prefix, the few-shot curve's suffix). Imported by the experiment driver,
the ``runs`` command and the report, none of which spell a name by hand."""

from __future__ import annotations

import re

#: the prefix of a run of Table 5's ``shared`` protocol (the seed's fine-tuned baseline encoder frozen, issue
#: 12) and of the few-shot curve under it: ``shared-<variant>``
SHARED_PREFIX = "shared-"

#: a run name of the few-shot curve (issue 14), ``<variant>-fs<size>``; group 1 is the size
FEW_SHOT_NAME = re.compile(r"-fs([0-9]+)$")


def run_name(variant: str, seed: int) -> str:
    """The directory of a (variant, seed) run under ``runs/`` and ``checkpoints/``: ``<variant>-seed<seed>``
    (the variant with its protocol prefix, e.g. ``shared-adv_att_pos-seed2``)."""
    return f"{variant}-seed{seed}"


def few_shot_name(variant: str, size: int) -> str:
    """The few-shot curve's variant of ``variant`` with ``size`` labelled Chinese sentences added:
    ``<variant>-fs<size>`` (matched by :data:`FEW_SHOT_NAME`)."""
    return f"{variant}-fs{int(size)}"


def is_few_shot(name: str) -> bool:
    """Whether ``name`` (with or without a protocol prefix) is a run of the few-shot curve."""
    return FEW_SHOT_NAME.search(name) is not None
