"""ServerArgs: the flags of ``pagedlm serve`` that are not engine settings (EngineArgs has
those), declared the same way (pagedlm.arg_utils), plus ``--config FILE.yaml``.

Kept out of api_server so that building the parser does not import the engine.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

from pagedlm.arg_utils import dataclass_kwargs, log_no_effect, opt, refuse_unsupported
from pagedlm.config import ConfigError
from pagedlm.entrypoints.openai.tool_parsers import TOOL_PARSERS

SERVER, FRONTEND, LOGGING = "Server", "Frontend (chat, tools, LoRA)", "Logging and metrics"
API_KEY_ENV_VARS = ("PAGEDLM_API_KEY", "VLLM_API_KEY")


@dataclass
class ServerArgs:
    host: str = opt("127.0.0.1", "address to bind (0.0.0.0 accepts remote clients)", SERVER)
    port: int = opt(8000, "port to listen on", SERVER)
    uds: str | None = opt(None, "listen on this Unix domain socket path instead (--host and --port are then "
                          "not used)", SERVER)
    api_key: list[str] | None = opt(None, "require 'Authorization: Bearer KEY' except on /health, /ping, /metrics, "
                                    "/version; several keys: any one of them (default: env PAGEDLM_API_KEY, then "
                                    "VLLM_API_KEY)", SERVER, secret=True)
    ssl_keyfile: str | None = opt(None, "TLS private key file (PEM); needs --ssl-certfile", SERVER)
    ssl_certfile: str | None = opt(None, "TLS certificate file (PEM): serve https", SERVER)
    ssl_ca_certs: str | None = opt(None, "TLS: CA certificates (PEM) that client certificates are checked against",
                                   SERVER)
    ssl_cert_reqs: int = opt(0, "TLS: client certificates, as Python's ssl module numbers it: 0 not asked for, "
                             "1 optional, 2 required (needs --ssl-ca-certs)", SERVER, choices=[0, 1, 2])
    allowed_origins: list[str] = opt(["*"], "CORS: origins a browser may call the API from (a JSON list, as "
                                     "vLLM takes it, or space-separated)", SERVER)
    allow_credentials: bool = opt(False, "CORS: allow credentials (cookies, authorization) cross-origin", SERVER)
    allowed_methods: list[str] = opt(["*"], "CORS: allowed methods (a JSON list or space-separated)", SERVER)
    allowed_headers: list[str] = opt(["*"], "CORS: allowed headers (a JSON list or space-separated)", SERVER)
    root_path: str | None = opt(None, "path prefix under which a proxy serves the app (the ASGI root_path)", SERVER)
    enable_request_id_headers: bool = opt(False, "every response carries X-Request-Id (the request's own, "
                                          "else a new one)", SERVER)
    disable_fastapi_docs: bool = opt(False, "do not serve /docs, /redoc and /openapi.json", SERVER)
    api_server_count: int = opt(1, "API server processes sharing the port, all feeding the same engine cores: the "
                                "text work (tokenizing, detokenizing, streaming) of many concurrent streams spread "
                                "over that many CPU cores", SERVER, flags=("-asc",))
    shutdown_grace_period: float = opt(5.0, "seconds that unfinished requests may run after SIGTERM/Ctrl-C "
                                       "before they are aborted", SERVER)
    uvicorn_log_level: str = opt("info", "uvicorn's log level", LOGGING,
                                 choices=["debug", "info", "warning", "error", "critical", "trace"])
    disable_uvicorn_access_log: bool = opt(False, "no access log line per HTTP request", LOGGING)
    metrics_prefix: str = opt("pagedlm", "prefix of the Prometheus series: 'vllm' serves them under vLLM's "
                              "names (vllm:...) for vLLM dashboards", LOGGING, choices=["pagedlm", "vllm"])
    disable_log_requests: bool = opt(False, "vLLM's request-log switch", LOGGING)
    enable_log_requests: bool = opt(False, "vLLM's request-log switch", LOGGING)
    max_log_len: int | None = opt(None, "vLLM's request-log length", LOGGING)
    enable_log_outputs: bool = opt(False, "vLLM's output-log switch", LOGGING)
    enable_prompt_tokens_details: bool = opt(False, "report cached prompt tokens in usage", FRONTEND)
    disable_frontend_multiprocessing: bool = opt(False, "vLLM's frontend process switch", FRONTEND)
    lora_modules: list[str] | None = opt(None, "LoRA adapters to serve: name=path or JSON "
                                         '{"name": ..., "path": ..., "base_model_name": ...}; needs --enable-lora',
                                         FRONTEND)
    tool_call_parser: str | None = opt(None, "how tool calls are written in this model's output", FRONTEND,
                                       choices=sorted(TOOL_PARSERS))
    chat_template_content_format: str = opt("auto", "how message content reaches the chat template: string (text "
                                            "parts joined), openai (a list of text parts), auto (openai when the "
                                            "template loops over a message's content)", FRONTEND,
                                            choices=["auto", "string", "openai"])
    response_role: str = opt("assistant", "role of a chat reply when the generation prompt is added", FRONTEND)
    enable_force_include_usage: bool = opt(False, "every stream ends with usage, as if stream_options.include_usage "
                                           "were set", FRONTEND)
    return_tokens_as_token_ids: bool = opt(False, "logprobs name tokens 'token_id:N' instead of by their text (for "
                                           "tokens that are not valid UTF-8 alone)", FRONTEND)
    enable_auto_tool_choice: bool = opt(False, "let the model choose to call tools (tool_choice 'auto'); needs "
                                        "--tool-call-parser", FRONTEND)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, notices: bool = True) -> "ServerArgs":
        """``notices``: log the one-line notice of each flag set that has no effect (the process
        that parses the command line does; a pool's API server processes, parsing it again, not)."""
        kwargs = dataclass_kwargs(cls, args)
        for name in ("allowed_origins", "allowed_methods", "allowed_headers"):
            if name in kwargs:
                kwargs[name] = _json_or_words(name, kwargs[name])
        server_args = cls(**kwargs)
        if server_args.api_key is None:
            env_key = next((os.environ[v] for v in API_KEY_ENV_VARS if os.environ.get(v)), None)
            server_args.api_key = [env_key] if env_key else None
        elif isinstance(server_args.api_key, str):  # ServerArgs(api_key="k")
            server_args.api_key = [server_args.api_key]
        refuse_unsupported(server_args)
        if notices:
            log_no_effect(server_args)
        if not 0 <= server_args.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535], got {server_args.port}")
        if server_args.api_server_count < 1:
            raise ConfigError(f"--api-server-count must be at least 1, got {server_args.api_server_count}")
        server_args.check_tls()
        return server_args

    def check_tls(self) -> None:
        """Both PEM files readable and a key that matches the certificate, before the model loads."""
        if self.ssl_certfile is None and (self.ssl_keyfile or self.ssl_ca_certs or self.ssl_cert_reqs):
            raise ConfigError("--ssl-keyfile, --ssl-ca-certs and --ssl-cert-reqs need --ssl-certfile (the "
                              "certificate to serve https with)")
        if self.ssl_cert_reqs and self.ssl_ca_certs is None:
            raise ConfigError("--ssl-cert-reqs needs --ssl-ca-certs (the CAs that client certificates are checked "
                              "against)")
        if self.ssl_certfile is None:
            return
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the TLS certificate {self.ssl_certfile!r}"
                              f"{f' with the key {self.ssl_keyfile!r}' if self.ssl_keyfile else ''}: {e}") from e
        if self.ssl_ca_certs is not None:
            try:
                context.load_verify_locations(self.ssl_ca_certs)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"cannot load the CA certificates {self.ssl_ca_certs!r}: {e}") from e


