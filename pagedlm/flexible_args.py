"""vLLM's command-line spellings, read before argparse sees them (vLLM's FlexibleArgumentParser):

- ``--max_model_len`` is ``--max-model-len`` (underscores in a flag's name read as dashes;
  ``--flag=value`` is argparse's own);
- a JSON option takes its keys one by one: ``--speculative-config.method ngram
  --speculative-config.num_speculative_tokens 3`` is ``--speculative-config '{"method": "ngram",
  "num_speculative_tokens": 3}'``; ``--hf-overrides.text_config.num_hidden_layers 2`` nests;
  ``--compilation-config.cudagraph_capture_sizes+ 1,2,4`` appends to a list.

A value reads as JSON where it parses (``3``, ``true``, ``null``, ``[1, 2]``), else as a size
with a suffix (``8g``, ``32K``), else as the string itself. Every occurrence of one JSON option
(whole objects and single keys) merges into one object, left to right: a later key wins, nested
objects merge, ``key+`` and a repeated single key extend a list. (vLLM keeps only the keys given
one by one when both forms are on a line; nothing is dropped here.) A dotted key on an option
that does not take JSON is an argparse error naming the options that do.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from pagedlm.arg_utils import json_object_or_int, json_or_dict, parse_value

logger = logging.getLogger("pagedlm")

JSON_PARSERS = (json_or_dict, json_object_or_int)

JSON_TIP = ("A JSON option also takes its keys one by one: --speculative-config.method ngram "
            "--speculative-config.num_speculative_tokens 3 is --speculative-config "
            "'{\"method\": \"ngram\", \"num_speculative_tokens\": 3}'; keys nest (--hf-overrides.text_config.KEY "
            "VALUE), KEY+ appends comma-separated items to a list, and every occurrence merges. Flag names "
            "take underscores too (--max_model_len).")


def is_json_action(action: argparse.Action) -> bool:
    return action.type in JSON_PARSERS


def merge_json(base: dict[str, Any], update: dict[str, Any], extend_lists: bool = False) -> list[str]:
    """Merge ``update`` into ``base`` in place: nested objects merge, other values replace (a list
    extends a list with ``extend_lists``: vLLM's rule for keys given one by one). -> the key paths
    that replaced a value."""
    replaced: list[str] = []
    for key, value in update.items():
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            replaced += [f"{key}.{path}" for path in merge_json(current, value, extend_lists)]
        elif extend_lists and isinstance(value, list) and isinstance(current, list):
            current.extend(value)
        else:
            if key in base:
                replaced.append(key)
            base[key] = value
    return replaced


def _dashed(arg: str) -> str:
    """``--max_model_len=8`` -> ``--max-model-len=8``: only the flag's name (up to the first '.'
    or '='), never a nested key or the value."""
    if not arg.startswith("--"):
        return arg
    head, sep, value = arg.partition("=")
    name, dot, keys = head.partition(".")
    return name.replace("_", "-") + dot + keys + sep + value


def _nested(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys[1:]):
        value = {key: value}
    return {keys[0]: value}


class _Slot:
    """Where one JSON option's merged object goes back on the command line."""

    def __init__(self, flag: str) -> None:
        self.flag = flag
        self.value: dict[str, Any] = {}
        self.index = -1


def normalize_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` in the spellings ``parser`` takes (module docstring). An argument whose flag this
    parser does not have is passed on as it is (a subcommand's parser reads it)."""
    out: list[Any] = []
    slots: dict[str, _Slot] = {}
    given_keys: set[str] = set()
    repeated: list[str] = []
    i = 0
    while i < len(argv):
        arg = _dashed(argv[i])
        if arg == "--":
            out += argv[i:]
            break
        head, has_inline, inline = arg.partition("=")
        name, dot, keys = head.partition(".")
        action = parser._option_string_actions.get(name) if arg.startswith("-") else None
        if isinstance(action, argparse.BooleanOptionalAction) and not dot and name == action.option_strings[0]:
            # vLLM's StoreBoolean spellings: --enable-chunked-prefill=false, --enable-chunked-prefill False
            value = inline if has_inline else argv[i + 1] if i + 1 < len(argv) else ""
            if value.lower() in ("true", "false"):
                out.append(name if value.lower() == "true" else "--no-" + name[2:])
                i += 1 if has_inline else 2
                continue
        if action is None or not (dot or is_json_action(action)):
            out.append(arg)
            i += 1
            continue
        if not is_json_action(action):
            options = ", ".join(_json_flags(parser)) or "none here"
            parser.error(f"{head}: {name} is not a JSON option, so it takes no keys (the JSON options: {options})")
        text = inline if has_inline else argv[i + 1] if i + 1 < len(argv) else None
        if dot:
            if text is None:
                parser.error(f"argument {head}: expected one argument")
            update = _dotted_update(parser, head, keys, text)
            if not keys.endswith("+"):
                repeated += [head] if head in given_keys else []
                given_keys.add(head)
        else:
            update = _json_object(text)
            if update is None:  # not an object (-O 3, or bad JSON): argparse reads (or refuses) it
                out.append(arg)
                i += 1
                continue
        slot = slots.setdefault(action.dest, _Slot(next(s for s in action.option_strings if s.startswith("--"))))
        merge_json(slot.value, update, extend_lists=bool(dot))
        slot.index = len(out)  # the merged object goes where the option was given last
        out.append(slot)
        i += 1 if has_inline else 2
    if repeated:
        logger.warning("%s given more than once: the last value is used", ", ".join(sorted(set(repeated))))
    return _expand(out)


def _dotted_update(parser: argparse.ArgumentParser, head: str, keys: str, text: str) -> dict[str, Any]:
    append = keys.endswith("+")
    path = keys.removesuffix("+").split(".")
    if not all(path):
        parser.error(f"{head}: an empty key (write --option.key or --option.outer.inner)")
    value = [parse_value(item) for item in text.split(",")] if append else parse_value(text)
    return _nested(path, value)


def _json_object(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _expand(out: list[Any]) -> list[str]:
    argv: list[str] = []
    for index, item in enumerate(out):
        if not isinstance(item, _Slot):
            argv.append(item)
        elif item.index == index:
            argv += [item.flag, json.dumps(item.value)]
    return argv


def _json_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions if is_json_action(a)]


class FlexibleArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that takes vLLM's spellings (module docstring); its subcommands' parsers
    are of this class too, and each reads its own flags."""

    def parse_known_args(self, args: Any = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(normalize_argv(self, argv), namespace)

    def format_help(self) -> str:
        text = super().format_help()
        if any(is_json_action(a) for a in self._actions):
            import textwrap

            width = self._get_formatter()._width
            text += "\n" + textwrap.fill(JSON_TIP, width, break_on_hyphens=False) + "\n"
        return text
