"""Configuration: one pydantic model per pipeline section, loaded from YAML presets.

    cfg = load_config("configs/local-cpu.yaml", overrides=["sim.num_users=50"])
    cfg.search.K            # -> 4

Presets live in ``configs/``. A preset may start with ``extends: other.yaml`` (a path
relative to the preset) and then overrides only what differs. Every section forbids
unknown keys, so a typo fails loudly with the key path and the file that holds it.
The defaults below are the ``local-cpu`` preset: small models, a local Ray instance.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "local-cpu.yaml"


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key and its source."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    name: str = "default"
    seed: int = 0
    # Root of all stage outputs: a local directory or a pyarrow/fsspec URI (s3://, gs://, ...).
    storage_path: str = "runs"


class RaySection(Section):
    # None: connect to RAY_ADDRESS if set, else start a local instance.
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    namespace: str = "icebreaker"


class ModelsSection(Section):
    # A built-in alias ("smollm2-135m-instruct"), a local HF model directory or a Hub id.
    generator: str = "smollm2-135m-instruct"
    embedder: str = "all-minilm-l6-v2"
    # Where converted models live; ICEBREAKER_CACHE overrides it. None: ~/.cache/icebreaker-ray.
    cache_dir: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # HF_HUB_OFFLINE=1 unless explicitly turned off (clusters with Hub access).
    offline: bool = True


class DataSection(Section):
    # "sim": the embedded simulated world; otherwise a directory (or URI) holding
    # users/sessions/impressions Parquet in the schemas of icebreaker_ray.data.schemas.
    source: str = "sim"


class SimSection(Section):
    num_users: int = Field(default=300, ge=1)
    num_days: int = Field(default=28, ge=2)
    # Days of the logging policy (deployed retrieval baseline) writing impressions.
    impression_days: int = Field(default=14, ge=1)
    # Ray tasks used to generate users in parallel (1 = one process, no Ray).
    num_shards: int = Field(default=1, ge=1)
    # How session summaries are written (sim/text.py): "realistic" (users' own voice: varied
    # phrasing, typos and casing, greeting-only and mixed-intent sessions) or "catalog" (the
    # catalog's log-style templates, the world before issue 18). Subjects and hidden state
    # are the same in both.
    text_style: Literal["realistic", "catalog"] = "realistic"


class GenerationSection(Section):
    K: int = Field(default=4, ge=1, le=20)
    num_candidates: int = Field(default=8, ge=1)
    temperature: float = Field(default=0.9, gt=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=96, ge=8)
    batch_size: int = Field(default=8, ge=1)
    # PE baseline / CLI fallback: how many of a user's most recent raw summaries go in the prompt.
    max_summaries: int = Field(default=5, ge=1)
    # Who samples (mining, evaluation, iterate rounds, serving): "hf" (transformers, the
    # reference), "llamacpp" (llama.cpp on a GGUF of the same model, converted once and
    # cached next to it; CPU), "vllm" (GPU presets: Ray Data LLM / Ray Serve LLM configs).
    engine: Literal["hf", "llamacpp", "vllm"] = "hf"
    # GGUF weight type of the llamacpp engine: q8_0 kept the format pass rate (BENCHMARKS.md).
    gguf_outtype: Literal["q8_0", "f16", "bf16", "f32", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m",
                          "q6_k"] = "q8_0"
    # CPU engine threads (None: the actor's/replica's CPUs, OMP_NUM_THREADS, else all cores).
    num_threads: int | None = Field(default=None, ge=1)


class FilterSection(Section):
    max_chars: int = Field(default=64, ge=8)
    min_chars: int = Field(default=8, ge=1)
    near_dup_threshold: float = Field(default=0.9, gt=0, le=1)
    # Cosine to the sensitive prototypes; 0.45 was tuned on MiniLM (isg/filters.py).
    sensitive_threshold: float = Field(default=0.45, gt=0, le=1)
    # Words rarer than this Zipf frequency (wordfreq, English) must appear in the texts a
    # starter was written from, else it is rejected as an invented entity; 0: off.
    vocab_min_zipf: float = Field(default=2.5, ge=0, le=8)


class JudgeSection(Section):
    backend: Literal["embedding", "hf", "openai"] = "embedding"
    # embedding backend: a pair is MATCH when the cosine of the two summaries is >= threshold.
    # 0.4 on MiniLM: precision 0.75 / recall 0.53 against the simulator's truth (quick preset);
    # 0.6 halves the recall for +0.14 precision.
    threshold: float = Field(default=0.4, ge=-1, le=1)
    # Later sessions are only compared with the top-k most similar earlier ones (keeps cost
    # linear in sessions instead of quadratic).
    candidates_per_session: int = Field(default=3, ge=1)
    # ... among at most this many most recent earlier sessions of the same user.
    max_history: int = Field(default=1000, ge=1)
    # Summaries are cut to this many characters before embedding or prompting.
    max_summary_chars: int = Field(default=2000, ge=16)
    hf_model: str | None = None
    max_new_tokens: int = Field(default=24, ge=4)
    openai_url: str | None = None
    openai_model: str = "judge"
    timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    # The stage fails when more than this share of requests fail after all retries.
    max_failure_rate: float = Field(default=0.2, ge=0, le=1)
    batch_size: int = Field(default=64, ge=1)
    num_actors: int = Field(default=2, ge=1)


class ScorerSection(Section):
    dim: int = Field(default=128, ge=8)
    hidden: int = Field(default=256, ge=8)
    epochs: int = Field(default=10, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    # Users per minibatch; their summaries are each other's cross-user negatives (eq. 3).
    batch_size: int = Field(default=32, ge=2)
    # Summaries per user in a minibatch (sampled when a user has more).
    max_items_per_user: int = Field(default=64, ge=2)
    # Softmax temperature on the cosine; eq. 3 as printed is temperature 1.
    temperature: float = Field(default=0.1, gt=0)
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    # Epochs between Ray Train reports (each with a checkpoint; the last epoch always
    # reports). A report waits for the controller's next poll (~2 s on Ray 2.60), which is
    # longer than a CPU epoch of the heads; with a fine-tuned encoder, report every epoch.
    checkpoint_every: int = Field(default=5, ge=1)
    # GPU clusters: fine-tune the text encoder itself instead of heads on frozen embeddings.
    # Everything that scores with the scorer then embeds with the fine-tuned copy it saves.
    finetune_text_encoder: bool = False
    # The sentence encoder to fine-tune (name or directory); null: models.embedder.
    text_encoder: str | None = None
    encoder_lr: float = Field(default=2e-5, gt=0)
    use_profile: bool = True
    # Share of the time span (the latest part) held out from scorer training; the gating
    # thresholds are learned on it (revisits that happen after the split).
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)
    max_failures: int = Field(default=1, ge=0)
    # distill-interests scoring actors and batch size.
    num_actors: int = Field(default=2, ge=1)
    score_batch_size: int = Field(default=256, ge=1)


class GatingSection(Section):
    num_buckets: int = Field(default=4, ge=1)
    objective: Literal["f1", "recall"] = "f1"
    target_recall: float = Field(default=0.8, gt=0, le=1)
    max_interests: int = Field(default=5, ge=1)
    # Project per-bucket thresholds onto a non-decreasing sequence (paper: tau_b increases
    # with activity) when the independent fits violate it; the raw fits are kept in metrics.
    enforce_monotone: bool = True
    # Noise RID drops before eq. 4 (rid/noise.py): greetings, functional tasks (cosine to
    # the functional prototypes >= functional_threshold; > 1 turns it off) and one-offs
    # (fewer than min_support other sessions of the user within cosine support_threshold;
    # 0 turns it off).
    functional_threshold: float = Field(default=0.32, gt=0, le=2)
    support_threshold: float = Field(default=0.6, ge=-1, le=1)
    min_support: int = Field(default=1, ge=0)
    # ... only for users with at least this many non-greeting summaries.
    support_min_history: int = Field(default=15, ge=0)
    # Rule-based baseline (App. C.1): frequency of near-duplicate summaries + recency.
    rule_half_life_days: float = Field(default=7.0, gt=0)
    rule_recency_weight: float = Field(default=0.5, ge=0)


class TeacherSection(Section):
    # auto: "sim" on the simulated world, "grounded" (key phrases of the user's own text,
    # no LLM, CPU) on your own logs; "hf" / "openai" for an LLM teacher (README).
    # Resolved when the config is loaded, so a run records the backend it used.
    backend: Literal["auto", "sim", "grounded", "hf", "openai"] = "auto"
    hf_model: str | None = None
    openai_url: str | None = None
    openai_model: str = "teacher"
    min_questions: int = Field(default=5, ge=1)
    max_questions: int = Field(default=20, ge=1)
    num_actors: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)
    # LLM backends (hf, openai): sampling and the OpenAI-compatible endpoint's robustness.
    temperature: float = Field(default=0.8, gt=0)
    max_new_tokens: int = Field(default=512, ge=16)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)
    # Name of the env var holding the endpoint's API key (unset: no Authorization header).
    api_key_env: str = "OPENAI_API_KEY"
    # Sim backend: catalog subjects matched per trigger interest, related subjects added.
    subjects_per_interest: int = Field(default=1, ge=1)
    related_subjects: int = Field(default=2, ge=0)


class LoraSection(Section):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TrainSection(Section):
    """Shared by SFT and DPO: Ray Train scaling, DeepSpeed, LoRA, checkpoints."""

    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(default=1, ge=1)
    max_steps: int = Field(default=60, ge=1)
    per_device_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    max_length: int = Field(default=256, ge=16)
    # Train in bf16 where the worker's hardware has it (CUDA Ampere+, a CPU with AVX-512 /
    # AMX bf16); on other hardware each worker falls back to fp32 with a warning
    # (isg/sft.resolve_bf16), since emulated bf16 is many times slower.
    bf16: bool = False
    # 0 disables DeepSpeed; 2 runs on CPU here; 3 for multi-GPU clusters.
    zero_stage: Literal[0, 1, 2, 3] = 2
    lora: LoraSection | None = None
    save_steps: int = Field(default=20, ge=1)
    max_failures: int = Field(default=2, ge=0)
    logging_steps: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    # Keep this many Ray Train checkpoints (None: all).
    keep_checkpoints: int | None = Field(default=2, ge=1)


class DPOSection(TrainSection):
    beta: float = Field(default=0.1, gt=0)
    learning_rate: float = Field(default=5e-6, gt=0)
    # Weight of an NLL term on the chosen list added to the DPO loss (TRL loss_type "sft";
    # RPO, Pang et al. 2024, arXiv 2404.19733); 0: plain eq. 6. Without it, DPO on lists
    # that differ in one starter lowers the likelihood of both and the model drifts into
    # over-long and repeated starters (BENCHMARKS.md, "DPO and the format filter").
    sft_weight: float = Field(default=0.0, ge=0)
    negatives: list[Literal["utility", "diversity", "joint"]] = ["utility", "diversity", "joint"]


class RankerSection(Section):
    hidden: int = Field(default=64, ge=8)
    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=256, ge=2)
    # R_util = (1 - depth_weight) * click head + depth_weight * depth head (eq. 7).
    depth_weight: float = Field(default=0.3, ge=0, le=1)
    num_workers: int = Field(default=2, ge=1)
    # Epochs between Ray Train reports + checkpoints (the last epoch always reports): an
    # epoch of this MLP takes milliseconds, a report waits ~2 s for the controller's poll.
    checkpoint_every: int = Field(default=10, ge=1)
    # Which ranker train-ranker saves for both slices: "features" (LightGBM over a few
    # starter x user interaction features, reward/features.py) or "mlp" (eq. 7 over raw
    # embeddings). Both are fitted and their held-out click AUC reported in every run.
    kind: Literal["mlp", "features"] = "features"
    # Members of the util slice's bootstrap ensemble (list search uses mean - kappa * std,
    # search.kappa); 1: a single ranker. The eval ranker f is always a single model.
    ensemble: int = Field(default=5, ge=1)
    # Feature ranker: boosting rounds and leaves per tree.
    trees: int = Field(default=300, ge=1)
    leaves: int = Field(default=15, ge=2)


class SearchSection(Section):
    """Algorithm 1 (hybrid reward list search) and SELECTNEGATIVES thresholds."""

    K: int = Field(default=4, ge=1)
    N: int = Field(default=16, ge=1)
    J: int = Field(default=4, ge=1)
    M: int = Field(default=6, ge=1)
    lam: float = Field(default=0.5, ge=0)
    # SELECTNEGATIVES: utility gaps/tolerances are relative to v_util(S+), diversity ones
    # absolute (v_div is already on [0, 1]); see search/list_search.py. A utility negative
    # at most half of S+'s utility: on 192 pools of the 2026-12-07 demo (96 of them fresh
    # users), 0.5 made 83% of all pairs truly better in both rounds, against 78% / 76% at
    # 0.2; the ranker orders a pool at 0.66 concordance, so a small gap is often its error
    # (BENCHMARKS.md, "Mined pairs against the truth").
    util_gap: float = Field(default=0.5, ge=0)
    util_tolerance: float = Field(default=0.1, ge=0)
    div_gap: float = Field(default=0.1, ge=0)
    div_tolerance: float = Field(default=0.05, ge=0)
    # A diversity (and joint-failure) negative must also hold two starters at cosine >= this
    # (a redundant pair); None: the div_gap rule alone. With the rule alone 55% of the
    # diversity pairs were right by the truth (chance: 50%): a lower mean dissimilarity is
    # mostly related-but-distinct starters. At 0.85 (between the oracle's 0.8, where it
    # starts to penalize a repeat, and the filter's 0.9 near-duplicate) 79% were, on the
    # demo's round-0 pools (bench/bench_pairs.py, BENCHMARKS.md).
    div_redundancy: float | None = Field(default=0.85, ge=-1, le=1)
    # Share of the candidate pool filled with teacher-distilled starters (App. C.3).
    teacher_mix_ratio: float = Field(default=0.25, ge=0, le=1)
    # Conservative reward of Algorithm 1 and SELECTNEGATIVES: mean - kappa * std of the
    # util ranker ensemble's utilities (ranker.ensemble members); 0: the plain mean.
    kappa: float = Field(default=1.0, ge=0)
    # A mined pair is kept only when at least this share of the ensemble's members score
    # S+ above the negative by eq. 8 (search/list_search.member_agreement); 0: every pair.
    # 0.8 (4 of 5 members): utility pairs right by the truth 87% -> 93% (round 0) and
    # 67% -> 78% (round 1) on the demo's pools, for a third fewer of them (bench_pairs.py).
    min_agreement: float = Field(default=0.8, ge=0, le=1)
    # Users mined per round (a random sample of the non-held-out users); None: all.
    max_users: int | None = Field(default=96, ge=1)
    # Vanilla SFT+DPO baseline: at most this many (clicked list, unclicked list) pairs per user.
    feedback_pairs_per_user: int = Field(default=4, ge=1)
    num_actors: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _k_fits_pool(self) -> SearchSection:
        if self.K > self.N:
            raise ValueError(f"K={self.K} is larger than the candidate pool N={self.N}")
        return self


class IterateSection(Section):
    rounds: int = Field(default=2, ge=1)
    days_per_round: int = Field(default=7, ge=1)
    # Round gate (search/iterate.py): a round is promoted only if, on `validation_users`
    # non-held-out users never mined in a round, it is not worse than the generator it
    # replaces by more than these tolerances (absolute: format pass rate in [0, 1], mean
    # cosine relevance to the trigger interests). false: every round is promoted.
    gate: bool = True
    validation_users: int = Field(default=24, ge=1)
    format_tolerance: float = Field(default=0.02, ge=0, le=1)
    relevance_tolerance: float = Field(default=0.01, ge=0)


class EvalSection(Section):
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    ab_days: int = Field(default=14, ge=1)
    n_boot: int = Field(default=1000, ge=100)
    # Held-out users graded per method (None: all of them) and in the ablations.
    max_users: int | None = Field(default=None, ge=1)
    ablation_users: int | None = Field(default=24, ge=1)
    # Lists sampled per user and method; the first that passes the filter is the user's G_u.
    num_candidates: int = Field(default=2, ge=1)
    # Raw summaries in the PE baseline's prompt (the most recent ones).
    pe_summaries: int = Field(default=6, ge=1)
    # Table 9 analogue: one extra DPO run per negative type (costly on CPU).
    negative_ablation: bool = True
    examples: int = Field(default=10, ge=0)


class DeploymentSection(Section):
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=4.0, gt=0)
    max_ongoing_requests: int = Field(default=16, ge=1)
    # torch intra-op threads in each replica (None: torch's default for the process).
    num_threads: int | None = Field(default=None, ge=1)


class ServeSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Name of the env var that holds the API key; without a key the server binds to 127.0.0.1 only.
    api_key_env: str = "ICEBREAKER_API_KEY"
    cache_ttl_s: float = Field(default=300.0, ge=0)
    max_summaries: int = Field(default=200, ge=1)
    max_summary_chars: int = Field(default=1000, ge=1)
    event_store: str = "events.sqlite"
    deployments: dict[str, DeploymentSection] = {}
    # Request bodies larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    # Candidate lists sampled per request (None: eval.num_candidates, as evaluate samples).
    num_candidates: int | None = Field(default=None, ge=1)
    # Requests the StarterGenerator generates at once (llamacpp: their sequences decode
    # together, continuous batching; hf: requests per generate call). Nobody waits for a
    # batch to fill: a request starts at the engine's next step.
    max_batch_size: int = Field(default=8, ge=1)
    # llamacpp: a request alone in the generator decodes half of its candidate lists on a
    # second context with half of the threads (two 1-thread decodes of one sequence each
    # beat one 2-thread decode of two on CPUs); its sequences move back as soon as another
    # request comes (isg.engines.ContinuousBatcher). Needs 2+ threads and candidates.
    split_alone: bool = True


class Config(Section):
    run: RunSection = RunSection()
    ray: RaySection = RaySection()
    models: ModelsSection = ModelsSection()
    data: DataSection = DataSection()
    sim: SimSection = SimSection()
    generation: GenerationSection = GenerationSection()
    filter: FilterSection = FilterSection()
    judge: JudgeSection = JudgeSection()
    scorer: ScorerSection = ScorerSection()
    gating: GatingSection = GatingSection()
    teacher: TeacherSection = TeacherSection()
    sft: TrainSection = TrainSection()
    dpo: DPOSection = DPOSection()
    ranker: RankerSection = RankerSection()
    search: SearchSection = SearchSection()
    iterate: IterateSection = IterateSection()
    eval: EvalSection = EvalSection()
    serve: ServeSection = ServeSection()

    @model_validator(mode="after")
    def _resolve_teacher(self) -> Config:
        if self.teacher.backend == "auto":
            self.teacher.backend = "sim" if self.data.source == "sim" else "grounded"
        return self

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections or dotted settings (all when none): stage
        outputs record it so a rerun with a changed config does not reuse stale outputs."""
        data = self.model_dump(mode="json")
        if sections:
            picked = {}
            for name in sections:  # a section ("sft") or one setting of it ("eval.negative_ablation")
                value = data
                for part in name.split("."):
                    value = value[part]
                picked[name] = value
            data = picked
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise ConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, chain))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: invalid YAML{line}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml((path.parent / str(parent)).resolve(), (*chain, path))
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    parts = key.split(".")
    node: Any = Config
    for part in parts[:-1]:
        # Walk the schema so an unknown section fails here, naming the key.
        fields = getattr(node, "model_fields", None)
        if fields is None or part not in fields:
            raise ConfigError(f"--set {override!r}: unknown key '{key}'")
        node = fields[part].annotation
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {override!r}: value is not valid YAML: {exc}") from exc
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {override!r}: '{part}' is not a section")
    target[parts[-1]] = value


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: key '{key}': {err['msg']}{shown}")
    return "\n".join(lines)


def resolve_preset(path: str | Path | None) -> Path:
    """A path as given, or a bare preset name looked up in ``configs/`` ("quick" -> quick.yaml)."""
    if path is None:
        return CONFIG_DIR / DEFAULT_PRESET
    p = Path(path)
    if p.exists():
        return p.resolve()
    named = CONFIG_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    return named if named.exists() else p


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset (default: configs/local-cpu.yaml), apply ``section.key=value`` overrides."""
    source = resolve_preset(path)
    data = _read_yaml(source)
    for override in overrides or []:
        _apply_override(data, override)
    label = str(source) + (" (with --set overrides)" if overrides else "")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, label)) from None
