"""Topic catalog of the simulated world: categories, subjects and phrasing.

The catalog (``catalog.yaml`` next to this module) is a hand-written taxonomy
for an English-language chat assistant: about twenty categories (anime, games,
programming, travel, ...), a ``functional`` one (translate, fix grammar, write
an email: frequent but not resonant) and a ``sensitive`` one (symptoms, debts,
legal trouble: may appear in histories, must never be suggested). Each category
carries templates for session summaries and starter questions; each subject has
a name, aliases and facets (specific aspects) that fill those templates.

This is *world knowledge* -- what topics exist and how people talk about them --
shared by the simulator and, legitimately, by anything that reads logs. It is
NOT hidden user state: who is interested in what, revisit and click
propensities live in the world/oracle modules, never here.

Templates use three placeholders: ``{subject}`` (the subject's name or one of
its aliases, chosen at random so that text is not a lookup key), ``{alias}``
(always an alias) and ``{facet}``. Rendering is deterministic for a seeded
``numpy.random.Generator``.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import yaml

__all__ = [
    "IMPERATIVE_VERBS",
    "KINDS",
    "PLACEHOLDERS",
    "Catalog",
    "CatalogError",
    "Category",
    "Subject",
    "all_starters",
    "all_summaries",
    "load_catalog",
    "parse_catalog",
    "render_generic_starter",
    "render_starter",
    "render_summary",
]

KINDS = ("regular", "functional", "sensitive")
PLACEHOLDERS = frozenset({"subject", "alias", "facet"})
# A starter is either a question (ends with "?") or a request opening with one
# of these verbs ("Recommend three anime movies ...").
IMPERATIVE_VERBS = frozenset(
    {
        "build", "compare", "convert", "create", "describe", "draft", "explain",
        "fix", "format", "give", "help", "list", "make", "plan", "proofread",
        "recommend", "rewrite", "share", "shorten", "show", "suggest",
        "summarize", "teach", "tell", "translate", "turn", "walk", "write",
    }
)  # fmt: skip

MIN_SUMMARY_TEMPLATES = 6
MIN_STARTER_TEMPLATES = 6
MIN_GENERIC_STARTERS = 4
MIN_ALIASES = 2
MIN_FACETS = 3
MIN_SUBJECTS = {"regular": 12, "functional": 6, "sensitive": 6}
# Chance that {subject} renders as the canonical name rather than an alias.
NAME_PROBABILITY = 0.5

_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TOP_KEYS = frozenset({"version", "categories"})
_CATEGORY_KEYS = frozenset(
    {"id", "name", "kind", "appeal", "summary_templates", "starter_templates",
     "generic_starters", "subjects"}
)  # fmt: skip
_SUBJECT_KEYS = frozenset({"id", "name", "aliases", "facets", "popularity"})
# libyaml's loader is ~10x faster than the pure-Python one; both are "safe".
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the culprit and field."""


@dataclass(frozen=True)
class Category:
    """A topic category with its phrasing templates."""

    id: str
    name: str
    kind: str
    appeal: float
    summary_templates: tuple[str, ...]
    starter_templates: tuple[str, ...]
    generic_starters: tuple[str, ...]

    @property
    def is_regular(self) -> bool:
        """True for ordinary interest categories (neither functional nor sensitive)."""
        return self.kind == "regular"


