"""One-off migration (issue 12): make the run keys of shared-protocol runs independent of the checkout path.

Before :func:`xner_lib.experiment.portable_name`, a shared-protocol run (Table 5's ``shared`` column, the
few-shot curve) was keyed by the absolute path of the fine-tuned baseline encoder it reads, e.g.
``/work/snap-f/results/cpu/checkpoints/baseline-seed1/encoder``, so every clone or worktree retrained it.
The key also holds that encoder's sha256 (``encoder.identity``), which is what identifies the weights.

For each ``runs/*/metrics.json`` under the results directory given, this script checks that the stored
``run_key`` is the hash of the stored ``run_key_parts`` (else it stops), rewrites the two encoder names
with ``portable_encoder_names`` and stores the recomputed key. Scores, curves and timings are not touched.

    python scripts/portable_run_keys.py results/cpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xner_lib.evaluate import write_record
from xner_lib.experiment import portable_encoder_names, run_key


def migrate(path: Path) -> bool:
    """Rewrite ``path``'s run key with portable encoder names; True when it changed."""
    record = json.loads(path.read_text(encoding="utf-8"))
    extra = record["extra"]
    parts = extra["run_key_parts"]
    if run_key(parts) != extra["run_key"]:
        raise SystemExit(f"{path}: its run_key is not the hash of its run_key_parts; not migrating")
    new = portable_encoder_names(json.loads(json.dumps(parts)))
    if new == parts:
        return False
    extra["run_key_parts"], extra["run_key"] = new, run_key(new)
    write_record(path, record)
    return True


if __name__ == "__main__":
    root = Path(sys.argv[1])
    changed = [p.parent.name for p in sorted((root / "runs").glob("*/metrics.json")) if migrate(p)]
    print(f"{len(changed)} run keys made portable: {', '.join(changed) or 'none'}")
