"""HIDDEN TRUTH. Simulated users: their hidden state and how they behave day by day.

Only ``icebreaker_ray.sim`` and ``icebreaker_ray.eval`` may import this module (a test
enforces it): learned models see the Parquet logs the world writes, never this state.

Each user has (ICER-style, DESIGN §5):
- an activity level (how often they visit, how many sessions a visit has);
- a few sparse long-term interests (subjects with a weight and a revisit propensity),
  concentrated in one to three favourite categories, drawn with a long tail;
- short-lived interests that appear after exploring a subject and fade with a half-life;
- habits: share of functional sessions (translate, fix grammar: frequent, not resonant),
  an optional recurring sensitive issue (debts, symptoms: in histories, never suggested),
  a tendency to explore new subjects, a chance to start a conversation unprompted;
- click propensity and position bias (used by the click oracle);
- engagement, which rises after a good conversation and decays: the mechanism through
  which better starters raise active days and sessions per user.

Every random draw comes from a stream keyed by (seed, user index, day, purpose), so a
user behaves identically whichever shard generates them, and two policies deployed on
the same users see the same organic behaviour until their starters make a difference.

How a session is written is ``WorldParams.text_style`` (:mod:`icebreaker_ray.sim.text`):
``realistic`` text in the user's own voice (their habits: :class:`~icebreaker_ray.sim.text.Voice`)
drawn from text streams of its own, or the catalog's ``catalog`` templates. The style
changes the words only: subjects, hours and hidden state come from the same draws in
both. The realistic world also logs greeting-only sessions ("hello?", "test") on some
active days: they have no subject (:data:`NO_SUBJECT`, origin ``greeting``), are never
an interest, change no hidden state and are not counted as sessions in the day's events
(the online metrics measure conversations about something).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from icebreaker_ray.sim.catalog import Catalog, Subject
from icebreaker_ray.sim.text import PLAIN_VOICE, SummaryWriter, Voice, draw_voice

# Purposes of the per-(user, day) random streams (STREAM_TEXT with day -1: a user's voice).
STREAM_INIT, STREAM_ORGANIC, STREAM_CLICK, STREAM_POLICY = 0, 1, 2, 3
STREAM_TEXT, STREAM_STARTER_TEXT = 4, 5

#: ``SessionEvent.subject`` of a session about nothing (a greeting, "test", "ok thanks").
NO_SUBJECT = -1
GREETING = "greeting"

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
OCCUPATIONS = ("student", "engineer", "teacher", "designer", "nurse", "retail worker",
               "manager", "freelancer", "retiree", "researcher", "parent at home")
TIMES = ("mornings", "lunch breaks", "evenings", "late nights", "weekends")


@dataclass(frozen=True)
class WorldParams:
    """Knobs of user generation and behaviour (not of the click oracle)."""

    min_long_interests: int = 2
    max_long_interests: int = 5
    favourite_category_share: float = 0.75
    popularity_power: float = 0.7  # < 1 flattens popularity: a longer tail of subjects
    short_interest_spawn: float = 0.3  # chance an exploration turns into a short-lived interest
    short_half_life: tuple[float, float] = (2.0, 6.0)
    engagement_decay: float = 0.85
    engagement_per_depth: float = 0.05
    max_engagement: float = 1.5
    text_style: str = "realistic"  # "realistic" | "catalog" (sim/text.py)


@dataclass
class ShortInterest:
    subject: int
    weight: float
    propensity: float
    start_day: int
    half_life: float

    def weight_on(self, day: int) -> float:
        if day < self.start_day:
            return 0.0
        return self.weight * 0.5 ** ((day - self.start_day) / self.half_life)


@dataclass
class UserState:
    index: int
    user_id: str
    p_visit: float
    session_rate: float
    p_self_start: float
    p_functional: float
    p_sensitive: float
    p_explore: float
    click_bias: float
    position_decay: float
    profile: str
    favourite_categories: np.ndarray
    long_subjects: np.ndarray
    long_weights: np.ndarray
    long_propensity: np.ndarray
    sensitive_subject: int
    short: list[ShortInterest] = field(default_factory=list)
    engagement: float = 0.0
    voice: Voice | None = None  # writing habits (realistic text style)

    def interest_weights(self, day: int, num_subjects: int) -> np.ndarray:
        """w_u(day): hidden interest weight per subject (long-term + fading short-term)."""
        w = np.zeros(num_subjects, np.float32)
        w[self.long_subjects] = self.long_weights
        for s in self.short:
            w[s.subject] = max(w[s.subject], s.weight_on(day))
        return w


@dataclass
class SessionEvent:
    """One session as the world knows it: the logged part plus the hidden subject."""

    user: int
    day: int
    seq: int
    hour: float
    summary: str
    subject: int  # NO_SUBJECT for a greeting
    origin: str  # long | short | explore | functional | sensitive | starter | greeting

    @property
    def has_subject(self) -> bool:
        return self.subject != NO_SUBJECT


def rng_for(seed: int, user: int, day: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, user, day + 1, purpose])


class World:
    """The catalog as index arrays plus the sampling rules over it."""

    def __init__(self, catalog: Catalog, params: WorldParams | None = None) -> None:
        self.catalog = catalog
        self.params = params or WorldParams()
        self.subjects: tuple[Subject, ...] = catalog.subjects
        cat_ids = [c.id for c in catalog.categories]
        self.category_index = {c: i for i, c in enumerate(cat_ids)}
        self.subject_category = np.array([self.category_index[s.category_id] for s in self.subjects])
        kinds = np.array([s.kind for s in self.subjects])
        self.regular = np.flatnonzero(kinds == "regular")
        self.functional = np.flatnonzero(kinds == "functional")
        self.sensitive = np.flatnonzero(kinds == "sensitive")
        self.category_kind = np.array([c.kind for c in catalog.categories])
        self.category_appeal = np.array([c.appeal for c in catalog.categories], np.float32)
        pop = np.array([s.popularity for s in self.subjects]) ** self.params.popularity_power
        self.popularity = pop
        self.writer = SummaryWriter(catalog, self.params.text_style)

    def __setstate__(self, state: dict) -> None:
        # A world saved before text styles existed wrote catalog text: it goes on doing so.
        self.__dict__.update(state)
        if "writer" not in state:
            self.writer = SummaryWriter(self.catalog, "catalog")

    @property
    def num_subjects(self) -> int:
        return len(self.subjects)

    def _pick(self, rng: np.random.Generator, candidates: np.ndarray, size: int = 1) -> np.ndarray:
        p = self.popularity[candidates]
        return rng.choice(candidates, size=size, replace=False, p=p / p.sum())

    def new_user(self, seed: int, index: int) -> UserState:
        rng = rng_for(seed, index, -1, STREAM_INIT)
        p = self.params
        regular_cats = np.flatnonzero(self.category_kind == "regular")
        appeal = self.category_appeal[regular_cats]
        n_fav = int(rng.integers(1, 4))
        fav = rng.choice(regular_cats, size=n_fav, replace=False, p=appeal / appeal.sum())
        n_long = int(rng.integers(p.min_long_interests, p.max_long_interests + 1))
        in_fav = self.regular[np.isin(self.subject_category[self.regular], fav)]
        subjects: list[int] = []
        for _ in range(n_long):
            pool = in_fav if rng.random() < p.favourite_category_share else self.regular
            pool = np.setdiff1d(pool, subjects)
            subjects.append(int(self._pick(rng, pool)[0]))
        activity = float(np.clip(rng.lognormal(-1.2, 0.7), 0.03, 0.9))
        profile = (
            f"age {rng.choice(AGE_BANDS)}, {rng.choice(OCCUPATIONS)}, "
            f"mostly chats in the {rng.choice(TIMES)}"
        )
        return UserState(
            index=index,
            user_id=f"u{index:07d}",
            p_visit=activity,
            session_rate=0.2 + 1.5 * activity,
            p_self_start=float(rng.beta(7, 2.2)),
            p_functional=float(rng.uniform(0.1, 0.45)),
            p_sensitive=float(rng.uniform(0.02, 0.1)) if rng.random() < 0.3 else 0.0,
            p_explore=float(rng.uniform(0.15, 0.4)),
            click_bias=float(rng.normal(0.0, 0.5)),
            position_decay=float(rng.uniform(0.3, 0.9)),
            profile=profile,
            favourite_categories=np.sort(fav),
            long_subjects=np.array(subjects),
            long_weights=rng.uniform(0.55, 1.0, n_long).astype(np.float32),
            long_propensity=rng.uniform(0.2, 1.0, n_long).astype(np.float32),
            sensitive_subject=int(rng.choice(self.sensitive)),
            # Its own stream: the draws above are the same in every text style.
            voice=draw_voice(rng_for(seed, index, -1, STREAM_TEXT)),
        )

    # ------------------------------------------------------------------ behaviour

    def visits(self, user: UserState, day: int, seed: int) -> bool:
        rng = rng_for(seed, user.index, day, STREAM_ORGANIC)
        p = min(0.97, user.p_visit * (1.0 + user.engagement))
        return bool(rng.random() < p)

    def interest_choice(self, user: UserState, day: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The revisit distribution over the user's current interests (subject, prob, origin)."""
        subj = list(user.long_subjects)
        mass = list(user.long_weights * user.long_propensity)
        origin = ["long"] * len(subj)
        for s in user.short:
            w = s.weight_on(day)
            if w > 0.05:
                subj.append(s.subject)
                mass.append(w * s.propensity)
                origin.append("short")
        m = np.asarray(mass, np.float64)
        return np.asarray(subj), m / m.sum(), origin

    def organic_sessions(self, user: UserState, day: int, seed: int, first_seq: int,
                         started_by_starter: bool) -> list[SessionEvent]:
        """Sessions the user starts on their own today (none when they leave)."""
        rng = rng_for(seed, user.index, day, STREAM_ORGANIC)
        rng.random()  # the visit draw
        self_start = rng.random() < user.p_self_start
        if started_by_starter:
            n = int(rng.poisson(0.5 * user.session_rate))
        elif self_start:
            n = 1 + int(rng.poisson(user.session_rate))
        else:
            return []
        text_rng = self.text_rng(seed, user, day, STREAM_TEXT)
        events = []
        for i in range(n):
            subject, origin = self._choose_subject(user, day, rng)
            hour = float(rng.uniform(6, 24))
            events.append(SessionEvent(user.index, day, first_seq + i, hour,
                                       self.summary(user, subject, rng, text_rng), subject, origin))
        if events and text_rng is not None and text_rng.random() < (user.voice or PLAIN_VOICE).p_greeting:
            # A "hello?" or "test" on an active day, at any hour: logged, about nothing.
            hour = float(text_rng.uniform(6, 24))
            events.append(SessionEvent(user.index, day, first_seq + n, hour,
                                       self.writer.greeting(text_rng, user.voice), NO_SUBJECT,
                                       GREETING))
        return events

    def text_rng(self, seed: int, user: UserState, day: int, purpose: int) -> np.random.Generator | None:
        """The stream a user's text is written from on one day (None in the catalog style,
        which writes from the world's own stream)."""
        return rng_for(seed, user.index, day, purpose) if self.writer.realistic else None

    def summary(self, user: UserState, subject: int, rng: np.random.Generator,
                text_rng: np.random.Generator | None) -> str:
        """A session's summary about ``subject`` in the world's text style: ``rng`` (the
        session's behaviour stream) gives the same draws in every style."""
        return self.writer.summary(self.subjects[subject], rng, text_rng, user.voice)

    def _choose_subject(self, user: UserState, day: int, rng: np.random.Generator) -> tuple[int, str]:
        r = rng.random()
        if r < user.p_functional:
            return int(self._pick(rng, self.functional)[0]), "functional"
        if r < user.p_functional + user.p_sensitive:
            return user.sensitive_subject, "sensitive"
        if rng.random() < user.p_explore:
            # Exploration leans towards favourite categories but can land anywhere.
            in_fav = self.regular[np.isin(self.subject_category[self.regular], user.favourite_categories)]
            pool = in_fav if rng.random() < 0.5 else self.regular
            subject = int(self._pick(rng, pool)[0])
            known = subject in user.long_subjects or any(s.subject == subject for s in user.short)
            if rng.random() < self.params.short_interest_spawn and not known:
                lo, hi = self.params.short_half_life
                user.short.append(ShortInterest(subject, float(rng.uniform(0.4, 0.9)),
                                                float(rng.uniform(0.3, 0.9)), day, float(rng.uniform(lo, hi))))
            return subject, "explore"
        subj, prob, origin = self.interest_choice(user, day)
        k = int(rng.choice(len(subj), p=prob))
        return int(subj[k]), origin[k]

    def end_of_day(self, user: UserState, day: int) -> None:
        user.engagement *= self.params.engagement_decay
        user.short = [s for s in user.short if s.weight_on(day + 1) > 0.05]

    def after_conversation(self, user: UserState, depth: int) -> None:
        p = self.params
        user.engagement = min(p.max_engagement, user.engagement + p.engagement_per_depth * depth)


def log_depth(rate: float, rng: np.random.Generator) -> int:
    """Conversation depth after a click: 1 + Poisson(rate)."""
    return 1 + int(rng.poisson(max(rate, 0.0)))

