"""End-to-end fixtures: one tiny checkpoint, one real ``pagedlm serve`` process on a free
loopback port (with an API key, so auth is exercised by every test), the offline LLM on the
same checkpoint for parity, and clients."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from e2e_helpers import (  # noqa: E402
    API_KEY,
    MAX_MODEL_LEN,
    MODEL_NAME,
    NUM_BLOCKS,
    Server,
    running_server,
)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN),
            "--num-gpu-blocks-override", str(NUM_BLOCKS), "--device", "cpu", "--api-key", API_KEY]
    with running_server(args, tmp_path_factory.mktemp("server") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def offline_llm(checkpoint: Path):
    from pagedlm import LLM

    return LLM(str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=NUM_BLOCKS, device="cpu")


@pytest.fixture(scope="session")
def client(server: Server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def async_client_factory(server: Server):
    import openai

    def make() -> "openai.AsyncOpenAI":
        return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)

    return make


@pytest.fixture()
def http(server: Server) -> Iterator["httpx.Client"]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        yield c
