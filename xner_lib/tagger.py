"""The assembled tagger: an encoder under the BiLSTM-CRF head, prediction, and checkpoints (paper section 3).

A :class:`Tagger` is an encoder (section 3.1) under :class:`~xner_lib.model.BiLstmCrfHead` (projection,
BiLSTM, the double attention of section 3.2 and the reverse-attention transfer when its config asks for
them, the CRF of eqs 8-11), and, in the adversarial variants, the orthogonal map ``U`` of eq. 2 that English
unit vectors pass through before the head (:class:`~xner_lib.aligner.OrthogonalMapping`). Two modes:

* fine-tuned: the encoder trains with the head (the paper's setting, Table 2); every batch goes through
  the encoder (:func:`~xner_lib.features.unit_vectors`).
* frozen: the encoder is fixed and its unit vectors come from the content-addressed cache
  (:func:`~xner_lib.features.cached_unit_features`); only the head trains.

:func:`predict_many` tags a :class:`~xner_lib.batches.Prepared` corpus under several decodings at once. A
checkpoint directory holds the weights, the configs and the label map, and loads back to identical
predictions (:func:`save_checkpoint`, :func:`load_checkpoint`, :meth:`Tagger.from_pretrained`).

Inference on new text (issue 14): :meth:`Tagger.from_pretrained` loads a checkpoint with the Chinese unit
scheme and the decoding of the run that saved it (:class:`InferenceSettings`); :meth:`Tagger.tag` tags raw
strings (split by :mod:`xner_lib.inference`), :meth:`Tagger.predict_dataset` any read corpus file.

Devices (issue 16): a tagger computes where its head is (:attr:`Tagger.device`); batches, cached features and the
teacher's features are moved there by :func:`~xner_lib.device.to_device`, and what leaves it (teacher features)
comes back to the CPU. Prediction runs in float32 on any device. :func:`load_checkpoint` and
:meth:`Tagger.from_pretrained` take a ``device`` setting (default ``cpu``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .aligner import OrthogonalMapping
from .batches import Prepared, pad_features, prepare
from .data import Dataset
from .data.sources import sha256_cached, sha256_of
from .decoding import DecodeConfig, allowed_matrix
from .device import cpu_copy, module_device, resolve_device, to_device
from .encoders import Encoder, load_encoder, quiet_transformers
from .features import extract_unit_features, unit_vectors
from .files import atomic_dir
from .inference import LANGUAGES, TaggedText, detect_language, split_text, text_dataset
from .model import BiLstmCrfHead, HeadConfig
from .progress import progress as progress_bar
from .units import ZH_UNITS, EncodedSentence, spread_tags


@dataclass(frozen=True)
class InferenceSettings:
    """How a tagger reads new text: the Chinese unit scheme (:mod:`~xner_lib.units`) and the decoding
    (:class:`~xner_lib.decoding.DecodeConfig`). A checkpoint records those of the run that saved it under
    ``scoring`` in ``config.json``; the defaults (``char`` units, ``DecodeConfig()``) serve when it does not."""

    zh_units: str = "char"
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        if self.zh_units not in ZH_UNITS:
            raise ValueError(f"zh_units must be one of {ZH_UNITS}, got {self.zh_units!r}")

    @classmethod
    def from_scoring(cls, scoring: Mapping[str, Any] | None, where: str = "config.json") -> InferenceSettings:
        """The settings recorded under a checkpoint's ``scoring`` key (``where`` names the file in errors)."""
        scoring = scoring or {}
        decode = dict(scoring.get("decode") or {})
        known = {f.name for f in fields(DecodeConfig)}
        unknown = sorted(set(decode) - known)
        if unknown:
            raise ValueError(f"{where}: scoring.decode has unknown keys {unknown}; DecodeConfig has {sorted(known)}")
        try:
            return cls(str(scoring.get("zh_units") or "char"), DecodeConfig(**decode))
        except ValueError as err:
            raise ValueError(f"{where}: scoring: {err}") from None


