"""How simulated users write: session summaries in their own voice, with their own noise.

Two styles (``sim.text_style``):

* ``catalog`` -- the catalog's templates as a log system would write them ("Asked about
  the Wano arc in One Piece"): :func:`icebreaker_ray.sim.catalog.render_summary`, exactly.
* ``realistic`` (default) -- text like real chat logs:

  - frames in the user's own voice from ``voice.yaml`` ("how do I get better at Rust",
    "Rust question", "help w/ Rust please", "talked about Rust again"), long and short;
    a facet on its own ("gear 5 luffy?") names a long-tail thing without its franchise;
    now and then the catalog's log-style summary, and a context clause with long-tail
    names ("my dog Biscuit", "on my old ThinkPad");
  - per-user habits (:class:`Voice`): all-lowercase, shorthand ("u", "pls", "w/"),
    dropped punctuation and apostrophes, greeting openers and closers, and typos -- one
    letter dropped, swapped, doubled or hit next to on the keyboard, in at most two words
    of four or more letters and never the first letter, so the subject stays readable;
  - mixed intents: a functional task and a real subject in one session ("fix grammar
    please. btw is One Piece worth watching"); the session's hidden subject is the real one;
  - greeting-only sessions ("hello?", "test", "ok thanks") with no subject at all
    (:data:`icebreaker_ray.sim.world.NO_SUBJECT`, origin ``greeting``).

What a session is about is decided by the world exactly as in the catalog style and from
the same random stream: the realistic writer draws the catalog rendering's numbers from that
stream too (so both styles produce the same subjects, hours and hidden state), and every
other choice from a text stream of its own, keyed by (seed, user, day) like every stream of
the world. A user therefore writes the same text whichever shard generates them.

Like the catalog this is world knowledge -- how people talk -- not hidden user state; a
user's habits (:class:`Voice`) live on their hidden :class:`~icebreaker_ray.sim.world.UserState`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

from icebreaker_ray.sim.catalog import (
    Catalog,
    Subject,
    _parse_fields,
    render_summary,
)

__all__ = [
    "STYLES",
    "Voice",
    "VoiceBank",
    "VoiceError",
    "SummaryWriter",
    "add_typo",
    "draw_voice",
    "load_voice_bank",
    "strip_article",
]

STYLES = ("realistic", "catalog")
VOICE_PLACEHOLDERS = frozenset({"subject", "facet", "bare_subject", "bare_facet"})

#: Share of sessions whose text is the catalog's log-style summary (then noised as usual).
LOG_STYLE_SHARE = 0.15
#: Share of sessions on a regular subject that also carry a functional task.
MIXED_SHARE = 0.08
#: Chance that a user-voice frame names the subject by its canonical name, not an alias
#: (users say "One Piece" far more often than "Oda's pirate epic").
VOICE_NAME_PROBABILITY = 0.7
#: Chance that a frame for a regular subject comes from its category's own list (else the
#: frames that fit every category).
CATEGORY_FRAME_SHARE = 0.5
#: Typos only touch words of at least this many letters, never their first letter.
MIN_TYPO_WORD = 4

_ARTICLE = re.compile(r"^(?:the|a|an) (?=\S)")
_TYPO_WORD = re.compile(rf"\b[^\W\d_]{{{MIN_TYPO_WORD},}}\b")
_SHORTHAND = (
    (re.compile(r"\byou\b"), "u"), (re.compile(r"\byour\b"), "ur"),
    (re.compile(r"\bplease\b"), "pls"), (re.compile(r"\bwith\b"), "w/"),
    (re.compile(r"\bbecause\b"), "bc"), (re.compile(r"\bthanks\b"), "thx"),
    (re.compile(r"\bI'm\b"), "im"), (re.compile(r"\bdon't\b"), "dont"),
)  # fmt: skip
# Neighbours on a QWERTY keyboard, for substitution typos.
_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_KEYBOARD):
    for _c, _ch in enumerate(_row):
        near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
        for _other in (_r - 1, _r + 1):
            if 0 <= _other < len(_KEYBOARD):
                near += [_KEYBOARD[_other][j] for j in (_c - 1, _c, _c + 1)
                         if 0 <= j < len(_KEYBOARD[_other])]
        _NEIGHBOURS[_ch] = "".join(near)


class VoiceError(ValueError):
    """``voice.yaml`` is malformed; the message names the culprit."""


# ----------------------------------------------------------------------------- voice


@dataclass(frozen=True)
class Voice:
    """One user's writing habits (hidden, drawn once per user)."""

    p_lower: float  # writes everything in lower case
    p_typo: float  # a summary has at least one typo
    p_no_punct: float  # drops final punctuation and apostrophes
    p_shorthand: float  # "u", "pls", "w/", "thx"
    p_filler: float  # opens with "hi"/"ok so" or closes with "thanks"/"lol"
    p_context: float  # adds a clause about their situation
    p_greeting: float  # on a day with sessions, also a greeting-only one


