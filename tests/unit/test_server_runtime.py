"""The server runs on uvicorn's fast HTTP parser (httptools) and event loop (uvloop), both
installed with pagedlm: uvicorn's "auto" settings, which the server keeps, pick them."""

from __future__ import annotations

import asyncio

import pytest

uvicorn = pytest.importorskip("uvicorn")


async def _app(scope, receive, send) -> None:  # pragma: no cover - never called
    pass


def test_auto_http_and_loop_pick_the_fast_implementations() -> None:
    config = uvicorn.Config(_app)  # what api_server.serve_on builds: http and loop left at "auto"
    assert config.http == "auto" and config.loop == "auto"
    config.load()
    assert config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    uvloop = pytest.importorskip("uvloop")
    policy = asyncio.get_event_loop_policy()
    try:
        loop_factory = config.get_loop_factory() if hasattr(config, "get_loop_factory") else None
        if loop_factory is not None:
            loop = loop_factory()
            try:
                assert isinstance(loop, uvloop.Loop)
            finally:
                loop.close()
        else:  # older uvicorn: setup_event_loop installs uvloop's policy
            config.setup_event_loop()
            assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(policy)
