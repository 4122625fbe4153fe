"""xner: cross-lingual NER (English CoNLL-2003 -> Chinese WeiboNER, People's Daily) after Wang et al. 2023.

Modules follow the paper and the data flow: ``data`` -> ``encoders`` -> ``layers``, ``aligner`` -> ``model``
-> ``train``, ``evaluate`` -> ``report``.
"""

__version__ = "0.1.0"