#: A neutral voice (no noise at all), for users drawn before voices existed.
PLAIN_VOICE = Voice(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def draw_voice(rng: np.random.Generator) -> Voice:
    """A user's habits: about half the users write in lower case most of the time, a few
    make typos often, most rarely; greetings are a habit of a minority."""
    lower = float(rng.beta(0.6, 0.6))  # U-shaped: mostly-lower or mostly-cased writers
    return Voice(
        p_lower=lower,
        p_typo=float(rng.beta(1.1, 6.0)),
        p_no_punct=float(rng.beta(1.5, 1.5)),
        p_shorthand=float(rng.beta(0.8, 4.0)),
        p_filler=float(rng.beta(1.0, 5.0)),
        p_context=float(rng.beta(1.5, 8.0)),
        p_greeting=float(rng.beta(0.8, 8.0)),
    )


# ----------------------------------------------------------------------------- bank


@dataclass(frozen=True)
class VoiceBank:
    """The phrasing of ``voice.yaml``, checked against a catalog."""

    any_regular: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]
    contexts: Mapping[str, tuple[str, ...]]
    sensitive: tuple[str, ...]
    functional: Mapping[str, tuple[str, ...]]
    greetings: tuple[str, ...]
    openers: tuple[str, ...]
    closers: tuple[str, ...]
    connectors: tuple[str, ...]


_BANK_KEYS = frozenset({"version", "any_regular", "categories", "contexts", "sensitive",
                        "functional", "greetings", "openers", "closers", "connectors"})


