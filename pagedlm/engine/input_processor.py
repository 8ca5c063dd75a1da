"""Prompts and sampling params -> validated EngineCoreRequests (tokenize, check, fill
defaults). Runs in the frontend: the engine core never sees text."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Union

import msgspec

from pagedlm.config import ModelConfig, check_chat_template
from pagedlm.engine.messages import EngineCoreRequest
from pagedlm.models.generation_config import log_generation_defaults
from pagedlm.pooling_params import PoolingParams
from pagedlm.engine.logits_processor_loading import load_processor_class, validate_request_params
from pagedlm.sampling_params import MAX_SEED, RequestOutputKind, SamplingParams
from pagedlm.structured_output.validate import validate_structured_outputs

# str | {"prompt": str} | {"prompt_token_ids": [...]} | list[int]
PromptType = Union[str, dict, list]

logger = logging.getLogger(__name__)


class InvalidRequestError(ValueError):
    """The request cannot be served as given; the message says which field and why."""


@functools.cache
def _fast_fallback_notice(path: str) -> None:
    """Once per tokenizer (the frontend loads it more than once): transformers gives the fast
    tokenizer where a model has no Python one (most models, from transformers 5 on)."""
    logger.warning("--tokenizer-mode slow: transformers has no Python tokenizer for %r; using its fast one.", path)


def load_tokenizer(model_config: ModelConfig):
    """The model's tokenizer; None under --skip-tokenizer-init."""
    from pagedlm.tokenizers import get_tokenizer

    if model_config.skip_tokenizer_init:
        return None

    try:
        tokenizer = get_tokenizer(model_config.tokenizer, tokenizer_mode=model_config.tokenizer_mode,
                                  trust_remote_code=model_config.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InvalidRequestError(f"could not load a tokenizer from {model_config.tokenizer!r}: {e}") from e
    if model_config.tokenizer_mode == "slow" and tokenizer.is_fast:
        _fast_fallback_notice(model_config.tokenizer)
    if model_config.chat_template is not None:
        tokenizer.chat_template = model_config.chat_template
    elif isinstance(getattr(tokenizer, "chat_template", None), str):
        check_chat_template(tokenizer.chat_template)  # the checkpoint's own: broken is a start-up error
    return tokenizer


def generation_eos_ids(model_config: ModelConfig) -> list[int]:
    """Extra EOS ids a checkpoint's generation_config.json names (e.g. Llama 3's <|eom_id|>),
    read from the directory --generation-config names, else the model's. A checkpoint
    directory without that file has them from config.json, as in vLLM, whose generation
    config is then transformers' ``GenerationConfig.from_model_config``."""
    model_dir = model_config.generation_config_dir or model_config.model
    hf_config = model_config.hf_config
    path = Path(model_dir) / "generation_config.json"
    if path.exists():
        eos = json.loads(path.read_text()).get("eos_token_id")
    elif Path(model_dir).is_dir():  # (a GGUF file has no generation config, in vLLM either)
        eos = getattr(hf_config, "eos_token_id", None)
    else:
        return []
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


class InputProcessor:
    def __init__(self, model_config: ModelConfig, tokenizer: Any, lora_config: Any = None,
                 scheduling_policy: str = "fcfs", logits_processors: tuple[str, ...] = ()) -> None:
        from pagedlm.lora.registry import LoRAValidator

        # Custom logits processors' classes: each request's extra_args go through their validate_params.
        self.logits_processor_classes = [load_processor_class(name) for name in logits_processors]

        self.model_config = model_config
        self.scheduling_policy = scheduling_policy
        self.lora = LoRAValidator(lora_config, model_config.hf_config)
        self.tokenizer = tokenizer
        self.vocab_size = model_config.vocab_size
        self.max_model_len = model_config.max_model_len
        self.eos_token_id = tokenizer.eos_token_id if tokenizer is not None else None
        if self.eos_token_id is None:
            eos = getattr(model_config.hf_config, "eos_token_id", None)
            self.eos_token_id = eos if isinstance(eos, int) else (eos[0] if eos else None)
        self.extra_eos_ids = [t for t in generation_eos_ids(model_config)
                              if t != self.eos_token_id]
        # Each frontend (LLM, API server) builds one InputProcessor: the defaults are logged once
        # there, not again in the engine-core process that re-creates the config.
        log_generation_defaults(model_config.generation_defaults)
        self.max_chars_per_token = max_chars_per_token(tokenizer) if tokenizer is not None else None

    def check_num_chars(self, num_chars: int) -> None:
        """Reject text whose length alone proves it too long, before paying to tokenize it:
        no token covers more than ``max_chars_per_token`` characters, so a text of L characters
        has at least about L / max_chars_per_token tokens."""
        if self.max_chars_per_token is None:
            return
        # x4: a normalizer may compose characters (NFC/NFKC) before the vocabulary applies.
        min_tokens = num_chars // (4 * self.max_chars_per_token)
        if min_tokens >= self.max_model_len:
            raise InvalidRequestError(
                f"The prompt ({num_chars} characters, so at least {min_tokens} tokens) is too long: it must be "
                f"shorter than the maximum model length of {self.max_model_len} tokens."
            )

    def encode(self, text: str, add_special_tokens: bool = True, check_chars: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise InvalidRequestError("text prompts are not supported with skip_tokenizer_init=True (the engine "
                                      "has no tokenizer): pass token ids ({'prompt_token_ids': [...]} or a list "
                                      "of ints)")
        if check_chars:  # off when the tokens will be truncated (pooling's truncate_prompt_tokens)
            self.check_num_chars(len(text))
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def tokenize_prompt(self, prompt: PromptType, check_chars: bool = True) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.encode(prompt, check_chars=check_chars)
        if isinstance(prompt, dict):
            if "prompt_embeds" in prompt:  # (generation takes them before tokenizing: pooling gets here)
                raise InvalidRequestError("prompt_embeds is supported for text generation only, not for pooling, "
                                          "scoring or beam search")
            unknown = sorted(set(prompt) - {"prompt", "prompt_token_ids", "cache_salt"})
            if unknown:  # e.g. multi_modal_data: refused, never dropped
                raise InvalidRequestError(f"prompt keys {unknown} are not supported (pagedlm serves text models); "
                                          "use 'prompt' or 'prompt_token_ids' (and optionally 'cache_salt')")
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]  # a numpy array or tensor: its Python ints
                return prompt.get("prompt"), ids.tolist() if hasattr(ids, "tolist") else list(ids)
            if "prompt" in prompt:
                return prompt["prompt"], self.encode(prompt["prompt"], check_chars=check_chars)
            raise InvalidRequestError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise InvalidRequestError(f"prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")

    @staticmethod
    def cache_salt(prompt: PromptType) -> str | None:
        """A prompt dict's ``cache_salt`` (vLLM's): its KV blocks are shared through the prefix
        cache only with requests of the same salt."""
        salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise InvalidRequestError(f"cache_salt must be a non-empty string, got {salt!r}")
        return salt

    def truncate(self, token_ids: list[int], keep: int | None, side: str = "left") -> list[int]:
        """truncate_prompt_tokens: the last ``keep`` tokens (-1: up to max_model_len), or the
        first ones with ``side`` "right" (the server's truncation_side, vLLM's)."""
        if keep is None:
            return token_ids
        if keep > self.max_model_len:
            raise InvalidRequestError(f"truncate_prompt_tokens ({keep}) is greater than the maximum model "
                                      f"length ({self.max_model_len}); use at most that, or -1")
        keep = self.max_model_len if keep == -1 else keep
        return token_ids[:keep] if side == "right" else token_ids[-keep:]

    def validate_prompt(self, token_ids: list[int], pooling: bool = False) -> None:
        if not token_ids:
            raise InvalidRequestError("The prompt cannot be empty.")
        in_vocab = all(isinstance(t, int) for t in token_ids) and 0 <= min(token_ids) and max(token_ids) < self.vocab_size
        bad = [] if in_vocab else [t for t in token_ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
        not_ints = [t for t in bad if not isinstance(t, int)]
        if not_ints:
            raise InvalidRequestError(f"Token ids must be integers, got {not_ints[:5]}.")
        if bad:
            raise InvalidRequestError(f"Token ids {bad[:5]} are out of vocabulary (size {self.vocab_size}).")
        if pooling and len(token_ids) > self.max_model_len:
            raise InvalidRequestError(
                f"The input (length {len(token_ids)}) is longer than the maximum model length of "
                f"{self.max_model_len}; shorten it or set truncate_prompt_tokens.")
        if not pooling and len(token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"The prompt (length {len(token_ids)}) is too long: it must be shorter than the maximum "
                f"model length of {self.max_model_len} to leave room for at least one generated token."
            )

    def num_logprobs(self, name: str, value: int | None) -> int | None:
        """A request's logprobs count, -1 resolved to the whole vocabulary, checked against
        --max-logprobs (-1: no cap but the vocabulary), as vLLM's processor does. The server
        calls it too, so a request is refused with the same message offline and served."""
        if value is None:
            return None
        if value == -1:  # the whole vocabulary (the cap still applies, as vLLM's)
            value = self.vocab_size
        max_logprobs = self.model_config.max_logprobs
        if max_logprobs != -1 and value > max_logprobs:
            raise InvalidRequestError(f"{name}: requested {value} logprobs, more than the server's "
                                      f"--max-logprobs={max_logprobs}.")
        if value > self.vocab_size:  # (a --max-logprobs above it let it through)
            raise InvalidRequestError(f"{name}: requested {value} logprobs, more than the {self.vocab_size} "
                                      "tokens of the model's vocabulary.")
        return value

    def prepare_params(self, params: SamplingParams, num_prompt_tokens: int) -> SamplingParams:
        params = params.clone()
        try:
            # Again: fields set after construction (params.max_tokens = 0, params.stop = "x")
            # were never checked nor normalised.
            params.__post_init__()
            params.verify_vocab(self.vocab_size)
            validate_request_params(self.logits_processor_classes, params)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        # logprob_token_ids (logprobs is its length) has vLLM's own cap, not --max-logprobs.
        for name in ("prompt_logprobs",) if params.logprob_token_ids else ("logprobs", "prompt_logprobs"):
            setattr(params, name, self.num_logprobs(name, getattr(params, name)))
        if self.tokenizer is None:
            self._check_without_tokenizer(params)
            params.detokenize = False  # vLLM: no tokenizer, no detokenization (outputs' text is "")
        if params.max_tokens is None:
            params.max_tokens = self.max_model_len - num_prompt_tokens
        if not params.ignore_eos:
            params.stop_token_ids = list(dict.fromkeys(params.stop_token_ids + self.extra_eos_ids))
        params.all_stop_token_ids = set(params.stop_token_ids)
        if self.eos_token_id is not None and not params.ignore_eos:
            params.all_stop_token_ids.add(self.eos_token_id)
        if params.bad_words:
            params.bad_words_token_ids = self._tokenize_bad_words(params.bad_words)
        if params.structured_outputs is not None:  # a bad schema is refused here, before queueing
            validate_structured_outputs(params.structured_outputs)
        return params

    @staticmethod
    def _check_without_tokenizer(params: SamplingParams) -> None:
        """skip_tokenizer_init: refuse what needs text (the stop strings would never match)."""
        if params.stop:
            raise InvalidRequestError("stop strings need a tokenizer, so they cannot be used with "
                                      "skip_tokenizer_init=True; use stop_token_ids")
        if params.bad_words:
            raise InvalidRequestError("bad_words need a tokenizer, so they cannot be used with "
                                      "skip_tokenizer_init=True")
        if params.structured_outputs is not None:
            raise InvalidRequestError("Structured outputs requires a tokenizer so it can't be used with "
                                      "'skip_tokenizer_init'")

    def _tokenize_bad_words(self, words: list[str]) -> list[list[int]]:
        # A word can appear at the start of the text or after a space, which byte-level
        # BPEs tokenize differently: ban both forms.
        out: list[list[int]] = []
        for word in words:
            word = word.lstrip()
            forms = [self.tokenizer.encode(text, add_special_tokens=False) for text in (word, " " + word)]
            if not forms[0]:  # only whitespace: its spaced form would ban the bare space token
                raise InvalidRequestError(f"bad_words entries must tokenize to at least one token, got {words!r}")
            for ids in forms:
                if ids and ids not in out:
                    out.append(ids)
        return out

    def process(self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams,
                arrival_time: float | None = None, lora_request: Any = None,
                priority: int = 0) -> tuple[str | None, EngineCoreRequest]:
        """-> (prompt text if known, request). Raises InvalidRequestError on bad input."""
        self.check_priority(priority)
        if lora_request is not None and isinstance(params, PoolingParams):
            raise InvalidRequestError("lora_request is not supported for pooling requests")
        try:
            lora = self.lora.check(lora_request)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        if isinstance(params, PoolingParams):
            return self._process_pooling(request_id, prompt, params, arrival_time, priority)
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        if self.model_config.runner == "pooling":
            raise InvalidRequestError(
                "This model runs as a pooling (embedding) model and cannot generate text: use LLM.embed / "
                "LLM.encode or POST /v1/embeddings (a decoder checkpoint generates with --runner generate).")
        salt = self.cache_salt(prompt)
        keep = params.truncate_prompt_tokens
        if isinstance(prompt, dict) and "prompt_embeds" in prompt:
            return self._process_embeds(request_id, prompt, params, arrival_time, priority, lora, salt)
        text, token_ids = self.tokenize_prompt(prompt, check_chars=keep is None)
        token_ids = self.truncate(token_ids, keep)
        self.validate_prompt(token_ids)
        params = self.prepare_params(params, len(token_ids))
        arrival = arrival_time if arrival_time is not None else time.time()
        return text, EngineCoreRequest(request_id, token_ids, params, self.eos_token_id, arrival, lora_request=lora,
                                       cache_salt=salt, priority=priority)

    def _process_embeds(self, request_id: str, prompt: dict, params: SamplingParams, arrival_time: float | None,
                        priority: int, lora: Any, salt: str | None) -> tuple[str | None, EngineCoreRequest]:
        """A prompt given as embeddings (vLLM's EmbedsPrompt): checked, cast to the model's dtype
        and sent as raw bytes, with one placeholder token id (0) per row, as vLLM's."""
        from pagedlm.engine.prompt_embeds import PromptEmbedsError, check_tensor, to_wire

        self.check_embeds_prompt_keys(prompt)
        try:
            tensor = check_tensor(prompt["prompt_embeds"], self.model_config.hf_config.hidden_size)
        except PromptEmbedsError as e:
            raise InvalidRequestError(str(e)) from e
        keep = params.truncate_prompt_tokens
        if keep is not None:
            tensor = tensor[-len(self.truncate(list(range(tensor.shape[0])), keep)):]
        num_tokens = int(tensor.shape[0])
        if num_tokens >= self.max_model_len:
            raise InvalidRequestError(
                f"The prompt (length {num_tokens}) is too long: it must be shorter than the maximum model length "
                f"of {self.max_model_len} to leave room for at least one generated token.")
        if params.prompt_logprobs is not None:
            raise InvalidRequestError("prompt_logprobs is not supported with prompt_embeds (the prompt has no token "
                                      "ids to score)")
        if params.repetition_penalty != 1.0:
            raise InvalidRequestError("repetition_penalty is not supported with prompt_embeds (it penalises the "
                                      "prompt's token ids, which a prompt given as embeddings does not have)")
        params = self.prepare_params(params, num_tokens)
        embeds = to_wire(tensor, self.model_config.torch_dtype)
        arrival = arrival_time if arrival_time is not None else time.time()
        return None, EngineCoreRequest(request_id, [0] * num_tokens, params, self.eos_token_id, arrival,
                                       lora_request=lora, cache_salt=salt, priority=priority, prompt_embeds=embeds)

    def check_embeds_prompt_keys(self, prompt: dict) -> None:
        """Prompt embeds need --enable-prompt-embeds, and come alone (with an optional cache_salt)."""
        if not self.model_config.enable_prompt_embeds:
            raise InvalidRequestError("prompt_embeds is only accepted when the engine was started with "
                                      "--enable-prompt-embeds (enable_prompt_embeds=True)")
        unknown = sorted(set(prompt) - {"prompt_embeds", "cache_salt"})
        if unknown:
            raise InvalidRequestError(f"a prompt given as embeddings takes 'prompt_embeds' (and optionally "
                                      f"'cache_salt') only, got also {unknown}")

    def check_priority(self, priority: Any) -> None:
        """A request's priority is an int, and other than 0 only under --scheduling-policy priority
        (vLLM refuses it the same way)."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidRequestError(f"priority must be an integer, got {priority!r}")
        if priority != 0 and self.scheduling_policy != "priority":
            raise InvalidRequestError(f"Got priority {priority} but priority scheduling is not enabled: start the "
                                      "engine with --scheduling-policy priority (scheduling_policy='priority')")

    def _process_pooling(self, request_id: str, prompt: PromptType, params: PoolingParams,
                         arrival_time: float | None, priority: int) -> tuple[str | None, EngineCoreRequest]:
        if self.model_config.pooler_config is None:
            raise InvalidRequestError(
                "This model runs as a generative model and computes no embeddings: start it with "
                "--runner pooling (runner='pooling') to embed.")
        params = params.clone()
        params.task = params.task or "embed"
        check_pooling_task(self.model_config.pooler_config, params.task)
        try:
            params.verify_task()
            self.model_config.pooler_config.check_dimensions(params.dimensions)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        salt = self.cache_salt(prompt)
        token_type_ids = None
        if isinstance(prompt, dict) and "token_type_ids" in prompt:
            token_type_ids = prompt["token_type_ids"]
            prompt = {k: v for k, v in prompt.items() if k != "token_type_ids"}
        keep = params.truncate_prompt_tokens
        text, token_ids = self.tokenize_prompt(prompt, check_chars=keep is None)
        token_ids = self.truncate(token_ids, keep)
        self.validate_prompt(token_ids, pooling=True)
        if token_type_ids is not None:
            if keep is not None:
                raise InvalidRequestError("truncate_prompt_tokens cannot cut a prompt given with token_type_ids "
                                          "(it would cut its segments): truncate the text pair when tokenizing it")
            params.extra_kwargs = self._compressed_token_types(token_type_ids, len(token_ids))
        arrival = arrival_time if arrival_time is not None else time.time()
        # The placeholder SamplingParams keeps the shared request path uniform; nothing is sampled.
        placeholder = SamplingParams(max_tokens=1, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
        return text, EngineCoreRequest(request_id, token_ids, placeholder, None, arrival, pooling_params=params,
                                       cache_salt=salt, priority=priority)


    def _compressed_token_types(self, token_type_ids: Any, num_tokens: int) -> dict[str, int] | None:
        """A prompt's token types (vLLM's TokensPrompt token_type_ids) as vLLM carries them:
        the index of the first type-1 token (segments are 0...0 1...1); None for one segment."""
        types = token_type_ids.tolist() if hasattr(token_type_ids, "tolist") else list(token_type_ids)
        if len(types) != num_tokens or any(t not in (0, 1) for t in types) or types != sorted(types):
            raise InvalidRequestError("token_type_ids must hold one 0 or 1 per prompt token, the first segment's "
                                      f"0s then the second's 1s; got {len(types)} types for {num_tokens} tokens")
        if 1 not in types:
            return None
        if int(getattr(self.model_config.hf_config, "type_vocab_size", 0) or 0) < 2:
            raise InvalidRequestError("token_type_ids: this model has no second token type (type_vocab_size < 2); "
                                      "give the pair as one segment")
        return {"compressed_token_type_ids": types.index(1)}


def check_pooling_task(pooler_config: Any, task: str) -> None:
    """The pooling task must be one the model serves: embedding models embed, sequence-
    classification models classify (and score, as cross-encoders, with one label), reward
    models token_classify (LLM.reward)."""
    if task in pooler_config.tasks:
        return
    served = ", ".join(pooler_config.tasks)
    if pooler_config.is_classifier and task == "score":
        raise InvalidRequestError(f"Score API is only enabled for num_labels == 1 (a cross-encoder); this "
                                  f"classifier has {pooler_config.num_labels} labels: use classify.")
    if pooler_config.is_reward_model:
        raise InvalidRequestError(f"This model is a reward model and does not support the {task} task (it serves "
                                  f"{served}: a reward per token): use LLM.reward, or LLM.encode with "
                                  "pooling_task='token_classify'.")
    if task == "token_classify":
        raise InvalidRequestError(f"The token_classify task (LLM.reward) needs a reward model such as "
                                  f"Qwen2ForRewardModel; this model serves {served}.")
    if pooler_config.is_classifier:
        raise InvalidRequestError(f"This model is a sequence-classification model and does not support the {task} "
                                  f"task (it serves {served}): use LLM.classify / LLM.score or POST /classify, "
                                  "/score, /rerank.")
    raise InvalidRequestError(f"This model is an embedding model and does not support the {task} task (it "
                              f"serves {served}): {task} needs a *ForSequenceClassification checkpoint.")


def fan_out(request: EngineCoreRequest) -> list[EngineCoreRequest]:
    """n > 1 becomes n sequences sharing the prompt (their prompt blocks are shared through the
    prefix cache). A seeded request gives choice i the seed + i, as vLLM does (wrapping past the
    largest seed, so every child's seed stays one torch takes). The fan-out lives in the
    frontend: the core only ever sees single sequences."""
    params = request.sampling_params
    if params.n == 1:
        return [request]
    children = []
    for i in range(params.n):
        child_params = params.copy()  # each choice its own, even with skip_clone
        child_params.n = 1
        if params.seed is not None:
            seed = params.seed + i
            child_params.seed = seed if seed <= MAX_SEED else seed - (MAX_SEED + 1)
        children.append(msgspec.structs.replace(request, request_id=f"{i}_{request.request_id}",
                                                sampling_params=child_params))
    return children


def max_chars_per_token(tokenizer: Any) -> int | None:
    """An upper bound on the characters one token decodes to: the longest vocabulary entry.
    Byte-level and SentencePiece vocabularies spell each byte or space as one character, so a
    token never decodes to more characters than its vocabulary string has."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    return max((len(piece) for piece in vocab), default=0) or None
