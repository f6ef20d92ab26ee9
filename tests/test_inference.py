"""The embedding model layer on the real default model (all-MiniLM-L6-v2 from PyPI, converted to
GGUF by our own code) and a real HTTP server standing in for a remote OpenAI-compatible embedder."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import numpy as np
import pytest

from service.config import EmbeddingModelSettings, EmbeddingsSettings
from service.inference.base import ModelUnavailable, TextTooLong
from service.inference.registry import ModelRegistry, UnknownModel
from tests.conftest import MODEL_CACHE


@pytest.fixture(scope="module")
async def registry() -> AsyncIterator[ModelRegistry]:
    models = ModelRegistry(EmbeddingsSettings(cache_dir=str(MODEL_CACHE)))
    models.start()
    await models.wait_loaded()
    try:
        yield models
    finally:
        await models.close()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_default_model_vectors_mean_something(registry: ModelRegistry) -> None:
    model = registry.embedder()
    assert model.dimension == 384
    out = await model.embed(
        ["A man is playing guitar", "Someone plays a guitar", "The stock market fell today"]
    )
    v = out.vectors
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert _cos(v[0], v[1]) > 0.7
    assert _cos(v[0], v[2]) < 0.2
    assert out.token_counts[0] == 7  # [CLS] a man is playing guitar [SEP]


async def test_alone_and_in_a_batch_give_the_same_vector(registry: ModelRegistry) -> None:
    model = registry.embedder()
    texts = [f"sentence number {i} about the weather in town" for i in range(20)]
    batch = (await model.embed(texts)).vectors
    alone = (await model.embed([texts[7]])).vectors[0]
    assert np.abs(batch[7] - alone).max() <= 1e-5


async def test_concurrent_requests_are_serialised_and_answered(registry: ModelRegistry) -> None:
    model = registry.embedder()
    texts = [[f"request {r} text {i}" for i in range(5)] for r in range(16)]
    results = await asyncio.gather(*(model.embed(t) for t in texts))
    reference = (await model.embed(texts[3])).vectors
    assert all(r.vectors.shape == (5, 384) for r in results)
    assert np.abs(results[3].vectors - reference).max() <= 1e-5


async def test_a_text_over_the_window_is_refused_not_cut(registry: ModelRegistry) -> None:
    model = registry.embedder()
    with pytest.raises(TextTooLong) as caught:
        await model.embed(["short", "word " * 400])
    assert caught.value.index == 1 and caught.value.limit == 256 and caught.value.tokens > 256


async def test_unknown_and_missing_models_are_clear_errors(tmp_path: Path) -> None:
    models = ModelRegistry(
        EmbeddingsSettings(
            cache_dir=str(tmp_path),
            default_model="broken",
            models={"broken": EmbeddingModelSettings(path=str(tmp_path / "absent.gguf"))},
        )
    )
    models.start()
    await models.wait_loaded()
    with pytest.raises(ModelUnavailable) as caught:
        models.embedder("broken")
    assert "embeddings.models.broken.path" in caught.value.detail
    assert caught.value.headers["Retry-After"]
    with pytest.raises(UnknownModel):
        models.embedder("nope")
    await models.close()


class _RemoteEmbeddings(BaseHTTPRequestHandler):
    failures_left = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures_left > 0:  # one 503 first: the client must retry
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        assert self.path == "/v1/embeddings" and body["model"] == "served-name"
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
            for i, t in reversed(list(enumerate(body["input"])))
        ]
        payload = json.dumps(
            {"object": "list", "data": data, "usage": {"prompt_tokens": 5, "total_tokens": 5}}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def remote_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RemoteEmbeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


async def test_remote_openai_compatible_model(remote_server: str, tmp_path: Path) -> None:
    settings = msgspec.convert(
        {
            "cache_dir": str(tmp_path),
            "default_model": "gpu",
            "models": {"gpu": {"url": remote_server, "remote_model": "served-name", "dimension": 3}},
        },
        EmbeddingsSettings,
    )
    models = ModelRegistry(settings)
    models.start()
    await models.wait_loaded()
    out = await models.embedder().embed(["ab", "abcd"])
    assert out.vectors.tolist() == [[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]]  # back in input order after a retry
    await models.close()
