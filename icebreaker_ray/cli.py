"""The ``icebreaker`` command: one subcommand per pipeline stage, plus the whole pipeline.

    icebreaker pipeline --config configs/local-cpu.yaml --out runs/demo
    icebreaker simulate --config quick --out runs/q --set sim.num_users=50
    icebreaker show-config --config gpu-cluster

Every stage command takes ``--config`` (a preset path or name), ``--out`` (a local dir or
a storage URI) and ``--set section.key=value`` overrides. Errors in input (config,
Parquet, missing models) print one clear message and exit with status 2; a stage that is
not built yet says so and exits with status 3.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from icebreaker_ray.config import Config, ConfigError, load_config
from icebreaker_ray.data.io import DataError
from icebreaker_ray.models import ModelNotFoundError, set_offline
from icebreaker_ray.pipeline import (
    STAGES,
    Stage,
    StageNotBuilt,
    StaleInputs,
    default_out,
    not_run_reason,
    run_pipeline,
    run_stage,
)

app = typer.Typer(
    help="ICEBREAKER on Ray: personalized conversation starters from session logs.\n\n"
    "Stages run in this order: " + " -> ".join(s.name for s in STAGES) + ".",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOpt = Annotated[
    str, typer.Option("--config", "-c", help="Preset path or name in configs/ (local-cpu, quick, gpu-cluster).")
]
OutOpt = Annotated[
    str | None, typer.Option("--out", "-o", help="Output root (dir or URI). Default: run.storage_path/run.name.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable).")
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even if the outputs are complete.")]

EXIT_BAD_INPUT = 2
EXIT_NOT_BUILT = 3


def _load(config: str, overrides: list[str] | None, address: str | None) -> Config:
    cfg = load_config(config, overrides)
    if address:
        cfg.ray.address = address
    set_offline(cfg.models.offline)
    return cfg


def _fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guarded(fn):
    """Turn the project's input errors into one readable line and an exit status."""
    try:
        return fn()
    except StageNotBuilt as exc:
        _fail(str(exc), EXIT_NOT_BUILT)
    except StaleInputs as exc:
        _fail(str(exc), EXIT_NOT_BUILT)
    except (ConfigError, DataError, ModelNotFoundError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)


def _register_stage(stage: Stage) -> None:
    def command(
        config: ConfigOpt = "local-cpu",
        out: OutOpt = None,
        overrides: SetOpt = None,
        address: AddressOpt = None,
        force: ForceOpt = False,
    ) -> None:
        def body() -> None:
            cfg = _load(config, overrides, address)
            target = out or default_out(cfg)
            manifest = run_stage(stage.name, cfg, target, force=force)
            why = not_run_reason(manifest)
            if why:
                console.print(f"[yellow]{stage.name}[/]: not run: {why}", highlight=False)
                return
            state = "already complete, skipped" if manifest.get("skipped") else "done"
            console.print(f"[green]{stage.name}[/]: {state} -> {target}/{stage.name}")

        _guarded(body)

    command.__doc__ = stage.help
    app.command(name=stage.name, help=stage.help)(command)


for _stage in STAGES:
    _register_stage(_stage)


@app.command()
def pipeline(
    config: ConfigOpt = "local-cpu",
    out: OutOpt = None,
    overrides: SetOpt = None,
    address: AddressOpt = None,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--plan", help="Only list the stages that would run (missing, or stale after a "
                       "change of their settings or of a stage they read), then stop.")] = False,
) -> None:
    """Run every stage in order, skipping stages whose outputs are complete."""

    def body() -> None:
        cfg = _load(config, overrides, address)
        target = out or default_out(cfg)
        if dry_run:
            from icebreaker_ray.pipeline import plan

            todo = plan(cfg, target, until=until)
            console.print(f"would run in {target}: {', '.join(todo) or 'nothing (all complete)'}")
            return
        console.print(f"pipeline -> [bold]{target}[/] (config {config})")

        def show(stage: Stage, status: str, manifest: dict | None) -> None:
            if status == "running":
                console.print(f"[cyan]>[/] {stage.name} ...")
            elif status == "not run":
                console.print(f"[yellow]-[/] {stage.name}: not run: {not_run_reason(manifest)}",
                              highlight=False)
            else:
                took = (manifest or {}).get("duration_s")
                extra = f" in {took:.1f}s" if took and status == "done" else ""
                console.print(f"[green]✓[/] {stage.name}: {status}{extra}")

        run_pipeline(cfg, target, until=until, on_stage=show)
        console.print(f"[bold green]pipeline complete[/] -> {target}")
        _print_summary(target)

    _guarded(body)


