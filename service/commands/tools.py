"""The commands that open no database of their own: `openapi` (the OpenAPI document), `models
prepare` (the local model files), `bench` (which starts its own server unless given one)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from service.commands.common import CliError
from service.config import Settings


def cmd_openapi(settings: Settings, args: argparse.Namespace) -> int:
    from service.app import create_app

    sys.stdout.write(openapi_json(create_app(settings)))
    return 0


def openapi_json(app: Any) -> str:
    return json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True) + "\n"


def cmd_models_prepare(settings: Settings, args: argparse.Namespace) -> int:
    """Prepare every local model (embedding and chat) whose path is "default"; print each GGUF path."""
    from service.inference.base import local_model_path
    from service.inference.minilm import PreparationError
    from service.inference.minilm import prepare_default as prepare_embedding
    from service.inference.smollm2 import prepare_default as prepare_chat

    sections: list[tuple[str, str, Mapping[str, Any], str, Callable[[Path], Path]]] = [
        ("model", "embeddings", settings.embeddings.models, settings.embeddings.cache_dir, prepare_embedding),
        ("chat model", "generation", settings.generation.models, settings.generation.cache_dir, prepare_chat),
    ]
    for label, section, models, cache_dir, prepare in sections:
        for name, model in models.items():
            if model.url is not None:
                continue
            try:
                path = local_model_path(model.path, cache_dir, prepare)
            except PreparationError as exc:
                raise CliError(f"{label} {name}: {exc}") from exc
            except FileNotFoundError:
                raise CliError(
                    f"{label} {name}: no such file {model.path} ({section}.models.{name}.path)"
                ) from None
            print(f"{name}\t{path}")
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from service import bench

    return bench.main(args)
