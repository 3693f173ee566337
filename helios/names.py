"""The rules for names and credentials a user chooses, each written once.

Every check goes through a ``Rule`` here, and every pattern matches the
*whole* text (``re.fullmatch``): a ``$`` with ``re.match`` also accepts a
trailing newline, and a dataset ``abc\\n`` once reached a store key and a
``/metrics`` label that way.

    rule.ok(value)       True if ``value`` is a str that follows the rule
    rule.check(value)    ``value``, or InvalidInput (a 400) saying what the rule is
    rule.pattern         ``^…$`` for the OpenAPI document (in JSON Schema's ECMA
                         regular expressions ``$`` is only the end of the text)

The store's own key rule (segments of ``[A-Za-z0-9._-]``) stays in
``backends/base.py``, the backend boundary; every name below fits it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, TypeGuard

from helios.errors import InvalidInput

__all__ = ["DATASET", "MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "NODE_ID", "OBJECT_ID", "PASSWORD", "TOKEN_ID",
           "TOKEN_NAME", "USERNAME", "Rule"]

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class Rule:
    what: str  # "dataset name": the message names the kind
    test: Callable[[str], bool]
    hint: str  # the rule in words, for the message
    echo: bool = True  # False for secrets: the message never repeats the value
    pattern: str = ""  # the regular expression, for rules that are one (the OpenAPI document shows it)

    def ok(self, value: object) -> TypeGuard[str]:
        return isinstance(value, str) and self.test(value)

    def check(self, value: object) -> str:
        if not self.ok(value):
            shown = f" {value!r}" if self.echo and isinstance(value, str) and len(value) <= 200 else ""
            raise InvalidInput(f"invalid {self.what}{shown}: {self.hint}")
        return value


def _regex(what: str, pattern: str, hint: str) -> Rule:
    compiled = re.compile(pattern)
    return Rule(what, lambda text: compiled.fullmatch(text) is not None, hint, pattern=f"^{pattern}$")


DATASET = _regex("dataset name", r"[a-z0-9][a-z0-9_-]{0,63}",
                 "use 1-64 of a-z 0-9 _ -, starting with a letter or digit")
USERNAME = _regex("username", r"[a-z0-9][a-z0-9_.@-]{0,63}",
                  "use 1-64 of a-z 0-9 _ . @ -, starting with a letter or digit")
TOKEN_ID = _regex("API token id", r"[0-9a-f]{16}", "16 hex digits")
OBJECT_ID = _regex("object id", r"[0-9a-f]{12}", "12 hex digits")  # dashboards, monitors
TOKEN_NAME = Rule("API token name", lambda text: 1 <= len(text) <= 128 and text.isprintable(),
                  "a printable string of 1 to 128 characters")
NODE_ID = _regex("node id", r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}",
                 "use 1-64 ASCII letters, digits, '-', '_' or '.', not starting with '.'")
PASSWORD = Rule("password", lambda text: MIN_PASSWORD_CHARS <= len(text) <= MAX_PASSWORD_CHARS,
                f"a password is a string of {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters", echo=False)
