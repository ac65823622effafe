"""Answer matchers: how fine-tune accuracy (FA) decides that a generated answer is right.

A built-in task owns its matcher (the ``match`` of its ``DATASETS`` entry, e.g.
``sentiment.match_sentiment``, ``hub.match_gsm8k``). A task of your own, read from a local file
(``jsonl``, ``json``, ``csv``), has none, so ``eval.utility.match`` names one of the matchers
registered here in ``panacea.registry.MATCHERS`` (``panacea ls matchers``); it may also replace a
built-in task's own rule. docs/own_task.md walks through choosing one.

=============  ===========================================================================
``exact``      the answer, stripped of surrounding whitespace, equals the stripped reference
``first_word`` the answer's first word equals the reference's first word, both lowercased and
               stripped of surrounding punctuation and quotes (``" Positive."`` → ``positive``)
``number``     the GSM8K rule on both sides (``hub.extract_gsm8k_number``: commas dropped, the
               first number after ``"The final answer is: "``, else the last number); an answer
               without any number is wrong
``choice``     a multiple-choice letter on both sides (:func:`choice_letter`)
``regex``      ``eval.utility.pattern``: the group ``answer`` of its first match, else its first
               group, else the whole match, compared with the reference (:class:`Regex`)
=============  ===========================================================================

The reference of an evaluation row is its ``label`` when it has one, else its ``output``
(:func:`reference`). Every matcher is a small class called as ``match(response, reference) ->
bool``; its ``check(reference)`` returns why a reference can never be matched (no number, no
letter, empty), so the pipeline refuses such a row when the config is validated instead of
scoring it. To add one: a class with ``takes_pattern``, ``__call__`` and ``check``, registered
at the bottom of this file.
"""

from __future__ import annotations

import re
import string

from ..errors import ConfigError
from ..registry import MATCHERS
from .base import DataSpec, Example
from .hub import _NUMBER, extract_gsm8k_number

_PUNCT = string.punctuation + "“”‘’"


def reference(ex: Example) -> str:
    """What an answer to ``ex`` is compared with: its ``label``, else its ``output``."""
    return ex.label if ex.label is not None else ex.output


class Exact:
    """Stripped answer == stripped reference (case and punctuation count)."""

    takes_pattern = False

    def __call__(self, response: str, ref: str) -> bool:
        return response.strip() == ref.strip()

    def check(self, ref: str) -> str | None:
        return None if ref.strip() else "is empty"


def first_word(text: str) -> str:
    """The first whitespace-separated word, lowercased, surrounding punctuation and quotes removed."""
    words = text.strip().lower().split()
    return words[0].strip(_PUNCT) if words else ""


class FirstWord:
    """First word of the answer == first word of the reference (the ``sentiment`` rule, for any label)."""

    takes_pattern = False

    def __call__(self, response: str, ref: str) -> bool:
        word = first_word(response)
        return bool(word) and word == first_word(ref)

    def check(self, ref: str) -> str | None:
        return None if first_word(ref) else "has no word"


class Number:
    """The GSM8K number of the answer == that of the reference (docs/protocol.md#fine-tune-accuracy-fa)."""

    takes_pattern = False

    def __call__(self, response: str, ref: str) -> bool:
        # extract_gsm8k_number gives inf for "no number" on both sides; that is no match here
        if not _NUMBER.search(response.replace(",", "")):
            return False
        return extract_gsm8k_number(response) == extract_gsm8k_number(ref)

    def check(self, ref: str) -> str | None:
        return None if _NUMBER.search(ref.replace(",", "")) else "has no number"


_BRACKETED = re.compile(r"[(\[]([A-Za-z])[)\]]")
_LEADING = re.compile(r"([A-Z])(?:[).:,]|\s|$)")
_SAID = re.compile(r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*[(\[]?([A-Za-z])\b", re.IGNORECASE)


def choice_letter(text: str) -> str | None:
    """The multiple-choice letter a text gives, upper-cased, or None.

    In this order: the whole stripped text is one letter (``"b"``); it starts with a bracketed
    letter (``"(B) Paris"``, ``"[c]"``); it starts with a capital letter followed by ``) . : ,``, a
    space or the end (``"B. Paris"``, ``"C"``; ``"Berlin"`` is no letter); it says ``answer``,
    ``option`` or ``choice`` (optionally ``is``, ``:``), then a letter (``"The answer is (d)"``).
    """
    t = text.strip()
    if len(t) == 1 and t.isascii() and t.isalpha():
        return t.upper()
    m = _BRACKETED.match(t) or _LEADING.match(t) or _SAID.search(t)
    return m.group(1).upper() if m else None


class Choice:
    """The letter of the answer == the letter of the reference (:func:`choice_letter`)."""

    takes_pattern = False

    def __call__(self, response: str, ref: str) -> bool:
        got = choice_letter(response)
        return got is not None and got == choice_letter(ref)

    def check(self, ref: str) -> str | None:
        return None if choice_letter(ref) else "gives no choice letter (A, (b), 'answer: C', …)"


class Regex:
    """``eval.utility.pattern`` extracts the answer; it must equal the reference.

    The extracted value is the group named ``answer`` of the first match (``re.search``), else its
    first group, else the whole match, stripped. The reference goes through the same extraction when
    the pattern matches it (a full ``output`` such as ``"Answer: yes"``), else it is compared whole
    (a bare ``label`` such as ``yes``). An answer the pattern does not match is wrong. Flags go
    inline, e.g. ``(?i)`` for case-insensitive.
    """

    takes_pattern = True

    def __init__(self, pattern: str, key: str = "eval.utility"):
        try:
            self.rx = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{key}.pattern: not a valid regular expression ({e})") from None
        self.group: int | str = "answer" if "answer" in self.rx.groupindex else (1 if self.rx.groups else 0)

    def extract(self, text: str) -> str | None:
        m = self.rx.search(text)
        if m is None:
            return None
        return (m.group(self.group) or "").strip()  # an optional group that did not take part: ""

    def __call__(self, response: str, ref: str) -> bool:
        got = self.extract(response)
        if got is None:
            return False
        want = self.extract(ref)
        return got == (want if want is not None else ref.strip())

    def check(self, ref: str) -> str | None:
        return None if ref.strip() else "is empty"


def build_matcher(spec: DataSpec, key: str):
    """The matcher ``spec.match`` names, built with ``spec.pattern`` when it reads one.

    Raises:
        ConfigError: naming ``<key>.match`` (unknown name, with the choices) or ``<key>.pattern``
            (missing for ``regex``, given for a matcher that ignores it, not a valid expression).
    """
    entry = MATCHERS.get(spec.match, f"{key}.match")
    cls = entry.obj
    if cls.takes_pattern:
        if not spec.pattern:
            raise ConfigError(f"{key}.pattern is required with match: {spec.match} (a regular expression)")
        return cls(spec.pattern, key)
    if spec.pattern is not None:
        raise ConfigError(f"{key}.pattern is read only with match: regex, not match: {spec.match}")
    return cls()


MATCHERS.register("exact", Exact, help="stripped answer equals the stripped reference")
MATCHERS.register("first_word", FirstWord, help="first word of the answer, lowercased, without punctuation")
MATCHERS.register("number", Number, help="GSM8K rule: the answer's final/last number equals the reference's")
MATCHERS.register("choice", Choice, help="multiple-choice letter: 'B', '(b)', 'B. …', 'the answer is B'")
MATCHERS.register("regex", Regex, help="eval.utility.pattern's group `answer` (else first group) equals the reference")
