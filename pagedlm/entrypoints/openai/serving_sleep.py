"""vLLM's sleep-mode endpoints, registered only in server dev mode (``PAGEDLM_SERVER_DEV_MODE=1``
or vLLM's ``VLLM_SERVER_DEV_MODE=1``), as vLLM does:

- ``POST /sleep?level=1`` (1: offload the weights, 2: discard them)
- ``POST /wake_up`` (optional ``?tags=weights&tags=kv_cache``)
- ``GET /is_sleeping`` -> ``{"is_sleeping": bool}``

Without dev mode the paths do not exist (404). The engine needs ``--enable-sleep-mode``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response

from pagedlm.engine.sleep_mode import SleepModeError
from pagedlm.entrypoints.openai.errors import OpenAIError

DEV_MODE_ENV_VARS = ("PAGEDLM_SERVER_DEV_MODE", "VLLM_SERVER_DEV_MODE")


def server_dev_mode() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true") for v in DEV_MODE_ENV_VARS)


def add_sleep_routes(app: FastAPI, engine) -> None:
    @app.post("/sleep")
    async def sleep(level: int = 1) -> Response:
        try:
            await engine.sleep(level)
        except SleepModeError as e:
            raise OpenAIError(str(e), 400) from None
        return Response(status_code=200)

    @app.post("/wake_up")
    async def wake_up(tags: list[str] | None = Query(None)) -> Response:
        try:
            await engine.wake_up(tags)
        except SleepModeError as e:
            raise OpenAIError(str(e), 400) from None
        return Response(status_code=200)

    @app.get("/is_sleeping")
    async def is_sleeping() -> JSONResponse:
        return JSONResponse({"is_sleeping": await engine.is_sleeping()})