def _strings(value: Any, where: str, placeholders: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise VoiceError(f"{where}: must be a non-empty list of strings")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise VoiceError(f"{where}: {item!r} is not a non-empty string")
        try:
            fields = _parse_fields(item)
        except ValueError as exc:
            raise VoiceError(f"{where}: bad frame {item!r}: {exc}") from None
        allowed = VOICE_PLACEHOLDERS if placeholders else frozenset()
        if fields - allowed:
            raise VoiceError(f"{where}: {item!r} uses {sorted(fields - allowed)}; "
                             f"allowed: {sorted(allowed)}")
        out.append(item)
    if len(set(out)) != len(out):
        raise VoiceError(f"{where}: duplicate items")
    return tuple(out)


def parse_voice_bank(data: Any, catalog: Catalog) -> VoiceBank:
    """Validate a parsed ``voice.yaml`` against ``catalog``: every category and functional
    subject it names exists, every frame uses known placeholders only."""
    if not isinstance(data, Mapping) or set(data) != _BANK_KEYS:
        got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise VoiceError(f"voice bank: expected keys {sorted(_BANK_KEYS)}, got {got}")
    if data["version"] != 1:
        raise VoiceError(f"voice bank: version must be 1, got {data['version']!r}")
    regular = {c.id for c in catalog.regular_categories}
    functional_ids = {s.id for s in catalog.subjects_of_kind("functional")}

    def section(key: str, known: set[str], placeholders: bool = True) -> dict[str, tuple[str, ...]]:
        raw = data[key]
        if not isinstance(raw, Mapping):
            raise VoiceError(f"voice bank: {key!r} must be a mapping")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise VoiceError(f"voice bank: {key!r} names unknown ids {unknown}")
        return {k: _strings(v, f"{key}.{k}", placeholders) for k, v in raw.items()}

    functional = section("functional", functional_ids)
    missing = sorted(functional_ids - set(functional))
    if missing:
        raise VoiceError(f"voice bank: 'functional' has no frames for {missing}")
    return VoiceBank(
        any_regular=_strings(data["any_regular"], "any_regular"),
        categories=section("categories", regular),
        contexts=section("contexts", regular, placeholders=False),
        sensitive=_strings(data["sensitive"], "sensitive"),
        functional=functional,
        greetings=_strings(data["greetings"], "greetings", placeholders=False),
        openers=_strings(data["openers"], "openers", placeholders=False),
        closers=_strings(data["closers"], "closers", placeholders=False),
        connectors=tuple(data["connectors"]),
    )


@functools.lru_cache(maxsize=1)
def _default_bank_data() -> Any:
    text = resources.files("icebreaker_ray.sim").joinpath("voice.yaml").read_text(encoding="utf-8")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_voice_bank(catalog: Catalog) -> VoiceBank:
    """The packaged ``voice.yaml``, checked against ``catalog``."""
    return parse_voice_bank(_default_bank_data(), catalog)


# ----------------------------------------------------------------------------- noise


def strip_article(text: str) -> str:
    """``text`` without a leading lower-case article ("the Wano arc" -> "Wano arc";
    "The Bear", a title, keeps its article).

    >>> [strip_article(t) for t in ("the MCU", "a Roth IRA", "The Bear", "an essay intro")]
    ['MCU', 'Roth IRA', 'The Bear', 'essay intro']
    """
    return _ARTICLE.sub("", text, count=1)


def add_typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard slip in ``word`` (never its first letter): a letter dropped, two
    neighbours swapped, a letter doubled or one hit next to on the keyboard."""
    if len(word) < MIN_TYPO_WORD:
        return word
    i = int(rng.integers(1, len(word) - 1))  # a middle letter, so swaps stay inside
    kind = int(rng.integers(4))
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    near = _NEIGHBOURS.get(word[i].lower())
    if not near:
        return word[:i] + word[i + 1:]
    sub = near[int(rng.integers(len(near)))]
    return word[:i] + (sub.upper() if word[i].isupper() else sub) + word[i + 1:]


def _with_typos(text: str, count: int, rng: np.random.Generator) -> str:
    spans = [m.span() for m in _TYPO_WORD.finditer(text)]
    if not spans or count <= 0:
        return text
    picks = sorted(rng.choice(len(spans), size=min(count, len(spans)), replace=False).tolist(),
                   reverse=True)  # right to left, so earlier spans keep their offsets
    for k in picks:
        a, b = spans[k]
        text = text[:a] + add_typo(text[a:b], rng) + text[b:]
    return text


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:] if text[:1].islower() else text


# ----------------------------------------------------------------------------- writer


class SummaryWriter:
    """Writes a session's summary in one style (see the module docstring)."""

    def __init__(self, catalog: Catalog, style: str = "realistic") -> None:
        if style not in STYLES:
            raise ValueError(f"unknown text style {style!r}; expected one of {STYLES}")
        self.style = style
        self.bank = load_voice_bank(catalog) if style == "realistic" else None
        # Tasks that ride along in mixed-intent sessions.
        self.tasks = catalog.subjects_of_kind("functional")

    @property
    def realistic(self) -> bool:
        return self.style == "realistic"

    # -------------------------------------------------------------- sessions

    def summary(self, subject: Subject, rng: np.random.Generator,
                text_rng: np.random.Generator | None, voice: Voice | None) -> str:
        """The summary of a session on ``subject``. ``rng`` is the world's stream; it gives
        the same four draws in both styles. ``text_rng`` drives everything else."""
        log_style = render_summary(subject, rng)
        if not self.realistic:
            return log_style
        if text_rng is None:
            raise ValueError("the realistic style needs a text stream")
        voice = voice or PLAIN_VOICE
        core, own_words = self._request(subject, log_style, text_rng, voice)
        # (a log-style summary is a whole sentence: it is not joined with a task)
        if subject.kind == "regular" and text_rng.random() < MIXED_SHARE and own_words:
            task_subject = self.tasks[int(text_rng.integers(len(self.tasks)))]
            task = self._fill(self._pick(self.bank.functional[task_subject.id], text_rng),
                              task_subject, text_rng)
            joiner = self.bank.connectors[int(text_rng.integers(len(self.bank.connectors)))]
            if text_rng.random() < 0.7:
                core = f"{task}{joiner}{core}"
            else:
                core = f"{core}{joiner}{task}"
        return self._noise(core, text_rng, voice, fillers=True)

    def greeting(self, text_rng: np.random.Generator, voice: Voice | None) -> str:
        """A session with no subject ("hello?", "test", "ok thanks"): at most one typo."""
        voice = voice or PLAIN_VOICE
        text = self.bank.greetings[int(text_rng.integers(len(self.bank.greetings)))]
        return self._noise(text, text_rng, voice, fillers=False, max_typos=1)

    # -------------------------------------------------------------- pieces

    def _pick(self, items: Sequence[str], rng: np.random.Generator) -> str:
        return items[int(rng.integers(len(items)))]

    def _fill(self, frame: str, subject: Subject, rng: np.random.Generator) -> str:
        if rng.random() < VOICE_NAME_PROBABILITY:
            surface = subject.name
        else:
            surface = self._pick(subject.aliases, rng)
        facet = self._pick(subject.facets, rng)
        return frame.format(subject=surface, facet=facet, bare_subject=strip_article(surface),
                            bare_facet=strip_article(facet))

    def _frames(self, subject: Subject, rng: np.random.Generator) -> tuple[str, ...]:
        bank = self.bank
        if subject.kind == "functional":
            return bank.functional[subject.id]
        if subject.kind == "sensitive":
            return bank.sensitive
        own = bank.categories.get(subject.category_id)
        if own and rng.random() < CATEGORY_FRAME_SHARE:
            return own
        return bank.any_regular

    def _request(self, subject: Subject, log_style: str, rng: np.random.Generator,
                 voice: Voice) -> tuple[str, bool]:
        """(text, in the user's own words) of the session's request."""
        own_words = rng.random() >= LOG_STYLE_SHARE
        if own_words:
            core = self._fill(self._pick(self._frames(subject, rng), rng), subject, rng)
        else:
            core = log_style
        contexts = self.bank.contexts.get(subject.category_id)
        if contexts and rng.random() < voice.p_context:
            core = core.rstrip(".")
            sep = " " if core.endswith(("?", "!")) else ", "
            core = f"{core}{sep}{self._pick(contexts, rng)}"
        return core, own_words

    def _noise(self, text: str, rng: np.random.Generator, voice: Voice, *, fillers: bool,
               max_typos: int = 2) -> str:
        # Every draw is made whatever the outcome, so one habit never shifts the others.
        u = rng.random(6)
        if fillers and u[0] < voice.p_filler:
            if u[1] < 0.5:
                opener = self._pick(self.bank.openers, rng)
                if not text.casefold().startswith(opener.split()[-1].casefold() + " "):
                    text = f"{opener} {text}"  # (no "ok so so I've been ...")
            else:
                text = f"{text.rstrip('.')} {self._pick(self.bank.closers, rng)}"
        if u[2] < voice.p_shorthand:
            for pattern, short in _SHORTHAND:
                text = pattern.sub(short, text)
        if u[3] < voice.p_no_punct:
            text = text.replace("'", "").replace("\u2019", "")
            text = text.rstrip(".?!") or text
        if u[4] < voice.p_lower:
            text = text.lower()
        else:
            text = _capitalize(text)
        if u[5] < voice.p_typo:
            count = 1 + int(rng.random() < 0.25)
            text = _with_typos(text, min(count, max_typos), rng)
        return text
