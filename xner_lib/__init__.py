"""xner: cross-lingual NER (English CoNLL-2003 -> Chinese WeiboNER, People's Daily) after Wang et al. 2023.

Modules follow the paper and the data flow: ``data`` -> ``encoders`` -> ``layers``, ``aligner`` -> ``model``
-> ``train``, ``evaluate`` -> ``report``.
"""

import warnings

__version__ = "0.1.0"

# transformers imports tqdm.auto, which in a notebook kernel without ipywidgets warns that it falls back to
# text bars; the library draws no tqdm.auto bar (xner_lib.progress writes one line per stage there).
warnings.filterwarnings("ignore", message="IProgress not found", module=r"tqdm\.auto")