@dataclass(frozen=True)
class Subject:
    """A specific subject ("One Piece") inside one category."""

    id: str
    name: str
    category_id: str
    aliases: tuple[str, ...]
    facets: tuple[str, ...]
    popularity: float
    # Kept on the subject so rendering needs no catalog lookup; excluded from
    # equality/repr because the category id already identifies it.
    category: Category = field(repr=False, compare=False)

    @property
    def kind(self) -> str:
        """The kind of the subject's category."""
        return self.category.kind

    @property
    def surface_forms(self) -> tuple[str, ...]:
        """Name followed by all aliases."""
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Catalog:
    """The whole catalog: categories and subjects in file order."""

    version: int
    categories: tuple[Category, ...]
    subjects: tuple[Subject, ...]
    _categories_by_id: Mapping[str, Category] = field(init=False, repr=False, compare=False)
    _subjects_by_id: Mapping[str, Subject] = field(init=False, repr=False, compare=False)
    _by_category: Mapping[str, tuple[Subject, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Subject]] = {c.id: [] for c in self.categories}
        for s in self.subjects:
            grouped[s.category_id].append(s)
        # object.__setattr__ because the dataclass is frozen.
        object.__setattr__(
            self, "_categories_by_id", MappingProxyType({c.id: c for c in self.categories})
        )
        object.__setattr__(
            self, "_subjects_by_id", MappingProxyType({s.id: s for s in self.subjects})
        )
        object.__setattr__(
            self, "_by_category", MappingProxyType({k: tuple(v) for k, v in grouped.items()})
        )

    def __reduce__(self):
        # The lookup tables are read-only proxies, which do not pickle; rebuild them
        # (Ray ships a world with its catalog to tasks, and the world state is saved).
        return (Catalog, (self.version, self.categories, self.subjects))

    def subject(self, subject_id: str) -> Subject:
        """The subject with this id (KeyError if unknown)."""
        try:
            return self._subjects_by_id[subject_id]
        except KeyError:
            raise KeyError(f"unknown subject id {subject_id!r}") from None

    def category(self, category_id: str) -> Category:
        """The category with this id (KeyError if unknown)."""
        try:
            return self._categories_by_id[category_id]
        except KeyError:
            raise KeyError(f"unknown category id {category_id!r}") from None

    def subjects_in(self, category_id: str) -> tuple[Subject, ...]:
        """Subjects of one category, in file order."""
        self.category(category_id)  # raise a clear KeyError for unknown ids
        return self._by_category[category_id]

    def categories_of_kind(self, kind: str) -> tuple[Category, ...]:
        """Categories of one kind (``regular``, ``functional`` or ``sensitive``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        return tuple(c for c in self.categories if c.kind == kind)

    def subjects_of_kind(self, kind: str) -> tuple[Subject, ...]:
        """Subjects whose category is of one kind."""
        ids = {c.id for c in self.categories_of_kind(kind)}
        return tuple(s for s in self.subjects if s.category_id in ids)

    def regular_subjects(self) -> tuple[Subject, ...]:
        """Subjects that may legitimately be suggested (regular categories only)."""
        return self.subjects_of_kind("regular")

    @property
    def regular_categories(self) -> tuple[Category, ...]:
        """Ordinary interest categories."""
        return self.categories_of_kind("regular")

    @property
    def functional_categories(self) -> tuple[Category, ...]:
        """Task-like categories (translate, summarize, ...): frequent, not resonant."""
        return self.categories_of_kind("functional")

    @property
    def sensitive_categories(self) -> tuple[Category, ...]:
        """Categories that must never be suggested."""
        return self.categories_of_kind("sensitive")


# --------------------------------------------------------------------------- loading


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate a catalog; ``None`` means the packaged ``catalog.yaml`` (cached)."""
    if path is None:
        return _load_default()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    return _parse_text(text, str(path))


@functools.lru_cache(maxsize=1)
def _load_default() -> Catalog:
    resource = resources.files("icebreaker_ray.sim").joinpath("catalog.yaml")
    return _parse_text(resource.read_text(encoding="utf-8"), "packaged catalog.yaml")


def _parse_text(text: str, source: str) -> Catalog:
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: invalid YAML: {exc}") from exc
    try:
        return parse_catalog(data)
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def parse_catalog(data: Any) -> Catalog:
    """Validate an already-parsed YAML document and build the :class:`Catalog`."""
    if not isinstance(data, Mapping):
        raise CatalogError("top level must be a mapping with 'version' and 'categories'")
    _check_keys(data, _TOP_KEYS, "catalog")
    if data.get("version") != 1:
        raise CatalogError(f"catalog: field 'version' must be 1, got {data.get('version')!r}")
    raw_categories = data.get("categories")
    if not isinstance(raw_categories, list) or not raw_categories:
        raise CatalogError("catalog: field 'categories' must be a non-empty list")

    categories: list[Category] = []
    subjects: list[Subject] = []
    seen_categories: set[str] = set()
    seen_subjects: dict[str, str] = {}  # subject id -> category id
    seen_surface: dict[str, str] = {}  # lower-cased name/alias -> subject id
    for index, raw in enumerate(raw_categories):
        category, raw_subjects = _parse_category(raw, index)
        if category.id in seen_categories:
            raise CatalogError(f"category {category.id!r}: duplicate category id")
        seen_categories.add(category.id)
        categories.append(category)
        for s_index, raw_subject in enumerate(raw_subjects):
            subject = _parse_subject(raw_subject, category, s_index)
            where = f"category {category.id!r} subject {subject.id!r}"
            if subject.id in seen_subjects:
                raise CatalogError(
                    f"{where}: duplicate subject id (already in category "
                    f"{seen_subjects[subject.id]!r})"
                )
            seen_subjects[subject.id] = category.id
            # Names and aliases must be unambiguous, otherwise one surface form
            # would point at two subjects and the oracle's truth would be ill-defined.
            for form in subject.surface_forms:
                key = form.casefold()
                if key in seen_surface:
                    raise CatalogError(
                        f"{where}: name/alias {form!r} already used by subject "
                        f"{seen_surface[key]!r}"
                    )
                seen_surface[key] = subject.id
            subjects.append(subject)
    return Catalog(version=1, categories=tuple(categories), subjects=tuple(subjects))