class Tagger(nn.Module):
    """Encoder + BiLSTM-CRF head. ``encoder`` is None in frozen mode, where features are given.

    ``mapping``: the orthogonal map ``U`` of eq. 2 (adversarial variants): English unit vectors are mapped,
    ``x U``, before the head; Chinese ones enter as they are. ``teacher``: the frozen English teacher of the
    reverse-attention transfer (:class:`Teacher`), when the head has a transfer layer.

    ``text_encoder`` reads new text (:meth:`tag`, :meth:`predict_dataset`): the fine-tuned encoder, or in
    frozen mode the frozen one (:meth:`from_pretrained` sets it). ``inference``: the unit scheme and decoding
    used there."""

    def __init__(self, head: BiLstmCrfHead, encoder: Encoder | None = None, *,
                 mapping: OrthogonalMapping | None = None, text_encoder: Encoder | None = None,
                 inference: InferenceSettings | None = None) -> None:
        super().__init__()
        self.head = head
        self.encoder_model = encoder.model if encoder is not None else None
        self._encoder = encoder
        self.mapping = mapping
        self.text_encoder = text_encoder if text_encoder is not None else encoder
        self.inference = inference or InferenceSettings()
        self.teacher: Teacher | None = None

    @property
    def encoder(self) -> Encoder | None:
        return self._encoder

    @property
    def device(self) -> torch.device:
        """Where the tagger computes: its head's device (the encoder and ``U`` are moved with it)."""
        return module_device(self.head)

    def features(self, batch: Sequence[EncodedSentence], cached: Sequence[Tensor] | None = None,
                 language: str | None = None) -> tuple[Tensor, Tensor]:
        """Unit vectors [B,U,H] and mask [B,U] on the tagger's device: through the encoder, or padded from
        ``cached``; English ones (``language == "en"``) mapped by ``U`` (eq. 2) when the tagger has a mapping."""
        if cached is not None:
            feats, mask = to_device(pad_features(cached), self.device)
        elif self._encoder is None:
            raise ValueError("a frozen tagger needs cached features")
        else:
            feats, mask = unit_vectors(self._encoder, batch)
        if self.mapping is not None and language == "en":
            feats = self.mapping(feats)
        return feats, mask

    def emissions(self, data: Prepared, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Emission scores ``[B,U,L]`` (eq. 9) and mask ``[B,U]`` of sentences ``idx`` of ``data``, with the
        teacher's features of those sentences when the head transfers (``data.teacher``)."""
        cached = [data.cached[i] for i in idx] if data.cached is not None else None
        feats, mask = self.features([data.encoded[i] for i in idx], cached, data.dataset.language)
        return self.head.emissions(feats, mask, teacher=to_device(data.batch_teacher(idx), self.device)), mask

    # --- inference on new text -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                        device: str = "cpu") -> Tagger:
        """Load a checkpoint written by :func:`save_checkpoint` (:func:`load_checkpoint`), ready to tag text:
        eval mode, on ``device`` (a device setting: ``cpu``, ``auto``, ``cuda``, ``cuda:N``), its text encoder,
        and the unit scheme and decoding recorded under ``scoring`` in its ``config.json``
        (:class:`InferenceSettings`). Raises ``FileNotFoundError`` or ``ValueError`` naming the directory or file
        when it is not a readable checkpoint."""
        directory = Path(directory)
        meta_path = directory / "config.json"
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such model directory")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory}: not a saved model (no config.json); a run keeps its model "
                                    "when its profile sets save_checkpoints: true")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path}:{err.lineno}: not valid JSON ({err.msg})") from None
        missing = [k for k in ("train", "head", "finetuned") if k not in meta] if isinstance(meta, dict) else ["{}"]
        if missing:
            raise ValueError(f"{meta_path}: not a checkpoint's config (missing {', '.join(missing)})")
        if not (directory / "head.safetensors").is_file():
            raise FileNotFoundError(f"{directory / 'head.safetensors'}: missing (an incomplete checkpoint)")
        settings = InferenceSettings.from_scoring(meta.get("scoring"), str(meta_path))
        tagger, encoder, _ = load_checkpoint(directory, cache_dir, device=device)
        tagger.text_encoder = encoder
        tagger.inference = settings
        return tagger

    def predict_dataset(self, dataset: Dataset, batch_size: int = 64, progress: bool = False) -> list[list[str]]:
        """Token-level IOB2 predictions for every sentence of ``dataset`` (any format), decoded as the
        experiments decode that format (:func:`prepare`, :func:`predict` with ``self.inference``). A frozen
        tagger's features are computed here, not written to the feature cache."""
        reader = self.text_encoder
        if reader is None:
            raise ValueError("this frozen tagger has no text encoder: load it with Tagger.from_pretrained "
                             "or set tagger.text_encoder")
        data = prepare(dataset, reader, frozen=False, zh_units=self.inference.zh_units)
        if self._encoder is None:
            data.cached = extract_unit_features(reader, data.encoded)
        if self.head.config.teacher_dim:
            if self.teacher is None:
                raise ValueError("this tagger's head transfers from a teacher, but it has none: load it with "
                                 "Tagger.from_pretrained or set tagger.teacher")
            data.teacher = self.teacher.features(dataset, batch_size)
        return predict(self, data, batch_size, progress=progress, decode=self.inference.decode)

    def tag_tokens(self, texts: Sequence[str], language: str | None = None, batch_size: int = 64
                   ) -> list[TaggedText]:
        """Split each text (:func:`~xner_lib.inference.split_text`), tag its tokens, one IOB2 tag per token.
        ``language``: ``en``, ``zh``, or None to detect it per text (``zh`` when a CJK character is present,
        :func:`~xner_lib.inference.detect_language`). A text without tokens (empty, whitespace) gets none."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string: tag([text])")
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES} or None, got {language!r}")
        split = [split_text(t) for t in texts]
        langs = [language or detect_language(t) for t in texts]
        tags: list[list[str]] = [[] for _ in texts]
        for lang in LANGUAGES:
            idx = [i for i, (toks, _) in enumerate(split) if toks and langs[i] == lang]
            if idx:
                ds = text_dataset([split[i][0] for i in idx], lang, lines=[i + 1 for i in idx])
                for i, pred in zip(idx, self.predict_dataset(ds, batch_size), strict=True):
                    tags[i] = pred
        return [TaggedText(t, lang, toks, offs, tg)
                for t, lang, (toks, offs), tg in zip(texts, langs, split, tags, strict=True)]

    def tag(self, texts: Sequence[str], language: str | None = None, batch_size: int = 64
            ) -> list[list[dict[str, Any]]]:
        """For each text, its entities as ``{"type", "start", "end", "text"}`` with character offsets into
        the text (``text[start:end]`` is the entity's text); see :meth:`tag_tokens`."""
        return [t.entities() for t in self.tag_tokens(texts, language, batch_size)]


@torch.no_grad()
def predict_many(tagger: Tagger, data: Prepared, decodes: Mapping[str, DecodeConfig], batch_size: int = 64,
                 progress: bool = True) -> dict[str, list[list[str]]]:
    """Token-level IOB2 predictions of every sentence of ``data`` under each named decoding
    (:class:`~xner_lib.decoding.DecodeConfig`): the encoder and emissions run once, Viterbi once per
    decoding. Unit tags are spread BIO-aware over the tokens each unit covers: one prediction per gold
    token, in order."""
    was = tagger.training
    tagger.eval()
    order = sorted(range(len(data.encoded)), key=lambda i: len(data.encoded[i].input_ids))
    out: dict[str, list[list[str] | None]] = {name: [None] * len(order) for name in decodes}
    labels = tagger.head.config.labels
    bar = progress_bar(total=len(order), desc=f"predict {data.dataset.name}/{data.dataset.split}", unit="sent",
                       disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        emissions, mask = tagger.emissions(data, idx)
        spans = [data.encoded[i].unit_spans for i in idx]
        links = [data.links[i] for i in idx] if data.links is not None else None
        for name, config in decodes.items():
            allowed = allowed_matrix(labels, data.dataset.format, config, spans, links, emissions.shape[1])
            for i, seq in zip(idx, tagger.head.crf_decode(emissions, mask, allowed=allowed), strict=True):
                out[name][i] = spread_tags([labels[k] for k in seq], data.encoded[i].unit_spans)
        bar.update(len(idx))
    bar.close()
    tagger.train(was)
    for preds in out.values():
        for i, (pred, sent) in enumerate(zip(preds, data.dataset.sentences, strict=True)):
            assert pred is not None and len(pred) == len(sent), f"sentence {i}: prediction does not cover the tokens"
    return out  # type: ignore[return-value]


def predict(tagger: Tagger, data: Prepared, batch_size: int = 64, progress: bool = True,
            decode: DecodeConfig | None = None) -> list[list[str]]:
    """Token-level IOB2 predictions of every sentence of ``data`` under one decoding (default:
    :class:`~xner_lib.decoding.DecodeConfig`'s defaults), see :func:`predict_many`."""
    return predict_many(tagger, data, {"_": decode or DecodeConfig()}, batch_size, progress)["_"]


class Teacher:
    """The frozen English teacher of the reverse-attention transfer (section 3.2; DESIGN.md Model 5): a
    trained tagger (the same seed's baseline) that reads English, and the lexicon that renders a Chinese
    sentence into English word by word (:mod:`~xner_lib.rendering`, jieba words, unknown words kept).

    Its features for a sentence (:meth:`features`) are, per English unit of what it reads, its BiLSTM states
    and emission scores, ``[W, 2*lstm_hidden + L]`` (:func:`teacher_features`): an English sentence is read
    as it is, a Chinese one through its rendering. Not an ``nn.Module``: its weights never train and never
    enter the student's parameters or state dict. ``directory``: the checkpoint it was loaded from (a
    saved student keeps a copy). ``casing``: lowercase English word -> its usual surface form
    (:func:`~xner_lib.rendering.surface_forms` of CoNLL train), so a rendering reads ``Beijing``, not the
    lexicon's ``beijing``, to a cased teacher."""

    def __init__(self, tagger: Tagger, lexicon_path: str | os.PathLike[str] | None,
                 directory: str | os.PathLike[str] | None = None, casing: Mapping[str, str] | None = None) -> None:
        from .rendering import Lexicon

        if tagger.head.config.teacher_dim:
            raise ValueError("a teacher must not itself transfer from a teacher")
        self.tagger = tagger.eval()
        self.lexicon_path = Path(lexicon_path) if lexicon_path is not None else None
        self.lexicon = Lexicon.from_tsv(self.lexicon_path) if self.lexicon_path is not None else None
        self.directory = Path(directory) if directory is not None else None
        self.casing = dict(casing or {})

    @property
    def dim(self) -> int:
        """``D_t``: the size of the teacher's features per unit (BiLSTM states and emissions)."""
        return self.tagger.head.config.state_dim + self.tagger.head.config.num_labels

    def read(self, token_lists: Sequence[Sequence[str]], batch_size: int = 64) -> list[Tensor]:
        """The teacher's features of English token lists, one ``[W_i, D_t]`` tensor each, rounded to fp16
        precision (the cache's, so training, a cache hit and a reloaded model see the same numbers)."""
        reader = self.tagger.text_encoder
        if reader is None:
            raise ValueError("the teacher has no text encoder")
        data = prepare(text_dataset([list(t) for t in token_lists], "en"), reader, frozen=False)
        if self.tagger.encoder is None:
            data.cached = extract_unit_features(reader, data.encoded)
        # rounded to fp16 precision, as the on-disk cache stores them: a cached and a fresh pass agree
        return [f.half().float() for f in teacher_features(self.tagger, data, batch_size)]

    def english(self, dataset: Dataset) -> list[list[str]]:
        """What the teacher reads for each sentence of ``dataset``: English as it is, Chinese as its
        word-by-word English rendering (one English token per Chinese word)."""
        if dataset.language == "en":
            return [list(s.tokens) for s in dataset.sentences]
        if self.lexicon is None:
            raise ValueError("the teacher needs a lexicon to read Chinese")
        from .rendering import render_dataset_zh

        return render_dataset_zh(dataset, self.lexicon, casing=self.casing or None)[0]

    def features(self, dataset: Dataset, batch_size: int = 64) -> list[Tensor]:
        """The teacher's features of every sentence of ``dataset``: :meth:`read` of :meth:`english`."""
        return self.read(self.english(dataset), batch_size)


@torch.no_grad()
def teacher_features(tagger: Tagger, data: Prepared, batch_size: int = 64) -> list[Tensor]:
    """Per sentence of ``data``, the ``[U_i, 2*lstm_hidden + L]`` concatenation of ``tagger``'s BiLSTM states
    and emission scores (eq. 9) at its units, in eval mode: what the transfer attends over. Computed on the
    tagger's device, returned on the CPU."""
    was = tagger.training
    tagger.eval()
    out: list[Tensor | None] = [None] * len(data.encoded)
    order = sorted(range(len(data.encoded)), key=lambda i: len(data.encoded[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        cached = [data.cached[i] for i in idx] if data.cached is not None else None
        feats, mask = tagger.features([data.encoded[i] for i in idx], cached, data.dataset.language)
        states = tagger.head.forward_states(feats, mask)  # the BiLSTM once, for both halves
        both = torch.cat([states, tagger.head.emissions_from_states(states, mask)], dim=-1)
        for r, i in enumerate(idx):
            out[i] = cpu_copy(both[r, : int(mask[r].sum())])  # in host memory, wherever the teacher ran
    tagger.train(was)
    return out  # type: ignore[return-value]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-like encoder (BERT, XLM-R, e5: ``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no encoder.layer list to freeze layers of")
    return layers


def build_tagger(head_config: HeadConfig, encoder: Encoder, *, finetune: bool, freeze_embeddings: bool = False,
                 freeze_layers: int = 0, mapping: Tensor | None = None,
                 freeze_embedding_layer: bool = False) -> Tagger:
    """A tagger with a new head (``head_config``) over ``encoder`` (fine-tuned: the encoder is part of the
    model; else frozen, fed cached features). ``freeze_embeddings`` and ``freeze_layers`` keep the word
    embeddings and the lowest transformer layers of a fine-tuned encoder fixed; ``freeze_embedding_layer`` the
    whole embedding layer (word, position and token-type tables and its LayerNorm), as Wu and Dredze (2019)
    froze it, so that with ``freeze_layers`` no gradient flows below the first trained layer. ``mapping``: the
    initial ``U`` of eq. 2 (``[H, H]``), for a tagger that maps English unit vectors (None: no mapping)."""
    head = BiLstmCrfHead(head_config)
    if finetune and freeze_embeddings:
        encoder.model.get_input_embeddings().weight.requires_grad_(False)
    if finetune and freeze_embedding_layer:
        embeddings = getattr(encoder.model, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            raise ValueError(f"{type(encoder.model).__name__}: no embeddings module to freeze")
        embeddings.requires_grad_(False)
    if finetune and freeze_layers:
        layers = encoder_layers(encoder.model)
        if freeze_layers > len(layers):
            raise ValueError(f"freeze_layers={freeze_layers} but {encoder.name} has {len(layers)} layers")
        for layer in layers[:freeze_layers]:
            layer.requires_grad_(False)
    umap = None
    if mapping is not None:
        if tuple(mapping.shape) != (encoder.hidden_size, encoder.hidden_size):
            raise ValueError(f"the initial map U must be [H, H] = {(encoder.hidden_size,) * 2}, "
                             f"got {tuple(mapping.shape)}")
        umap = OrthogonalMapping(encoder.hidden_size)
        with torch.no_grad():
            umap.U.copy_(mapping)
    return Tagger(head, encoder if finetune else None, mapping=umap)


# --- checkpoints -------------------------------------------------------------------------------------

def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def save_checkpoint(tagger: Tagger, directory: str | os.PathLike[str], train: Mapping[str, Any], *,
                    run_key: str | None = None, scoring: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory`` (atomically: built beside it, then renamed) with ``config.json`` (``train``: the
    training config as a dict, the head config, the label map, the encoder's name, and ``run_key``: the key
    of the run that made it, see :func:`~xner_lib.experiment.run_or_load`; ``scoring``: how its numbers were
    scored, e.g. the Chinese unit scheme and the decoding), ``head.safetensors``, ``mapping.safetensors``
    (``U`` of eq. 2, when the tagger maps), ``teacher/`` and ``lexicon.tsv`` (the teacher's checkpoint,
    hard-linked where the file system allows, and its lexicon, when the head transfers) and, fine-tuned,
    ``encoder/`` (the HF model and tokenizer). ``config.json`` records every other file's size and sha256
    (``files``), so that a truncated or corrupt checkpoint is detected (:func:`checkpoint_problems`)."""
    encoder = tagger.encoder
    directory = Path(directory)
    meta = {"train": dict(train), "head": tagger.head.config.to_dict(), "labels": list(tagger.head.config.labels),
            "encoder": train.get("encoder"), "finetuned": encoder is not None, "run_key": run_key,
            "scoring": dict(scoring or {}), "mapping": tagger.mapping is not None}
    teacher = tagger.teacher
    if tagger.head.config.teacher_dim and (teacher is None or teacher.directory is None):
        raise ValueError("a transfer tagger is saved with its teacher: the teacher must be loaded from a directory")
    with atomic_dir(directory) as tmp:
        if encoder is not None:
            with quiet_transformers():  # no "Writing model shards" bar in an executed notebook
                encoder.model.save_pretrained(tmp / "encoder")
                encoder.tokenizer.save_pretrained(tmp / "encoder")
            meta["encoder_max_length"] = encoder.max_length
        save_file({k: cpu_copy(v).contiguous() for k, v in tagger.head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        if tagger.mapping is not None:
            save_file({"U": cpu_copy(tagger.mapping.U).contiguous()}, str(tmp / "mapping.safetensors"))
        if tagger.head.config.teacher_dim:
            assert teacher is not None and teacher.directory is not None
            shutil.copytree(teacher.directory, tmp / "teacher", copy_function=_link_or_copy)
            if teacher.lexicon_path is not None:
                shutil.copy2(teacher.lexicon_path, tmp / "lexicon.tsv")
            meta["teacher"] = {"directory": "teacher", "lexicon": "lexicon.tsv" if teacher.lexicon_path else None,
                               "casing": "casing.json"}
            (tmp / "casing.json").write_text(json.dumps(teacher.casing, ensure_ascii=False), encoding="utf-8")
        meta["files"] = _file_record(tmp)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def _file_record(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of a checkpoint being written (``config.json`` aside) with its size and sha256."""
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(directory.rglob("*")) if p.is_file() and p != directory / "config.json"}


def checkpoint_problems(directory: str | os.PathLike[str], *, checksums: bool = True) -> list[str]:
    """What is wrong with the files of checkpoint ``directory`` against the record its ``config.json`` keeps
    (:func:`save_checkpoint`): a file missing, truncated or grown (its size), or, with ``checksums``, changed
    (its sha256). Empty when all is well, and for a checkpoint saved before files were recorded. A missing
    or unreadable ``config.json`` is a problem too."""
    directory = Path(directory)
    meta_path = directory / "config.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as err:
        return [f"{meta_path}: cannot read ({err.strerror})"]
    except ValueError as err:
        return [f"{meta_path}: not valid JSON ({err})"]
    out = []
    for rel, want in (meta.get("files") or {}).items() if isinstance(meta, dict) else ():
        path = directory / rel
        if not path.is_file():
            out.append(f"{path}: missing")
        elif path.stat().st_size != want["bytes"]:
            out.append(f"{path}: {path.stat().st_size} bytes, {want['bytes']} saved (truncated or changed)")
        elif checksums and sha256_cached(path) != want["sha256"]:
            out.append(f"{path}: sha256 differs from the one saved (corrupt or changed)")
    return out


def load_checkpoint(directory: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, *,
                    device: str | torch.device = "cpu") -> tuple[Tagger, Encoder, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`: the tagger (eval mode; with its mapping and,
    when its head transfers, its teacher), the encoder it reads (the saved fine-tuned one, or the named
    frozen one) and its training config as the dict saved; tagger, encoder and teacher on ``device`` (a
    device setting, :func:`~xner_lib.device.resolve_device`). A checkpoint whose files do not match the sizes and
    checksums its ``config.json`` records (:func:`checkpoint_problems`: a file truncated, missing or changed) is
    refused with a ``ValueError`` naming each file, never loaded."""
    place = resolve_device(device)
    directory = Path(directory)
    problems = checkpoint_problems(directory)
    if problems:
        raise ValueError(f"{directory}: an incomplete or corrupt checkpoint: " + "; ".join(problems))
    meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    train = dict(meta["train"])
    if meta["finetuned"]:
        encoder = load_encoder(directory / "encoder", cache_dir, max_length=meta.get("encoder_max_length"))
    else:
        encoder = load_encoder(train["encoder"], cache_dir)
    head = BiLstmCrfHead(HeadConfig(**meta["head"]))
    head.load_state_dict(load_file(str(directory / "head.safetensors")))
    mapping = None
    if meta.get("mapping"):
        mapping = load_file(str(directory / "mapping.safetensors"))["U"]
        umap = OrthogonalMapping(mapping.shape[0])
        with torch.no_grad():
            umap.U.copy_(mapping)
        mapping = umap
    tagger = to_device(Tagger(head, encoder if meta["finetuned"] else None, mapping=mapping, text_encoder=encoder),
                       place)
    to_device(encoder.model, place)  # a frozen tagger's text encoder is not one of its modules
    if meta.get("teacher"):
        t = meta["teacher"]
        teacher, _, _ = load_checkpoint(directory / t["directory"], cache_dir, device=place)
        casing = json.loads((directory / t["casing"]).read_text(encoding="utf-8")) if t.get("casing") else None
        tagger.teacher = Teacher(teacher, directory / t["lexicon"] if t.get("lexicon") else None,
                                 directory / t["directory"], casing)
    tagger.eval()
    return tagger, encoder, train
