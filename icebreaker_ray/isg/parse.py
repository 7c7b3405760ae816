"""Parsers for model output: starter lists (Table 4 / generator) and revisit labels (Table 5).

App. B.2.1: "we parse the questions from the <sug> field and ignore the intermediate
reasoning", and for Table 5 "discard the optional <rationale>". Teachers, judges and
the generator do not always follow the format, so both parsers repair what they can,
say which repair they needed, and never raise.

>>> parse_starters("<think>...</think><sug> Best One Piece arc? && Explain LoRA simply </sug>")
ParseResult(starters=['Best One Piece arc?', 'Explain LoRA simply'], status='ok')
>>> parse_starters("1. Best One Piece arc?\\n2. Explain LoRA simply").status
'no_sug_tag'
>>> parse_revisit_label("<label> no match </label><rationale>...</rationale>")
('NO_MATCH', True)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from icebreaker_ray.isg.filters import is_question_form
from icebreaker_ray.isg.prompts import MATCH, NO_MATCH

#: Statuses of :class:`ParseResult`, from no repair to nothing found.
STATUSES = ("ok", "bad_separator", "unclosed", "no_sug_tag", "empty")

#: Bounds that keep parsing fast on runaway generations (a real list is < 2 KB).
MAX_BLOCK_CHARS = 64_000
MAX_ITEMS = 100

_SUG_TAG_RE = re.compile(r"<\s*(/?)\s*sug\s*>", re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
# Where an unclosed <sug> block ends: the next format tag or chat special token.
_BLOCK_END_RE = re.compile(
    r"<\s*/?\s*(?:sug|think|label|rationale)\s*>|<\|[^<>|]{0,40}\|>|</s>", re.IGNORECASE
)
_ANY_FORMAT_TAG_RE = _BLOCK_END_RE
_AMP2_RE = re.compile(r"&{2,}")
_PIPE2_RE = re.compile(r"\|{2,}")
_LIST_MARKER_RE = re.compile(
    r"^\s*(?:[-*•·●▪►–—]\s+|\(?\d{1,3}\s*[.)\]:](?!\d)\s*|(?:q|question)\s*\d{1,3}\s*[:.)]\s*)",
    re.IGNORECASE,
)
_INLINE_NUMBER_RE = re.compile(r"(?:^|(?<=\s))\(?(\d{1,2})[.)](?=\s)")
_QUESTION_END_RE = re.compile(r"(?<=[?？])\s+")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?？:])\s+")
_WS_RE = re.compile(r"\s+")

_PAIRED_QUOTES = {
    '"': '"',
    "'": "'",
    "“": "”",
    "‘": "’",
    "«": "»",
    "「": "」",
    "『": "』",
    "`": "`",
}
_LONE_QUOTES = '"“”«»「」『』`'


@dataclass
class ParseResult:
    """Starters found in one model output and which repair was needed (:data:`STATUSES`)."""

    starters: list[str] = field(default_factory=list)
    status: str = "empty"

    @property
    def ok(self) -> bool:
        """True when the output followed the format exactly."""
        return self.status == "ok"


# -- cleaning and splitting ---------------------------------------------------------------


def _clean_item(item: str) -> str:
    """Strip numbering, bullets, markdown emphasis, quotes and stray separators."""
    s = _WS_RE.sub(" ", item).strip()
    for _ in range(3):  # "- 1. **"What?"**" needs a few rounds
        before = s
        s = _LIST_MARKER_RE.sub("", s)
        s = s.strip(" \t&|;,*_~").strip()
        if len(s) >= 2 and s[0] in _PAIRED_QUOTES and s[-1] == _PAIRED_QUOTES[s[0]]:
            s = s[1:-1].strip()
        if s and s[0] in _LONE_QUOTES and not any(c in _LONE_QUOTES for c in s[1:]):
            s = s[1:].strip()
        if s and s[-1] in _LONE_QUOTES and not any(c in _LONE_QUOTES for c in s[:-1]):
            s = s[:-1].strip()
        if s == before:
            break
    return s


def _split_questions(piece: str) -> list[str]:
    """Split "What is X? How does Y work?" into questions (each of >= 3 words)."""
    parts = [p for p in _QUESTION_END_RE.split(piece.strip()) if p.strip()]
    if len(parts) >= 2 and all(
        p.rstrip().endswith(("?", "？")) and len(p.split()) >= 3 for p in parts
    ):
        return parts
    return [piece]


def _all_question_like(parts: list[str]) -> bool:
    cleaned = [_clean_item(p) for p in parts]
    return len(cleaned) >= 2 and all(c and is_question_form(c) for c in cleaned)


def _split_inline_numbers(line: str) -> list[str] | None:
    """Split "1. A? 2. B? 3. C?" when the numbers run 1, 2, 3, ... in order."""
    marks = list(_INLINE_NUMBER_RE.finditer(line))
    if len(marks) < 2 or [int(m.group(1)) for m in marks] != list(range(1, len(marks) + 1)):
        return None
    bounds = [m.start() for m in marks] + [len(line)]
    head = line[: bounds[0]].strip()
    parts = [line[a:b] for a, b in itertools.pairwise(bounds)]
    return ([head] if head else []) + parts


def _split_loose(block: str) -> tuple[list[str], bool]:
    """Split a block that does not use "&&"; returns (parts, used_another_separator)."""
    if _PIPE2_RE.search(block):
        return _PIPE2_RE.split(block, maxsplit=MAX_ITEMS), True
    lines = [ln for ln in block.splitlines() if ln.strip()][:MAX_ITEMS]
    if len(lines) >= 2:
        parts: list[str] = []
        for ln in lines:
            parts.extend(_split_inline_numbers(ln) or [ln])
        return parts, True
    line = lines[0] if lines else ""
    inline = _split_inline_numbers(line)
    if inline and len(inline) >= 2:
        return inline, True
    for sep in (";", "&", "|"):  # ambiguous inside a question: split only if all parts are
        if sep in line:
            parts = line.split(sep, MAX_ITEMS)
            if _all_question_like(parts):
                return parts, True
    # Not split on "?": "Pokémon or Digimon? Which is better?" is one starter.
    return [line], False


def _split_block(block: str) -> tuple[list[str], bool]:
    """Items of a <sug> block; the flag is True if a separator other than "&&" was used."""
    block = block[:MAX_BLOCK_CHARS]
    if _AMP2_RE.search(block):
        parts, loose = _AMP2_RE.split(block, maxsplit=MAX_ITEMS), False
    else:
        parts, loose = _split_loose(block)
    items = [c for c in (_clean_item(p) for p in parts[:MAX_ITEMS]) if c]
    return items, loose


def _fallback(text: str) -> list[str]:
    """No <sug> tag at all: take list items, else question lines, else "?" sentences."""
    text = _ANY_FORMAT_TAG_RE.sub("\n", text[:MAX_BLOCK_CHARS])
    if _AMP2_RE.search(text) or _PIPE2_RE.search(text):
        return _split_block(text)[0]
    lines = [ln for ln in text.splitlines() if ln.strip()][: MAX_ITEMS * 10]
    marked = [ln for ln in lines if _LIST_MARKER_RE.match(ln)]
    if len(marked) >= 2:
        chosen = marked
    else:
        chosen = [ln for ln in lines if is_question_form(_clean_item(ln))]
    if not chosen:
        sentences = _SENTENCE_END_RE.split(" ".join(lines))
        chosen = [s for s in sentences if _clean_item(s).endswith(("?", "？"))]
    if not chosen:
        chosen = lines
    parts: list[str] = []
    for ln in chosen:
        parts.extend(_split_inline_numbers(ln) or _split_questions(ln))
    return [c for c in (_clean_item(p) for p in parts[:MAX_ITEMS]) if c]


def parse_starters(text: object) -> ParseResult:
    """Parse a starter list from Table 4 teacher / generator output. Never raises.

    Takes the first complete, non-empty ``<sug> … </sug>`` block, preferring one after
    the last ``</think>`` (a reasoning trace may quote the format); text around it is
    ignored. Repairs, reported in ``status``:

    * ``"ok"`` — a closed ``<sug>`` block separated by ``&&`` (or a single starter);
    * ``"bad_separator"`` — a closed block split on ``||``, newlines, "1." / "2)" /
      bullets, or — when every part is a question — ``;``, ``&`` or ``|``;
    * ``"unclosed"`` — ``<sug>`` without ``</sug>``: read to the next tag or the end;
    * ``"no_sug_tag"`` — no ``<sug>``: list items, else question lines, else
      "?"-terminated sentences (a line of several questions is split on "?");
    * ``"empty"`` — nothing found, or ``text`` is not a ``str``.

    Starters are cleaned of numbering, bullets, quotes and stray whitespace, but not
    judged: length, form, safety and duplicates are the rule filter's job
    (:mod:`icebreaker_ray.isg.filters`).
    """
    if not isinstance(text, str) or not text.strip():
        return ParseResult([], "empty")
    think_ends = list(_THINK_CLOSE_RE.finditer(text))
    if think_ends:
        tail = text[think_ends[-1].end() :]
        if _SUG_TAG_RE.search(tail):
            return _parse_tagged(tail)
    return _parse_tagged(text)


def _parse_tagged(text: str) -> ParseResult:
    pending: list[int] = []  # ends of <sug> tags not yet closed
    empty_blocks = 0
    for m in _SUG_TAG_RE.finditer(text):
        if not m.group(1):
            pending.append(m.end())
            continue
        if not pending:  # a </sug> with no <sug> before it
            continue
        items, loose = _split_block(text[pending[-1] : m.start()])
        if items:
            return ParseResult(items, "bad_separator" if loose else "ok")
        pending = []  # an empty block: look for the next one
        empty_blocks += 1
        if empty_blocks >= MAX_ITEMS:
            break

    for start in pending[:MAX_ITEMS]:  # <sug> never closed: read up to the next tag
        end = _BLOCK_END_RE.search(text, start, start + MAX_BLOCK_CHARS)
        items, _ = _split_block(text[start : end.start() if end else start + MAX_BLOCK_CHARS])
        if items:
            return ParseResult(items, "unclosed")
    if empty_blocks:  # the model closed its <sug> blocks and they were empty
        return ParseResult([], "empty")

    # No usable <sug>: drop the reasoning, and anything after a lone </sug>.
    closes = [m for m in _SUG_TAG_RE.finditer(text) if m.group(1)]
    body = text[: closes[0].start()] if closes else text
    think_ends = list(_THINK_CLOSE_RE.finditer(body))
    if think_ends:
        body = body[think_ends[-1].end() :]
    items = _split_block(_ANY_FORMAT_TAG_RE.sub(" ", body))[0] if closes else _fallback(body)
    return ParseResult(items, "no_sug_tag" if items else "empty")


# -- Table 5 revisit labels ---------------------------------------------------------------

_LABEL_OPEN_RE = re.compile(r"<\s*label\s*>", re.IGNORECASE)
_LABEL_CLOSE_RE = re.compile(r"<\s*/\s*label\s*>", re.IGNORECASE)
_RATIONALE_RE = re.compile(
    r"<\s*rationale\s*>.*?(?:<\s*/\s*rationale\s*>|$)", re.IGNORECASE | re.DOTALL
)
_NEG_RE = re.compile(
    r"(?:\b(?:no|not|non)|n['’]t)[\s_-]*(?:a[\s_-]+)?match(?:ed|es|ing)?\b"
    r"|\bmismatch(?:ed)?\b|\bnomatch\b",
    re.IGNORECASE,
)
_POS_RE = re.compile(r"\bmatch(?:ed|es|ing)?\b", re.IGNORECASE)


def _label_contents(text: str) -> list[str]:
    """Content of each <label> tag; an unclosed tag's content runs to the line's end."""
    contents = []
    for m in _LABEL_OPEN_RE.finditer(text):
        window = text[m.end() : m.end() + 200]
        close = _LABEL_CLOSE_RE.search(window)
        nxt = _LABEL_OPEN_RE.search(window)
        if close and not (nxt and nxt.start() < close.start()):
            contents.append(window[: close.start()])
        else:
            contents.append(re.split(r"[<\n]", window.lstrip(), maxsplit=1)[0])
    return contents


def _label_votes(text: str) -> tuple[bool, bool]:
    """(mentions NO_MATCH, mentions MATCH on its own) in ``text``."""
    neg = bool(_NEG_RE.search(text))
    pos = bool(_POS_RE.search(_NEG_RE.sub(" ", text)))
    return neg, pos


def _decide(neg: bool, pos: bool) -> tuple[str, bool] | None:
    if neg and not pos:
        return NO_MATCH, True
    if pos and not neg:
        return MATCH, True
    return None


def parse_revisit_label(text: object) -> tuple[str, bool]:
    """Read the Table 5 judge's label: ``("MATCH" | "NO_MATCH", parsed_ok)``. Never raises.

    Case- and whitespace-insensitive; accepts ``NO_MATCH``, ``NO MATCH``, ``no-match``,
    ``NOT A MATCH``, ``MISMATCH``. A ``<label>`` tag wins over words elsewhere; without
    one the text outside ``<rationale>`` is read. Ambiguous (both words, or tags that
    disagree) or unreadable output gives ``("NO_MATCH", False)`` — a missed positive
    costs less than a false one when training the resonance scorer (§2.2).
    """
    if not isinstance(text, str) or not text.strip():
        return NO_MATCH, False
    text = text[:MAX_BLOCK_CHARS]
    tagged = [t for t in _label_contents(text) if t.strip()]
    if tagged:
        votes = {_decide(*_label_votes(t)) for t in tagged}
        if len(votes) == 1:
            (vote,) = votes
            if vote is not None:
                return vote
        return NO_MATCH, False  # a tag holds both words, something else, or tags disagree
    untagged = _RATIONALE_RE.sub(" ", _LABEL_CLOSE_RE.sub(" ", _LABEL_OPEN_RE.sub(" ", text)))
    return _decide(*_label_votes(untagged)) or (NO_MATCH, False)
