"""Tests for the simulated world's topic catalog (data quality, rendering, validation)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from icebreaker_ray.sim import catalog as catalog_module
from icebreaker_ray.sim.catalog import (
    IMPERATIVE_VERBS,
    CatalogError,
    all_starters,
    all_summaries,
    load_catalog,
    render_generic_starter,
    render_starter,
    render_summary,
)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
CATALOG_PATH = Path(catalog_module.__file__).with_name("catalog.yaml")
REQUIRED_CATEGORIES = {
    "anime_acgn", "games", "ai_tech", "programming", "travel", "cooking", "fitness",
    "personal_finance", "psychology", "movies_tv", "music", "education", "career", "pets",
    "sports", "science", "home_diy", "books", "fashion_beauty", "parenting", "functional",
    "sensitive",
}  # fmt: skip


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


@pytest.fixture()
def raw() -> dict[str, Any]:
    return yaml.load(CATALOG_PATH.read_text(encoding="utf-8"), Loader=_LOADER)


def _is_starter_form(text: str) -> bool:
    first = text.split(maxsplit=1)[0].strip(",.:;!").casefold()
    return text.endswith("?") or first in IMPERATIVE_VERBS


# ------------------------------------------------------------------ content


def test_loads_with_expected_size_and_kinds(cat):
    assert len(cat.categories) >= 20
    assert len(cat.subjects) >= 300
    assert REQUIRED_CATEGORIES <= {c.id for c in cat.categories}
    assert cat.category("functional").kind == "functional"
    assert cat.category("sensitive").kind == "sensitive"
    assert len(cat.functional_categories) == 1
    assert len(cat.sensitive_categories) == 1


def test_default_catalog_is_cached_and_matches_file(cat):
    assert load_catalog() is cat
    from_path = load_catalog(CATALOG_PATH)
    assert from_path is not cat
    assert [s.id for s in from_path.subjects] == [s.id for s in cat.subjects]


def test_ids_and_surface_forms_are_unique(cat):
    cat_ids = [c.id for c in cat.categories]
    subject_ids = [s.id for s in cat.subjects]
    assert len(set(cat_ids)) == len(cat_ids)
    assert len(set(subject_ids)) == len(subject_ids)
    forms = [f.casefold() for s in cat.subjects for f in s.surface_forms]
    assert len(set(forms)) == len(forms)


def test_each_category_is_rich_enough(cat):
    for c in cat.categories:
        subjects = cat.subjects_in(c.id)
        if c.is_regular:
            assert len(subjects) >= 12, c.id
        assert len(c.summary_templates) >= 6, c.id
        assert len(c.starter_templates) >= 6, c.id
        assert len(c.generic_starters) >= 4, c.id
        for s in subjects:
            assert s.category is c and s.category_id == c.id
            assert len(s.aliases) >= 2 and len(s.facets) >= 3, s.id


def test_appeal_and_popularity_shape_the_world(cat):
    regular = [c.appeal for c in cat.regular_categories]
    assert cat.category("functional").appeal < min(regular)
    assert cat.category("sensitive").appeal < min(regular)
    # Head vs long tail: popularity must actually vary within categories.
    pops = np.array([s.popularity for s in cat.regular_subjects()])
    assert pops.max() - pops.min() >= 0.5
    assert 0.3 <= pops.mean() <= 0.7


def test_lookups_and_kind_filters(cat):
    one_piece = cat.subject("one_piece")
    assert one_piece.name == "One Piece"
    assert one_piece.category_id == "anime_acgn" and one_piece.kind == "regular"
    assert one_piece in cat.subjects_in("anime_acgn")
    regular_ids = {s.id for s in cat.regular_subjects()}
    assert "one_piece" in regular_ids
    assert not regular_ids & {s.id for s in cat.subjects_in("sensitive")}
    assert not regular_ids & {s.id for s in cat.subjects_in("functional")}
    assert len(regular_ids) + len(cat.subjects_of_kind("functional")) + len(
        cat.subjects_of_kind("sensitive")
    ) == len(cat.subjects)
    with pytest.raises(KeyError, match="nope"):
        cat.subject("nope")
    with pytest.raises(KeyError, match="nope"):
        cat.subjects_in("nope")


# ---------------------------------------------------------------- rendering


def test_every_template_renders_for_every_subject(cat):
    for s in cat.subjects:
        for text in [*all_starters(s), *all_summaries(s)]:
            assert "{" not in text and "}" not in text, (s.id, text)
            assert text == text.strip() and "  " not in text, (s.id, text)


def test_rendered_starters_are_short_questions_or_requests(cat):
    lengths = []
    for c in cat.categories:
        rendered = [t for s in cat.subjects_in(c.id) for t in all_starters(s)]
        short = [len(t) <= 64 for t in rendered]
        # Per category too, so one badly worded category cannot hide in the total.
        assert np.mean(short) >= 0.8, c.id
        lengths.extend(short)
        bad = [t for t in rendered if not _is_starter_form(t)]
        assert not bad, bad[:3]
    assert np.mean(lengths) >= 0.9


def test_generic_starters_name_no_subject(cat):
    forms = [f for s in cat.subjects for f in s.surface_forms if len(f) >= 4]
    pattern = re.compile("|".join(rf"\b{re.escape(f)}\b" for f in forms), re.IGNORECASE)
    for c in cat.categories:
        for text in c.generic_starters:
            assert len(text) <= 64 and _is_starter_form(text), text
            assert not pattern.search(text), (c.id, text)


def test_summaries_have_4_to_20_words(cat):
    for s in cat.subjects:
        for text in all_summaries(s):
            assert 4 <= len(text.split()) <= 20, (s.id, text)


def test_summaries_are_not_a_lookup_key(cat):
    # Most summaries should not contain the canonical name verbatim: aliases
    # and facet-only phrasings make the subject something to infer.
    named = [
        np.mean([s.name.casefold() in t.casefold() for t in all_summaries(s)]) for s in cat.subjects
    ]
    assert np.mean(named) < 0.5
    one_piece = cat.subject("one_piece")
    rng = np.random.default_rng(3)
    draws = [render_summary(one_piece, rng) for _ in range(100)]
    assert any(a in d for d in draws for a in one_piece.aliases)
    assert any(one_piece.name in d for d in draws)


def test_rendering_is_deterministic_for_a_seed(cat):
    subjects = cat.subjects[::37]

    def draw(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        out = []
        for s in subjects:
            out += [render_summary(s, rng), render_starter(s, rng)]
            out.append(render_generic_starter(s.category, rng))
        return out

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)
    s = cat.subject("sourdough")
    assert all_starters(s) == all_starters(s)


def test_rendering_varies_across_draws(cat):
    rng = np.random.default_rng(0)
    for s in cat.subjects:
        summaries = {render_summary(s, rng) for _ in range(20)}
        starters = {render_starter(s, rng) for _ in range(20)}
        assert len(summaries) >= 5, (s.id, summaries)
        assert len(starters) >= 5, (s.id, starters)
    c = cat.category("games")
    generics = {render_generic_starter(c, rng) for _ in range(50)}
    assert generics == set(c.generic_starters)


def test_all_starters_is_complete_and_deduplicated(cat):
    s = cat.subject("elden_ring")
    pool = all_starters(s)
    assert len(pool) == len(set(pool))
    rng = np.random.default_rng(5)
    assert {render_starter(s, rng) for _ in range(200)} <= set(pool)
    assert {render_summary(s, rng) for _ in range(200)} <= set(all_summaries(s))


def test_rendered_text_starts_with_a_capital(cat):
    # Aliases such as "the Straw Hat saga" may open a sentence; they must be
    # sentence-cased when they do.
    for s in cat.subjects:
        for t in [*all_starters(s), *all_summaries(s)]:
            assert not t[0].islower(), t


# --------------------------------------------------------------- validation


def _sub(raw: dict[str, Any], cat_index: int = 0, subj_index: int = 0) -> dict[str, Any]:
    return raw["categories"][cat_index]["subjects"][subj_index]


def _dup_subject_id(raw):
    _sub(raw, 1, 0)["id"] = _sub(raw, 0, 0)["id"]


def _unknown_kind(raw):
    raw["categories"][0]["kind"] = "hobby"


def _appeal_too_high(raw):
    raw["categories"][0]["appeal"] = 1.5


def _negative_popularity(raw):
    _sub(raw, 0, 2)["popularity"] = -0.1


def _bool_popularity(raw):
    _sub(raw, 0, 2)["popularity"] = True


def _bad_placeholder(raw):
    raw["categories"][1]["starter_templates"][0] = "What about {nope} in {subject}?"


def _too_few_facets(raw):
    _sub(raw, 2, 1)["facets"] = ["just one", "two"]


def _too_few_aliases(raw):
    _sub(raw, 2, 1)["aliases"] = ["only alias"]


def _missing_name(raw):
    del _sub(raw, 3, 0)["name"]


def _typo_field(raw):
    _sub(raw, 3, 0)["facet"] = _sub(raw, 3, 0).pop("facets")


def _generic_with_placeholder(raw):
    raw["categories"][4]["generic_starters"][0] = "Any news on {subject}?"


def _starter_not_a_question(raw):
    raw["categories"][4]["starter_templates"][0] = "I like {subject} a lot"


def _starter_without_subject(raw):
    raw["categories"][4]["starter_templates"][0] = "Any tips on {facet}?"


def _summary_without_placeholder(raw):
    raw["categories"][5]["summary_templates"][0] = "Asked a question"


def _duplicate_alias_across_subjects(raw):
    _sub(raw, 0, 1)["aliases"][0] = _sub(raw, 0, 0)["name"]


def _too_few_subjects(raw):
    raw["categories"][6]["subjects"] = raw["categories"][6]["subjects"][:5]


def _bad_id(raw):
    _sub(raw, 0, 0)["id"] = "One Piece"


def _duplicate_category(raw):
    raw["categories"][1]["id"] = raw["categories"][0]["id"]


def _wrong_version(raw):
    raw["version"] = 2


def _short_template_list(raw):
    raw["categories"][7]["summary_templates"] = raw["categories"][7]["summary_templates"][:3]


def _cid(raw, i):
    return raw["categories"][i]["id"]


# Each case: mutation, then the strings the error message must contain.
CASES: list[tuple[Callable[[dict], None], Callable[[dict], list[str]]]] = [
    (_dup_subject_id, lambda r: [_sub(r, 0, 0)["id"], "duplicate subject id", _cid(r, 1)]),
    (_unknown_kind, lambda r: [_cid(r, 0), "'kind'", "hobby"]),
    (_appeal_too_high, lambda r: [_cid(r, 0), "'appeal'", "1.5"]),
    (_negative_popularity, lambda r: [_sub(r, 0, 2)["id"], "'popularity'"]),
    (_bool_popularity, lambda r: [_sub(r, 0, 2)["id"], "'popularity'", "number"]),
    (_bad_placeholder, lambda r: [_cid(r, 1), "'starter_templates'", "{nope}"]),
    (_too_few_facets, lambda r: [_sub(r, 2, 1)["id"], "'facets'", ">= 3"]),
    (_too_few_aliases, lambda r: [_sub(r, 2, 1)["id"], "'aliases'", ">= 2"]),
    (_missing_name, lambda r: [_sub(r, 3, 0)["id"], "missing", "'name'"]),
    (_typo_field, lambda r: [_sub(r, 3, 0)["id"], "unknown field", "'facet'"]),
    (_generic_with_placeholder, lambda r: [_cid(r, 4), "'generic_starters'", "placeholder"]),
    (_starter_not_a_question, lambda r: [_cid(r, 4), "'starter_templates'", "I like"]),
    (_starter_without_subject, lambda r: [_cid(r, 4), "{subject} or {alias}"]),
    (_summary_without_placeholder, lambda r: [_cid(r, 5), "'summary_templates'"]),
    (_duplicate_alias_across_subjects, lambda r: [_sub(r, 0, 1)["id"], _sub(r, 0, 0)["id"]]),
    (_too_few_subjects, lambda r: [_cid(r, 6), "'subjects'", ">= 12"]),
    (_bad_id, lambda r: ["One Piece", "snake_case"]),
    (_duplicate_category, lambda r: [_cid(r, 0), "duplicate category id"]),
    (_wrong_version, lambda r: ["'version'"]),
    (_short_template_list, lambda r: [_cid(r, 7), "'summary_templates'", ">= 6"]),
]


@pytest.mark.parametrize(("mutate", "expected"), CASES, ids=[m.__name__[1:] for m, _ in CASES])
def test_validation_names_the_culprit(tmp_path, raw, mutate, expected):
    bad = copy.deepcopy(raw)
    mutate(bad)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.dump(bad, Dumper=_DUMPER, sort_keys=False), encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert str(path) in message
    for needle in expected(bad):
        assert needle in message, (needle, message)


def test_unmodified_roundtrip_is_valid(tmp_path, raw):
    # Guards the validation cases above: they must fail because of the mutation.
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.dump(raw, Dumper=_DUMPER, sort_keys=False), encoding="utf-8")
    assert len(load_catalog(path).subjects) == len(load_catalog().subjects)


def test_invalid_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ncategories: [\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="invalid YAML"):
        load_catalog(broken)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="top level"):
        load_catalog(not_mapping)
