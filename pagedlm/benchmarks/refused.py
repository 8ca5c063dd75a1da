"""vLLM ``bench`` flags that pagedlm does not implement: parsed, so that a script using one
stops at once with a line saying which flag and why, instead of argparse's bare
"unrecognized arguments" (and never accepted and ignored)."""

from __future__ import annotations

import argparse


class _Refuse(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported by {parser.prog}: {self.help}")


def add_refused_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """``flags``: flag -> why it is refused (what to do instead)."""
    group = parser.add_argument_group("vLLM flags refused (not implemented)")
    for flag, reason in flags.items():
        group.add_argument(flag, action=_Refuse, nargs="*", help=reason, default=argparse.SUPPRESS)