def _json_or_words(name: str, values: list[str]) -> list[str]:
    """vLLM writes list flags as one JSON list ('["https://a.example"]'); plain words work too."""
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            parsed = json.loads(values[0])
        except ValueError as e:
            raise ConfigError(f"--{name.replace('_', '-')}: not a valid JSON list: {e}") from e
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise ConfigError(f"--{name.replace('_', '-')} must be a JSON list of strings")
        return parsed
    return list(values)


def load_yaml_config(path: str, known_flags: set[str] | None = None) -> list[str]:
    """vLLM's --config: a YAML mapping of flag names (dashes or underscores) to values,
    turned into flags that go before the command line's own (so the command line wins). A key
    set to null keeps the flag's default; a key that names no flag is refused even then. A
    JSON option's key may be given alone (``speculative-config.method: ngram``)."""
    import yaml

    try:
        with open(path) as f:
            data: Any = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read --config {path}: {e}") from e
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of option names to values")
    argv: list[str] = []
    for key, value in data.items():
        # speculative_config.method: a JSON option's key, as on the command line (the key keeps its underscores)
        name, dot, keys = str(key).partition(".")
        flag = "--" + name.replace("_", "-") + dot + keys
        if known_flags is not None and flag.partition(".")[0] not in known_flags:
            raise ValueError(f"--config {path}: {key!r} is not a pagedlm serve option")
        if dot:  # one JSON key: its value as JSON, whatever its type
            argv += [flag, json.dumps(value)]
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            import json

            argv += [flag, json.dumps(value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def split_config_flag(argv: list[str], known_flags: set[str] | None = None) -> tuple[list[str], list[str]]:
    """-> (the flags of every ``--config FILE`` in ``argv``, the rest of ``argv``). The caller
    parses both and lets the command line win; ``known_flags``: the parser's option strings."""
    rest: list[str] = []
    config_argv: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config_argv += load_yaml_config(argv[i + 1], known_flags)
            i += 2
            continue
        if arg.startswith("--config="):
            config_argv += load_yaml_config(arg.split("=", 1)[1], known_flags)
        else:
            rest.append(arg)
        i += 1
    return config_argv, rest