def _print_summary(out: str) -> None:
    """Table 1 of the evaluation at a glance, and where the report is."""
    from icebreaker_ray.data import io

    report = io.join(out, "evaluate", "report.md")
    if not io.exists(report):
        return
    from rich.table import Table

    table1 = io.read_json(io.join(out, "evaluate", "metrics.json"))["table1"]
    table = Table(title="Held-out users vs the retrieval baseline (Table 1)")
    columns = (("R-Score (f)", "r_score_f"), ("R-Score (oracle)", "r_score_oracle"),
               ("semantic div.", "semantic_diversity"), ("format pass", "format_pass_rate"))
    table.add_column("method")
    for label, _ in columns:
        table.add_column(label, justify="right")
    for name, row in table1.items():
        cells = [row.get(key) for _, key in columns]
        table.add_row(name, *("–" if c is None else f"{c:.3f}" for c in cells))
    console.print(table)
    console.print(f"report: [bold]{report}[/]")


@app.command("show-config")
def show_config(config: ConfigOpt = "local-cpu", overrides: SetOpt = None) -> None:
    """Print the resolved configuration (preset + overrides) as YAML."""
    _guarded(lambda: print(yaml.safe_dump(load_config(config, overrides).model_dump(mode="json"), sort_keys=False)))


@app.command()
def stages() -> None:
    """List the stages, what they produce and whether they are built."""
    table = Table("stage", "built", "description")
    for stage in STAGES:
        table.add_row(stage.name, "yes" if stage.target else f"no (#{stage.issue})", stage.help)
    Console().print(table)


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="Generator: alias, HF directory (e.g. RUN/sft/model) or Hub id.")] = "smollm2-135m-instruct",
    user: Annotated[str | None, typer.Option(help="A user id in the run's logs.")] = None,
    out: OutOpt = None,
    summaries_file: Annotated[str | None, typer.Option(help="Interests/summaries, one per line (instead of --user).")] = None,
    mode: Annotated[str, typer.Option(help="With --user: 'rid' = trigger interests (falls back to raw when the run has none), 'raw' = recent summaries (PE baseline).")] = "rid",
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    config: ConfigOpt = "local-cpu",
    overrides: SetOpt = None,
) -> None:
    """Sample starters for one user with a generator and print the filtered list."""

    def body() -> None:
        from pathlib import Path

        from icebreaker_ray.data import io
        from icebreaker_ray.isg.engines import EngineSpec
        from icebreaker_ray.isg.generate import GenerationParams
        from icebreaker_ray.isg.generate import generate as generate_starters
        from icebreaker_ray.isg.stage import user_interests
        from icebreaker_ray.models import TextEncoder

        cfg = _load(config, overrides, None)
        if (user is None) == (summaries_file is None):
            raise typer.BadParameter("give exactly one of --user or --summaries-file")
        if summaries_file is not None:
            path = Path(summaries_file)
            if not path.is_file():
                raise DataError(f"{summaries_file}: no such file")
            interests = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            source = summaries_file
        else:
            run = out or default_out(cfg)
            chosen = mode
            if mode == "rid" and not io.is_complete(run, "distill-interests"):
                chosen = "raw"
            by_user = user_interests(run, chosen, cfg.generation.max_summaries)
            if user not in by_user:
                raise DataError(f"user {user!r} has no {'trigger interests' if chosen == 'rid' else 'sessions'} in {run}")
            interests, source = by_user[user], f"{run} ({'trigger interests' if chosen == 'rid' else 'recent summaries'})"
        if not interests:
            raise DataError(f"no interests or summaries given ({source})")
        engine = EngineSpec.from_config(cfg).load(model)
        params = GenerationParams.from_config(cfg)
        [res] = generate_starters(engine, [interests], TextEncoder(cfg.models.embedder), params, seed=seed)
        console.print(f"[dim]{len(interests)} interests from {source}; {len(res.candidates)} candidates, "
                      f"{sum(c.complete for c in res.candidates)} passed the filter with K={params.k}; "
                      f"list: {res.reason}[/]", highlight=False)
        for starter in res.starters:
            print(starter)

    _guarded(body)


