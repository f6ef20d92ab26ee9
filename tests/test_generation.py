"""The chat model layer: the real llama.cpp path on a tiny GGUF the tests build (exact text), the
real default model (SmolLM2 from PyPI) once as a smoke test, and a real HTTP server standing in
for a remote OpenAI-compatible chat server."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from service.config import GenerationSettings
from service.errors import InvalidRequest
from service.inference.base import ModelUnavailable
from service.inference.chat import ChatMessage, ContextTooLong, Delta, Finished, GenerationParams, collect
from service.inference.generators import GeneratorRegistry
from service.inference.registry import UnknownModel
from tests.support.tiny_chat_model import SENTENCE, build

MODEL_CACHE = Path(
    os.environ.get("VECTORHIVE_TEST_MODEL_CACHE", Path.home() / ".cache" / "vectorhive-test-models")
)
ASK = [ChatMessage("user", "Where is the answer?")]


def generation_settings(tmp: Path, **models: dict[str, Any]) -> GenerationSettings:
    return msgspec.convert(
        {"cache_dir": str(tmp), "default_model": next(iter(models)), "models": models}, GenerationSettings
    )


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chat-models")
    return {
        "tiny": build(folder / "tiny.gguf"),
        "endless": build(folder / "endless.gguf", context=4096, endless=True),
    }


@pytest.fixture
async def registry(tiny_models: dict[str, Path], tmp_path: Path) -> AsyncIterator[GeneratorRegistry]:
    settings = generation_settings(
        tmp_path,
        tiny={"path": str(tiny_models["tiny"]), "n_ctx": 512},
        endless={"path": str(tiny_models["endless"]), "n_ctx": 4096},
    )
    settings.queue_max_requests = 0
    models = GeneratorRegistry(settings)
    models.start()
    await models.wait_loaded()
    try:
        yield models
    finally:
        await models.close()


def params(max_tokens: int = 64, temperature: float = 0.0) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=temperature)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_tiny_model_streams_its_sentence_token_by_token(registry: GeneratorRegistry) -> None:
    model = registry.generator("tiny")
    stream = await model.start(ASK, params(temperature=0.8))
    events = [event async for event in stream]
    deltas = [e.text for e in events if isinstance(e, Delta)]
    assert deltas == ["The", " answer", " is", " in", " the", " sources", " [1]."]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "stop"
    assert finished.completion_tokens == 7
    assert finished.prompt_tokens == stream.prompt_tokens == await model.prompt_tokens(ASK) > 0
    assert finished.first_token_seconds is not None


async def test_streaming_and_collected_give_the_same_text(registry: GeneratorRegistry) -> None:
    model = registry.generator("tiny")
    whole = await collect(await model.start(ASK, params()))
    assert whole.text == SENTENCE
    cut = await collect(await model.start(ASK, params(max_tokens=3)))
    assert cut.text == "The answer is"
    assert (cut.finished.finish_reason, cut.finished.completion_tokens) == ("length", 3)


async def test_prompt_over_the_window_is_refused(registry: GeneratorRegistry) -> None:
    model = registry.generator("tiny")
    with pytest.raises(ContextTooLong) as caught:
        await model.start([ChatMessage("user", "word " * 600)], params())
    assert "generation.models.tiny.n_ctx" in caught.value.detail
    # A prompt that fits with room for only a few tokens: the completion is cut to the window.
    room = 512 - await model.prompt_tokens([ChatMessage("user", "x" * 480)])
    assert 0 < room < 7
    short = await collect(await model.start([ChatMessage("user", "x" * 480)], params()))
    assert short.finished.finish_reason == "length" and short.finished.completion_tokens == room


async def test_full_queue_is_refused_at_once_and_a_closed_stream_frees_the_model(
    registry: GeneratorRegistry,
) -> None:
    model = registry.generator("endless")
    cancelled_before = sample(
        "vectorhive_generation_duration_seconds_count", model="endless", finish_reason="cancelled"
    )
    busy = await model.start(ASK, params(max_tokens=4000))
    first = await anext(aiter(busy))
    assert first == Delta("The")
    # queue_max_requests 0: one generating, none waiting. The next one is refused, not queued.
    with pytest.raises(ModelUnavailable) as caught:
        await model.start(ASK, params())
    assert caught.value.code == "model_busy" and caught.value.status == 503
    assert caught.value.headers["Retry-After"]
    # The client goes away: the model stops after at most one more token and serves the next.
    await busy.aclose()
    for _ in range(200):
        try:
            follow = await model.start(ASK, params(max_tokens=7))
            break
        except ModelUnavailable:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the model was not freed by closing the stream")
    assert (await collect(follow)).text == SENTENCE
    after = sample("vectorhive_generation_duration_seconds_count", model="endless", finish_reason="cancelled")
    assert after == cancelled_before + 1


async def test_deadline_ends_a_generation_with_a_503(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    settings = generation_settings(tmp_path, endless={"path": str(tiny_models["endless"]), "n_ctx": 4096})
    settings.request_timeout_seconds = 0.3
    models = GeneratorRegistry(settings)
    models.start()
    await models.wait_loaded()
    try:
        stream = await models.generator().start(ASK, params(max_tokens=4000))
        pieces = []
        with pytest.raises(ModelUnavailable) as caught:
            async for event in stream:
                pieces.append(event)
        assert caught.value.code == "model_timeout"
        assert "generation.request_timeout_seconds" in caught.value.detail
        assert pieces  # it had begun
        # The model was freed: the next request (a new deadline) is served.
        settings.request_timeout_seconds = 60
        assert (await collect(await models.generator().start(ASK, params(max_tokens=2)))).text == "The answer"
    finally:
        await models.close()


async def test_missing_unknown_and_disabled_models_are_clear_errors(tmp_path: Path) -> None:
    models = GeneratorRegistry(generation_settings(tmp_path, broken={"path": str(tmp_path / "absent.gguf")}))
    models.start()
    await models.wait_loaded()
    with pytest.raises(ModelUnavailable) as caught:
        models.generator()
    assert "generation.models.broken.path" in caught.value.detail
    assert caught.value.headers["Retry-After"]
    with pytest.raises(UnknownModel):
        models.generator("nope")
    await models.close()
    (tmp_path / "not-chat.gguf").write_bytes(b"GGUF garbage")
    models = GeneratorRegistry(generation_settings(tmp_path, bad={"path": str(tmp_path / "not-chat.gguf")}))
    models.start()
    await models.wait_loaded()
    with pytest.raises(ModelUnavailable, match=r"generation\.models\.bad\.path"):
        models.generator()
    await models.close()
    off = generation_settings(tmp_path, broken={"path": str(tmp_path / "absent.gguf")})
    off.enabled = False
    with pytest.raises(ModelUnavailable, match=r"generation\.enabled"):
        GeneratorRegistry(off).generator()


async def test_default_model_smollm2_answers(tmp_path: Path) -> None:
    """The real default model, prepared from the PyPI package (cached between test runs)."""
    settings = GenerationSettings(cache_dir=str(MODEL_CACHE))
    models = GeneratorRegistry(settings)
    models.start()
    await models.wait_loaded()
    try:
        model = models.generator()
        question = [ChatMessage("user", "What is the capital of France?")]
        result = await collect(await model.start(question, params(max_tokens=24)))
        assert result.text.strip()
        assert result.finished.finish_reason in ("stop", "length")
        assert 0 < result.finished.completion_tokens <= 24
        assert result.finished.prompt_tokens == await model.prompt_tokens(question)
    finally:
        await models.close()


# -- remote ---------------------------------------------------------------------------------------


class _RemoteChat(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    failures_left = 0
    seen: list[dict[str, Any]] = []
    disconnected = threading.Event()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        if type(self).failures_left > 0:  # a 503 first: the client must retry
            type(self).failures_left -= 1
            self._plain(503, b"overloaded")
            return
        assert self.path == "/v1/chat/completions" and body["stream"] is True
        if body["model"] == "refuse":
            self._plain(400, b'{"error": {"message": "bad model"}}')
            return
        words = ["Paris", " is", " the", " capital", "."]
        if body["model"] == "endless":
            words = words * 10_000
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, word in enumerate(words[: body["max_tokens"]]):
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                if body["model"] == "endless":
                    time.sleep(0.01)
            reason = "stop" if body["max_tokens"] >= len(words) else "length"
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
            self._event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}})
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            type(self).disconnected.set()

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(b": keep-alive\n\ndata: " + json.dumps(payload).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def remote_chat() -> Iterator[str]:
    _RemoteChat.seen = []
    _RemoteChat.failures_left = 0
    _RemoteChat.disconnected.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RemoteChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


async def test_remote_openai_compatible_chat_model(remote_chat: str, tmp_path: Path) -> None:
    settings = generation_settings(
        tmp_path,
        gpu={"url": remote_chat, "remote_model": "served", "api_key": "secret"},
        refuse={"url": remote_chat},
        endless={"url": remote_chat},
    )
    models = GeneratorRegistry(settings)
    models.start()
    await models.wait_loaded()
    try:
        _RemoteChat.failures_left = 1
        stream = await models.generator("gpu").start(ASK, params(max_tokens=64))
        events = [event async for event in stream]
        assert [e.text for e in events if isinstance(e, Delta)] == ["Paris", " is", " the", " capital", "."]
        assert events[-1] == Finished("stop", 11, 5, events[-1].first_token_seconds, events[-1].total_seconds)
        sent = _RemoteChat.seen[-1]
        assert sent["model"] == "served" and sent["stream_options"] == {"include_usage": True}
        assert sent["messages"] == [{"role": "user", "content": "Where is the answer?"}]
        assert len(_RemoteChat.seen) == 2  # one 503, retried

        cut = await collect(await models.generator("gpu").start(ASK, params(max_tokens=2)))
        assert (cut.text, cut.finished.finish_reason) == ("Paris is", "length")

        with pytest.raises(InvalidRequest) as refused:
            await models.generator("refuse").start(ASK, params())
        assert refused.value.code == "model_refused"

        # Closing the stream closes the connection: the server sees its client go away.
        endless = await models.generator("endless").start(ASK, params(max_tokens=40_000))
        assert await anext(aiter(endless)) == Delta("Paris")
        await endless.aclose()
        assert await asyncio.to_thread(_RemoteChat.disconnected.wait, 10)
    finally:
        await models.close()


async def test_remote_server_down_is_a_503_naming_the_option(tmp_path: Path) -> None:
    settings = generation_settings(tmp_path, gone={"url": "http://127.0.0.1:9/v1"})
    models = GeneratorRegistry(settings)
    models.start()
    await models.wait_loaded()
    try:
        with pytest.raises(ModelUnavailable) as caught:
            await models.generator().start(ASK, params())
        assert "generation.models.gone.url" in caught.value.detail
        assert caught.value.headers["Retry-After"]
    finally:
        await models.close()
