"""Keeping the API key out of everything we store or print: ``Redactor`` finds it in text a
server sent back, whatever the encoding (plain, JSON-escaped, URL-encoded, HTML entities,
base64), and replaces it with ``[redacted]``.

Every piece of server text passes through it before it is stored: the raw body (for error
snippets), every string of the decoded JSON body, the headers we read (request ids).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
_SHORT_ESCAPES = {'"': '"', "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_HTML_NAMES = {'"': "quot", "&": "amp", "<": "lt", ">": "gt", "'": "apos"}
_MIN_BASE64 = 8  # a shorter base64 core would match innocent text


def _hex(value: int, width: int) -> str:
    """A pattern for ``value`` in hex, either case, with at least ``width`` digits."""
    digits = f"{value:0{width}x}"
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in digits)


def _char(c: str) -> str:
    """Every way one character of the key can appear in text a server wrote."""
    cp = ord(c)
    alts = [r"\\+" if c == "\\" else re.escape(c)]  # a backslash, however often escaped
    # JSON: \uXXXX (any case; a surrogate pair beyond the BMP), short escapes, and any depth
    # of nesting (a JSON string inside a JSON string doubles the backslashes)
    if cp < 0x10000:
        alts.append(r"\\+u" + _hex(cp, 4))
    else:
        high, low = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
        alts.append(r"\\+u" + _hex(high, 4) + r"\\+u" + _hex(low, 4))
    if c in _SHORT_ESCAPES:
        alts.append(r"\\+" + re.escape(_SHORT_ESCAPES[c]))
    # URL encoding (%XX of each UTF-8 byte, any case; '+' for a space)
    alts.append("".join("%" + _hex(b, 2) for b in c.encode("utf-8")))
    if c == " ":
        alts.append(r"\+")
    # HTML character references
    alts.append(f"&#0*{cp};")
    alts.append(f"&#[xX]0*{_hex(cp, 1)};")
    if c in _HTML_NAMES:
        alts.append(f"&{_HTML_NAMES[c]};")
    return "(?:" + "|".join(alts) + ")"


def base64_cores(secret: bytes) -> set[str]:
    """The base64 text that encodes ``secret`` wherever it sits in a longer encoded string.

    Base64 turns 3 bytes into 4 characters, so the secret's encoding depends on where it
    starts (3 alignments); only the characters made entirely of the secret's bits are kept.
    """
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode("ascii")
        first = -(-8 * offset // 6)  # the first character with no prefix bit in it
        last = 8 * (offset + len(secret)) // 6  # one past the last with no padding bit
        core = encoded[first:last]
        if len(core) >= _MIN_BASE64:
            cores.add(core)
            cores.add(core.translate(str.maketrans("+/", "-_")))
    return cores


def _need(length: int) -> int:
    """How much of a form must be there to count: half of it, 8 at least (all of a short one)."""
    return min(length, max(_MIN_BASE64, -(-length // 2)))


def _leading(parts: list[str]) -> str:
    """A pattern for ``parts`` in sequence, or any leading run of at least half of them (8
    at least): a server that cuts a message short must not leave most of the key behind."""
    need = _need(len(parts))
    tail = ""
    for part in reversed(parts[need:]):
        tail = f"(?:{part}{tail})?"
    return "".join(parts[:need]) + tail


class Redactor:
    """``redactor(text)`` is ``text`` with every form of every secret replaced by [redacted]
    (a form cut short after at least half of it counts too).

    Several secrets (the keys of every configured account: a server may echo key B in an
    answer to key A) make one pattern and one set of needles, so a clean text costs a few
    substring scans per key and a dirty one a single regex pass."""

    def __init__(self, *secrets: str | Iterable[str]):
        flat: list[str] = []
        for item in secrets:
            flat.extend([item] if isinstance(item, str) else item)
        # longest first: a key that contains another is replaced whole
        self.secrets = tuple(sorted({s for s in flat if s}, key=len, reverse=True))
        self.secret = self.secrets[0] if self.secrets else ""
        self._pattern: re.Pattern[str] | None = None
        # Without a backslash, '%' or '&' in a text, only the literal forms can be in it:
        # a key itself or a base64 core, each starting with one of these needles.
        self._needles: tuple[str, ...] = ()
        self._plus = any(" " in secret for secret in self.secrets)  # a space may come as '+'
        forms: list[str] = []
        needles: list[str] = []
        for secret in self.secrets:
            forms.append(_leading([_char(c) for c in secret]))
            cores = sorted(base64_cores(secret.encode("utf-8")), key=len, reverse=True)
            forms += [_leading([re.escape(c) for c in core]) for core in cores]
            needles += [form[: _need(len(form))] for form in (secret, *cores)]
        if forms:
            self._pattern = re.compile("|".join(forms))
            self._needles = tuple(dict.fromkeys(needles))

    def _clean(self, text: str) -> bool:
        """True when ``text`` surely holds no form of the secret (a few substring scans, far
        cheaper than the pattern; nearly every answer is decided here)."""
        if "\\" in text or "%" in text or "&" in text or (self._plus and "+" in text):
            return False
        return not any(needle in text for needle in self._needles)

    def __call__(self, text: str) -> str:
        if self._pattern is None or self._clean(text):
            return text
        return self._pattern.sub(REDACTED, text)

    def found_in(self, text: str) -> bool:
        if self._pattern is None or self._clean(text):
            return False
        return self._pattern.search(text) is not None

    def scrub(self, value: Any) -> Any:
        """A decoded JSON value with every string (keys included) redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def json_text(self, text: str, body: Any) -> tuple[str, Any]:
        """(raw text, decoded body) with the secret redacted in both.

        Without escapes every decoded string appears verbatim in the raw text, so a raw text
        with no backslash and no match proves the body clean; only an answer with
        backslashes or a match is walked string by string.
        """
        if self._pattern is None or self._clean(text):
            return text, body
        if "\\" not in text and self._pattern.search(text) is None:
            return text, body  # '%' or '&' in it, but no form of the key
        return self(text), self.scrub(body)


__all__ = ["REDACTED", "Redactor", "base64_cores"]