@app.command()
def serve(
    config: ConfigOpt = "local-cpu",
    out: Annotated[str | None, typer.Option("--out", "-o", help="Run directory whose scorer, ranker, users and logs to serve (default: run.storage_path/run.name when it exists).")] = None,
    model: Annotated[str | None, typer.Option(help="Generator to serve: alias, HF directory or Hub id (default: the run's dpo/sft model, else models.generator).")] = None,
    overrides: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Start the Ray Serve application (HTTP API + demo page) on this machine; Ctrl-C stops it."""

    def body() -> None:
        from icebreaker_ray.data import io
        from icebreaker_ray.serve.app import run_local

        cfg = _load(config, overrides, address)
        run = out
        if run is None and io.exists(default_out(cfg)):
            run = default_out(cfg)
        console.print(f"serve: run {run or '(none: cold-start list and raw summaries only)'}, "
                      f"config {config}", highlight=False)
        run_local(cfg, run_dir=run, model=model, blocking=True)

    _guarded(body)


@app.command()
def precompute(
    config: ConfigOpt = "local-cpu",
    out: Annotated[str | None, typer.Option("--out", "-o", help="The run to serve (default: run.storage_path/run.name).")] = None,
    users: Annotated[str | None, typer.Option(help="Comma-separated user ids (default: every known user of the run).")] = None,
    k: Annotated[int | None, typer.Option(help="Starters per list (default: generation.K).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate fresh entries too.")] = False,
    model: Annotated[str | None, typer.Option(help="Generator (default: the run's promoted one, as `serve` uses).")] = None,
    overrides: SetOpt = None,
    address: AddressOpt = None,
) -> None:
    """Generate and store known users' lists, so `serve` answers them from the store in
    milliseconds: users whose entry is missing or stale (new sessions, another model)."""

    def body() -> None:
        from icebreaker_ray.serve.precompute import precompute as run

        cfg = _load(config, overrides, address)
        wanted = [u.strip() for u in users.split(",") if u.strip()] if users else None
        res = run(cfg, out or default_out(cfg), users=wanted, k=k, force=force, model=model)
        console.print(f"precompute: {res.generated} lists generated, {res.kept} still fresh, "
                      f"{res.total} in the store ({res.seconds} s) -> {res.path}", highlight=False)

    _guarded(body)


@app.command("import-chitchat")
def import_chitchat(
    out: Annotated[str, typer.Option("--out", "-o", help="Directory (or URI) to write users/sessions Parquet into; point data.source at it.")],
    source: Annotated[str | None, typer.Option(help="The data set's dataset.json or its wheel (default: the installed chitchat-dataset package).")] = None,
    max_users: Annotated[int | None, typer.Option(help="Keep this many users (a stable sample by id hash; default all).")] = None,
    max_sessions_per_user: Annotated[int | None, typer.Option(help="Keep each user's most recent sessions only.")] = None,
    min_sessions: Annotated[int, typer.Option(help="Users with fewer sessions are left out.")] = 2,
    max_chars: Annotated[int, typer.Option(help="Summary length: the user's longest utterances that fit.")] = 200,
    config: ConfigOpt = "local-cpu",
    overrides: SetOpt = None,
) -> None:
    """Convert the Chit-Chat Challenge data set (PyPI chitchat-dataset) into bring-your-own
    users/sessions tables (no impressions: a product before it has starter clicks)."""

    def body() -> None:
        from icebreaker_ray.data import chitchat

        cfg = _load(config, overrides, None)
        tables = chitchat.convert(chitchat.load_conversations(source), max_chars=max_chars,
                                  min_sessions=min_sessions, max_users=max_users,
                                  max_sessions_per_user=max_sessions_per_user,
                                  num_buckets=cfg.gating.num_buckets)
        paths = chitchat.write(tables, out)
        st = tables.stats
        console.print(f"chitchat: {st['users']} users, {st['sessions']} sessions "
                      f"({st['summaries_shortened']} summaries shortened) -> {out}; "
                      f"stats in {paths['stats']}", highlight=False)

    _guarded(body)


@app.command("export-impressions")
def export_impressions_command(
    to: Annotated[str, typer.Option("--to", help="Parquet file to write, e.g. DATA/impressions.parquet next to your users/sessions.")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="The run the server served (its serve/ event store).")] = None,
    store: Annotated[str | None, typer.Option(help="An event store file instead of the run's.")] = None,
    config: ConfigOpt = "local-cpu",
    overrides: SetOpt = None,
) -> None:
    """Write the server's logged impressions and clicks as an impressions table, the input
    that lets the next run train the utility ranker."""

    def body() -> None:
        from icebreaker_ray.serve.artifacts import event_store_path
        from icebreaker_ray.serve.store import export_impressions

        cfg = _load(config, overrides, None)
        path = store or event_store_path(cfg, out or default_out(cfg))
        rows = export_impressions(path, to)
        console.print(f"export-impressions: {rows} impressions from {path} -> {to}", highlight=False)

    _guarded(body)


def main() -> None:
    app(prog_name="icebreaker")


def job(command: str) -> None:
    """Entry point of a ``jobs/*.py`` script: the same command as ``icebreaker COMMAND``,
    so ``python jobs/sft.py --config X`` and ``ray job submit -- python jobs/sft.py
    --config X`` run exactly what the CLI runs (inside a job, RAY_ADDRESS is the cluster)."""
    app(args=[command, *sys.argv[1:]], prog_name=f"jobs/{command.replace('-', '_')}.py")


if __name__ == "__main__":
    sys.exit(main())