def _parse_category(raw: Any, index: int) -> tuple[Category, list[Any]]:
    if not isinstance(raw, Mapping):
        raise CatalogError(f"categories[{index}]: must be a mapping")
    cid = raw.get("id")
    where = f"category {cid!r}" if isinstance(cid, str) else f"categories[{index}]"
    _check_keys(raw, _CATEGORY_KEYS, where)
    cid = _id_field(raw, "id", where)
    where = f"category {cid!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise CatalogError(f"{where}: field 'kind' must be one of {KINDS}, got {kind!r}")
    summaries = _string_list(raw, "summary_templates", where, MIN_SUMMARY_TEMPLATES)
    starters = _string_list(raw, "starter_templates", where, MIN_STARTER_TEMPLATES)
    generics = _string_list(raw, "generic_starters", where, MIN_GENERIC_STARTERS)
    for template in summaries:
        fields = _template_fields(template, where, "summary_templates")
        if not fields:
            raise CatalogError(
                f"{where}: field 'summary_templates': {template!r} uses no placeholder"
            )
    for template in starters:
        fields = _template_fields(template, where, "starter_templates")
        if not fields & {"subject", "alias"}:
            # Specific starters must name the subject; facet-only text belongs
            # to generic_starters or summaries.
            raise CatalogError(
                f"{where}: field 'starter_templates': {template!r} must use "
                "{subject} or {alias}"
            )
        _check_starter_form(template, where, "starter_templates")
    for text in generics:
        if _template_fields(text, where, "generic_starters"):
            raise CatalogError(
                f"{where}: field 'generic_starters': {text!r} must not use placeholders"
            )
        _check_starter_form(text, where, "generic_starters")
    raw_subjects = raw.get("subjects")
    minimum = MIN_SUBJECTS[kind]
    if not isinstance(raw_subjects, list) or len(raw_subjects) < minimum:
        got = len(raw_subjects) if isinstance(raw_subjects, list) else raw_subjects
        raise CatalogError(
            f"{where}: field 'subjects' needs a list of >= {minimum} subjects, got {got!r}"
        )
    category = Category(
        id=cid,
        name=_text_field(raw, "name", where),
        kind=kind,
        appeal=_unit_field(raw, "appeal", where),
        summary_templates=summaries,
        starter_templates=starters,
        generic_starters=generics,
    )
    return category, raw_subjects


def _parse_subject(raw: Any, category: Category, index: int) -> Subject:
    where = f"category {category.id!r} subjects[{index}]"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a mapping")
    if isinstance(raw.get("id"), str):
        where = f"category {category.id!r} subject {raw['id']!r}"
    _check_keys(raw, _SUBJECT_KEYS, where)
    sid = _id_field(raw, "id", where)
    name = _text_field(raw, "name", where)
    aliases = _string_list(raw, "aliases", where, MIN_ALIASES)
    if name.casefold() in {a.casefold() for a in aliases}:
        raise CatalogError(f"{where}: field 'aliases' repeats the name {name!r}")
    facets = _string_list(raw, "facets", where, MIN_FACETS)
    return Subject(
        id=sid,
        name=name,
        category_id=category.id,
        aliases=aliases,
        facets=facets,
        popularity=_unit_field(raw, "popularity", where),
        category=category,
    )


