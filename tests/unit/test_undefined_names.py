"""Every name the package and its tests use is defined: pyflakes over the source, undefined
names only (a missing import in a rarely-run path is otherwise found by CI or a user).
benchmarks/ is left out: pyflakes misreads its lambdas over names `del`eted after the timing."""
from __future__ import annotations

from pathlib import Path

from pyflakes import api as pyflakes_api  # the test extra's: no silent skip without it
from pyflakes import messages
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[2]
UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


class _Collect(Reporter):
    def __init__(self):
        self.found: list[str] = []

    def flake(self, message):
        if isinstance(message, UNDEFINED):
            self.found.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: {msg}")

    def unexpectedError(self, filename, msg):
        self.found.append(f"{filename}: {msg}")


def undefined_names(paths: list[Path]) -> list[str]:
    reporter = _Collect()
    pyflakes_api.checkRecursive([str(p) for p in paths], reporter)
    return reporter.found


def test_no_undefined_names_in_the_package_and_tests():
    assert undefined_names([ROOT / "pagedlm", ROOT / "tests"]) == []


def test_the_check_finds_a_missing_import(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return memory.zeroed_kv_cache()\n")
    found = undefined_names([tmp_path])
    assert len(found) == 1 and "undefined name 'memory'" in found[0]