def _check_keys(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    # Unknown keys are usually typos ("facet:"), which would otherwise be
    # silently ignored and leave a required field missing.
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {unknown}")
    missing = sorted(allowed - set(raw))
    if missing:
        raise CatalogError(f"{where}: missing field(s) {missing}")


def _text_field(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    if value != value.strip() or "\n" in value:
        raise CatalogError(
            f"{where}: field {key!r} has surrounding whitespace or a newline: {value!r}"
        )
    return value


def _id_field(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = _text_field(raw, key, where)
    if not _ID_RE.match(value):
        raise CatalogError(f"{where}: field {key!r} must be snake_case, got {value!r}")
    return value


def _unit_field(raw: Mapping[str, Any], key: str, where: str) -> float:
    value = raw.get(key)
    # bool is an int subclass; YAML turns "yes" into True, which is never meant.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: field {key!r} must be a number, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise CatalogError(f"{where}: field {key!r} must be in [0, 1], got {value!r}")
    return float(value)


def _string_list(raw: Mapping[str, Any], key: str, where: str, minimum: int) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise CatalogError(f"{where}: field {key!r} must be a list, got {value!r}")
    if len(value) < minimum:
        raise CatalogError(f"{where}: field {key!r} needs >= {minimum} items, got {len(value)}")
    items = tuple(_text_field({key: item}, key, where) for item in value)
    counts = Counter(item.casefold() for item in items)
    duplicates = sorted({item for item in items if counts[item.casefold()] > 1})
    if duplicates:
        raise CatalogError(f"{where}: field {key!r} has duplicate items {duplicates}")
    return items


def _template_fields(template: str, where: str, key: str) -> frozenset[str]:
    try:
        fields = _parse_fields(template)
    except ValueError as exc:
        raise CatalogError(f"{where}: field {key!r}: bad template {template!r}: {exc}") from None
    unknown = sorted(fields - PLACEHOLDERS)
    if unknown:
        names = ", ".join("{" + u + "}" for u in unknown)
        raise CatalogError(
            f"{where}: field {key!r}: unknown placeholder {names} in {template!r}; "
            f"allowed: {sorted(PLACEHOLDERS)}"
        )
    return fields


@functools.lru_cache(maxsize=4096)
def _parse_fields(template: str) -> frozenset[str]:
    fields: set[str] = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError("format specs and conversions are not allowed")
        # An empty or numeric name ("{}", "{0}") is reported as unknown.
        fields.add(name)
    return frozenset(fields)


def _check_starter_form(text: str, where: str, key: str) -> None:
    first = text.split(maxsplit=1)[0].strip(",.:;!").casefold()
    if not text.endswith("?") and first not in IMPERATIVE_VERBS:
        raise CatalogError(
            f"{where}: field {key!r}: {text!r} must end with '?' or start with an "
            f"imperative verb ({', '.join(sorted(IMPERATIVE_VERBS))})"
        )


# ------------------------------------------------------------------------- rendering


def render_summary(subject: Subject, rng: np.random.Generator) -> str:
    """A session summary about ``subject``, as a chat-log system would write it."""
    return _render(subject.category.summary_templates, subject, rng)


def render_starter(subject: Subject, rng: np.random.Generator) -> str:
    """A specific starter question naming ``subject``."""
    return _render(subject.category.starter_templates, subject, rng)


def render_generic_starter(category: Category, rng: np.random.Generator) -> str:
    """A category-level starter that names no subject."""
    return category.generic_starters[int(rng.integers(len(category.generic_starters)))]


def all_starters(subject: Subject) -> list[str]:
    """Every rendered starter combination for ``subject``, deduplicated, stable order."""
    return _render_all(subject.category.starter_templates, subject)


def all_summaries(subject: Subject) -> list[str]:
    """Every rendered summary combination for ``subject``, deduplicated, stable order."""
    return _render_all(subject.category.summary_templates, subject)


def _render(templates: Sequence[str], subject: Subject, rng: np.random.Generator) -> str:
    # Always draw the same four numbers in the same order so that a seeded rng
    # yields the same stream whatever placeholders the chosen template uses.
    template = templates[int(rng.integers(len(templates)))]
    alias = subject.aliases[int(rng.integers(len(subject.aliases)))]
    facet = subject.facets[int(rng.integers(len(subject.facets)))]
    use_name = bool(rng.random() < NAME_PROBABILITY)
    # With {alias} also present, {subject} stays the name to avoid "X, aka X".
    if use_name or "alias" in _parse_fields(template):
        surface = subject.name
    else:
        surface = alias
    return _fill(template, surface, alias, facet)


def _render_all(templates: Sequence[str], subject: Subject) -> list[str]:
    out: dict[str, None] = {}  # insertion-ordered set
    for template in templates:
        fields = _parse_fields(template)
        has_alias = "alias" in fields
        surfaces = (subject.name,) if has_alias else subject.surface_forms
        if "subject" not in fields:
            surfaces = (subject.name,)
        aliases = subject.aliases if has_alias else subject.aliases[:1]
        facets = subject.facets if "facet" in fields else subject.facets[:1]
        for surface in surfaces:
            for alias in aliases:
                for facet in facets:
                    out[_fill(template, surface, alias, facet)] = None
    return list(out)


def _fill(template: str, surface: str, alias: str, facet: str) -> str:
    text = template.format(subject=surface, alias=alias, facet=facet)
    # Sentence-case only a lower-case first word ("the Wano arc" -> "The ..."),
    # leaving brand spellings such as "iPhone" alone.
    first = text.split(" ", 1)[0]
    if first.islower():
        text = text[0].upper() + text[1:]
    return text
