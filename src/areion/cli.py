"""The `areion` command: serve, sim, keys, jobs, report, experiments, eval, train, --version."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from areion._version import __version__
from areion.config import Config, default_config, load_config
from areion.errors import ConfigError, RequestError

__all__ = ["main"]

_DEFAULT_CONFIG = "areion.yaml"


def _config(path: str | None) -> tuple[Config, str]:
    if path:
        return load_config(path), path
    if Path(_DEFAULT_CONFIG).exists():
        return load_config(_DEFAULT_CONFIG), _DEFAULT_CONFIG
    return default_config(), "the embedded default (sim models, SQLite)"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from areion.runtime import Runtime
    from areion.server import create_app
    from areion.server.access import configure_access_log
    from areion.server.guard import guarded_protocol
    from areion.server.worker import freeze_startup_heap

    config, source = _config(args.config)
    if args.log_format is not None:
        server = config.server.model_copy(update={"log_format": args.log_format})
        config = config.model_copy(update={"server": server})
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    _refuse_open(config, host, allow_open=args.allow_open)
    if args.workers > 1:
        return _serve_workers(args, config, source, host, port)
    runtime = Runtime(config)
    model = runtime.models[0]
    url = f"http://{host}:{port}"
    print(f"Areion {__version__} serving {url} with {source}", flush=True)
    print(f"models: {', '.join(runtime.models)}", flush=True)
    print("try:", flush=True)
    print(
        f"  curl {url}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"model": "{model}", "messages": [{{"role": "user", '
        f'"content": "Hello!"}}]}}\'',
        flush=True,
    )
    configure_access_log(args.log_level)
    app = create_app(runtime)
    freeze_startup_heap()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=False,  # Areion's own request line replaces uvicorn's (server/access.py)
        proxy_headers=False,  # Areion reads no client address: no X-Forwarded-* rewriting
        server_header=False,  # no `server: uvicorn` on every answer, naming what serves it
        loop="auto",
        # httptools with deadlines for headers, bodies and idle sockets and a connection cap
        http=guarded_protocol(config.server),
        timeout_graceful_shutdown=10,
    )
    return 0


def _serve_workers(
    args: argparse.Namespace, config: Config, source: str, host: str, port: int
) -> int:
    """N processes on one port (uvicorn's workers), sharing the configured backends."""
    import uvicorn

    from areion.server.worker import CONFIG_ENV, LOG_FORMAT_ENV, LOG_LEVEL_ENV

    if config.store.startswith("sqlite") or config.shared is None:
        raise ConfigError(
            f"--workers {args.workers}: the workers would each keep their own limits, "
            "budgets, breakers and caches. Configure shared backends first: "
            "`store: postgresql://...` (pip install 'areion[postgres]') and "
            "`shared: redis://...` (pip install 'areion[redis]'), or serve with one worker"
        )
    if args.config is None and source != _DEFAULT_CONFIG:
        raise ConfigError("--workers needs a config file (--config FILE)")
    os.environ[CONFIG_ENV] = str(Path(args.config or _DEFAULT_CONFIG).resolve())
    os.environ[LOG_FORMAT_ENV] = config.server.log_format
    os.environ[LOG_LEVEL_ENV] = args.log_level
    print(
        f"Areion {__version__} serving http://{host}:{port} with {source}, {args.workers} workers",
        flush=True,
    )
    uvicorn.run(
        "areion.server.worker:app",
        factory=True,
        workers=args.workers,
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        loop="auto",
        http="areion.server.worker:protocol",
        timeout_graceful_shutdown=10,
    )
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


async def _has_auth(config: Config) -> bool:
    """Whether the server will require a key: config keys, or an active key in the store."""
    from areion.control.keys import KeyRing
    from areion.store import open_store

    store = open_store(config.store)
    try:
        return await KeyRing(config.auth, store).closed()
    finally:
        await store.aclose()


def _refuse_open(config: Config, host: str, *, allow_open: bool) -> None:
    """Safe by default: an open server (no key anywhere) is for this machine only.

    Beyond loopback, anyone who reaches it could spend on every model and read every
    run of tenant `default`; serving so takes an explicit `--allow-open`."""
    if allow_open or config.server.allow_open or _loopback(host):
        return
    if asyncio.run(_has_auth(config)):
        return
    raise ConfigError(
        f"refusing to serve {host} without authentication: anyone who can reach it could "
        "call every model. Configure auth (auth.keys or auth.admin_keys in the config, or "
        "`areion keys create`), serve on 127.0.0.1, or pass --allow-open (or set "
        "server.allow_open: true) to run open on purpose"
    )


def _sim(args: argparse.Namespace) -> int:
    from areion.sim.server import run_sim

    print(
        f"areion sim serving http://{args.host}:{args.port} (time scale {args.time_scale})",
        flush=True,
    )
    run_sim(
        args.host,
        args.port,
        profiles_file=args.profiles,
        time_scale=args.time_scale,
        seed=args.seed,
    )
    return 0


def _models(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _keys(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_keys_command(args))


async def _keys_command(args: argparse.Namespace) -> int:
    import json

    from areion.control.keys import create_key, key_json, revoke_key
    from areion.store import open_store

    config, _ = _config(args.config)
    store = open_store(config.store)
    try:
        if args.action == "create":
            key, record = await create_key(
                store,
                config,
                tenant=args.tenant,
                name=args.name,
                rpm=args.rpm,
                tpm=args.tpm,
                priority=args.priority,
                models=_models(args.models),
            )
            if args.json:
                print(json.dumps({**key_json(record), "key": key}))
            else:
                print(key)
                print(
                    f"key {record.key_id} '{record.name}' of tenant {record.tenant} created in "
                    f"{config.store}: this is the only time the key is shown",
                    file=sys.stderr,
                )
        elif args.action == "list":
            records = await store.keys(tenant=args.tenant)
            if args.json:
                print(json.dumps([key_json(record) for record in records]))
            else:
                _print_keys(records)
        else:
            record = await revoke_key(store, args.key)
            print(f"revoked key {record.key_id} '{record.name}' of tenant {record.tenant}")
    finally:
        await store.aclose()
    return 0


def _print_keys(records: Sequence[Any]) -> None:
    import time

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    rows = [("ID", "NAME", "TENANT", "RPM", "TPM", "PRIORITY", "MODELS", "CREATED", "REVOKED")]
    for r in records:
        models = "*" if r.models is None else ",".join(r.models)
        rows.append(
            (r.key_id, r.name, r.tenant, str(r.rpm or "-"), str(r.tpm or "-"),
             r.priority or "-", models, when(r.created), when(r.revoked_at))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _experiments_report(args: argparse.Namespace) -> int:
    return asyncio.run(_experiments_report_command(args))


async def _experiments_report_command(args: argparse.Namespace) -> int:
    import json

    from areion.experiment_report import plot_experiment, render_experiment
    from areion.store import open_store
    from areion.telemetry.experiments import Experiments
    from areion.telemetry.verdicts import Judge

    config, _ = _config(args.config)
    experiments = Experiments(config.experiments)
    if experiments.get(args.name) is None:
        known = ", ".join(c.name for c in experiments.configs) or "none in the config"
        raise ConfigError(f"no experiment '{args.name}'; experiments: {known}")
    store = open_store(config.store)
    try:
        judge = Judge(store, experiments)
        found = await judge.report(
            args.name, carry_out=False, over_time=bool(args.plot or args.json)
        )
    finally:
        await store.aclose()
    report = found.as_dict()
    if args.plot:
        plot_experiment(report, args.plot)
    print(json.dumps(report) if args.json else render_experiment(report), end="")
    if args.json:
        print()
    return 0


def _report(args: argparse.Namespace) -> int:
    return asyncio.run(_report_command(args))


async def _report_command(args: argparse.Namespace) -> int:
    import json

    from areion import spend
    from areion.report import build_report, parse_since, plot_report, render
    from areion.store import open_store

    config, _ = _config(args.config)
    since, until = spend.span(
        None if args.since is None else parse_since(args.since, "--since"),
        None if args.until is None else parse_since(args.until, "--until"),
    )
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError(
                "--plot needs matplotlib, which is not installed: pip install 'areion[plot]'"
            )
    store = open_store(config.store)
    try:
        report = await build_report(store, since=since, until=until, tenant=args.tenant)
    finally:
        await store.aclose()
    if args.plot:
        plot_report(report, args.plot)
    print(json.dumps(report) if args.json else render(report), end="\n" if args.json else "")
    return 0


def _eval_cache(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from areion.cache.calibrate import evaluate_pairs
    from areion.cache.embedding import MiniLMEmbedder
    from areion.cache.verifier import SemanticVerifier

    files = [Path(name) for name in args.pairs]
    for path in files:
        if not path.is_file():
            raise ConfigError(f"--pairs: no file {path}")
    config, _ = _config(args.config)
    verifier = SemanticVerifier.load(kind=config.cache.semantic.verifier)
    rate = args.max_wrong_hit_rate
    if rate is None:  # the configured setting, if a config sets one
        rate = config.cache.semantic.max_wrong_hit_rate
    for value in (rate, *(args.rates or ())):
        if value is not None and not 0 < value < 1:
            flag = "--max-wrong-hit-rate" if value == rate else "--rates"
            raise ConfigError(f"{flag} must be between 0 and 1, got {value}")
    threshold = verifier.threshold_for(rate) if rate is not None else None
    if threshold is not None and math.isinf(threshold):
        raise ConfigError(
            f"max wrong-hit rate {rate}: stricter than the verifier's calibration vouches for"
        )
    # calibrate writes the file names joined by " + "
    trained_on = set(str(verifier.meta.get("trained_on", "")).split(" + "))
    embedder = MiniLMEmbedder(quantized=config.cache.semantic.embed_quantized)
    keys = ("precision", "recall", "hits", "wrong_hits", "pairs", "unjudged_hits")
    out: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for n, path in enumerate(files):
                vectors = Path(scratch) / f"{n}.npz"  # embedded once, for every setting
                result = evaluate_pairs(
                    path, verifier, embedder, threshold=threshold, embeddings=vectors
                )
                summary: dict[str, Any] = {key: result[key] for key in keys}
                summary["file"] = path.name
                summary["in_sample"] = path.name in trained_on
                summary["settings"] = []
                for setting in args.rates or ():
                    limit = verifier.threshold_for(setting)
                    row: dict[str, Any] = {"max_wrong_hit_rate": setting}
                    if math.isinf(limit):  # nothing vouched for: the cache serves nothing
                        row |= {"hits": 0, "wrong_hits": 0, "wrong_hit_rate": 0.0, "recall": 0.0}
                    else:
                        found = evaluate_pairs(
                            path, verifier, embedder, threshold=limit, embeddings=vectors
                        )
                        row |= {
                            "hits": found["hits"],
                            "wrong_hits": found["wrong_hits"],
                            "wrong_hit_rate": 1.0 - found["precision"],
                            "recall": found["recall"],
                        }
                    row["within"] = row["wrong_hit_rate"] <= setting
                    summary["settings"].append(row)
                out.append(summary)
    finally:
        embedder.close()
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out))
        return 0
    for summary in out:
        note = (
            " (IN-SAMPLE: the shipped verifier was trained on it)" if summary["in_sample"] else ""
        )
        print(
            f"{summary['file']}{note}: pairs {summary['pairs']}: hits {summary['hits']}, "
            f"wrong hits {summary['wrong_hits']}, precision {summary['precision']:.3f}, recall "
            f"{summary['recall']:.3f} ({summary['unjudged_hits']} hits on questions the "
            "labels say nothing of, as to the query, left out)"
        )
        for row in summary["settings"]:
            verdict = "within" if row["within"] else "ABOVE"
            print(
                f"  max wrong-hit rate {row['max_wrong_hit_rate']:.2f}: hits {row['hits']}, "
                f"wrong {row['wrong_hits']} ({row['wrong_hit_rate']:.3f}, {verdict} the "
                f"setting), recall {row['recall']:.3f}"
            )
    return 0


def _train_router(args: argparse.Namespace) -> int:
    from areion.cache.embedding import MiniLMEmbedder
    from areion.routing.data import load_outcomes
    from areion.routing.learned import embed_prompts, train_router

    table = load_outcomes(args.data)
    candidates = _candidates(args.candidates)
    embedder = MiniLMEmbedder()
    try:
        router = train_router(table, embed_prompts(table.prompts, embedder), candidates=candidates)
    finally:
        embedder.close()
    out = Path(args.out)
    if out.parent and not out.parent.is_dir():
        raise ConfigError(f"--out: no folder {out.parent}")
    router.save(out)
    accuracy = router.metadata["accuracy"]
    print(
        f"router for {', '.join(router.candidates)} trained on {router.metadata['prompts']} "
        f"prompts -> {out} ({out.stat().st_size // 1024} KiB)"
    )
    print("training accuracy: " + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items()))
    return 0


def _candidates(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) < 2:
        raise ConfigError(f"--candidates needs at least two models, got {text!r}")
    return names


def _eval_routing(args: argparse.Namespace) -> int:
    import json

    from areion.routing.data import load_outcomes
    from areion.routing.evaluate import evaluate_routing, plot_curve

    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError(
                "--plot needs matplotlib, which is not installed: pip install matplotlib"
            )
    if args.split is None and not args.train:
        raise ConfigError(
            "eval routing needs --train (data to fit on), or --split to hold out part of --data"
        )
    if args.split is not None and args.train:
        raise ConfigError("--split holds out part of --data to fit on the rest: drop --train")
    if args.split is not None and args.plot:
        raise ConfigError("--plot draws one fit: drop --split")
    data = load_outcomes(args.data)
    embedder = None
    if args.policy == "learned":
        from areion.cache.embedding import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    try:
        if args.split is not None:
            from areion.routing.heldout import Targets, evaluate_heldout

            targets = Targets(
                quality=args.target_quality,
                max_cost=args.max_cost,
                max_strong_calls=args.max_strong_calls,
            )
            heldout = evaluate_heldout(
                data,
                mode=args.split,
                count=args.splits,
                seed=args.seed,
                policy=args.policy,
                targets=targets,
                candidates=_candidates(args.candidates),
                embedder=embedder,
            )
            print(json.dumps(heldout.to_json()) if args.json else heldout.text())
            return 0
        report = evaluate_routing(
            load_outcomes(args.train),
            data,
            policy=args.policy,
            target_quality=args.target_quality,
            candidates=_candidates(args.candidates),
            data_candidates=_candidates(args.data_candidates),
            embedder=embedder,
        )
    finally:
        if embedder is not None:
            embedder.close()
    if args.plot:
        plot_curve(report, args.plot)
    print(json.dumps(report.to_json()) if args.json else report.text())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="areion", description="Areion: the agent runtime environment."
    )
    parser.add_argument("--version", action="version", version=f"areion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--config", help=f"config file (default: ./{_DEFAULT_CONFIG} if present)")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the port (above 1: needs PostgreSQL and Redis configured)",
    )
    serve.add_argument(
        "--allow-open",
        action="store_true",
        help="serve without authentication on an address beyond loopback",
    )
    serve.add_argument(
        "--log-level",
        default=os.environ.get("AREION_LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug"],
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="the request lines' format (default: server.log_format, text); "
        "server.access_log: false turns them off",
    )
    serve.set_defaults(run=_serve)

    sim = commands.add_parser("sim", help="run the simulated model server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9001)
    sim.add_argument("--profiles", help="YAML file of extra model profiles")
    sim.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every simulated delay (0.01 = 100x faster)",
    )
    sim.add_argument("--seed", type=int, help="seed for fault injection")
    sim.set_defaults(run=_sim)

    keys = commands.add_parser("keys", help="create, list and revoke API keys in the store")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; it is printed once, never stored")
    create.add_argument("--tenant", required=True, help="the tenant its calls belong to")
    create.add_argument("--name", help="its label in limits and errors (default: its id)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens (prompt + output) per minute")
    create.add_argument("--priority", help="its default lane: critical, interactive, batch")
    create.add_argument("--models", help="comma-separated models it may use (default: all)")
    listing = actions.add_parser("list", help="the keys (never the keys themselves)")
    listing.add_argument("--tenant", help="only this tenant's")
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key", metavar="NAME_OR_ID")
    for action in (create, listing, revoke):
        action.add_argument("--config", help=f"config file (default: ./{_DEFAULT_CONFIG})")
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(run=_keys)

    report = commands.add_parser(
        "report", help="spend by tenant, model and agent, cost per task, cache savings, latency"
    )
    report.add_argument("--config", help=f"config file (default: {_DEFAULT_CONFIG} if present)")
    report.add_argument(
        "--since", help="start: 7d, 12h, 30m ago, Unix seconds or ISO 8601 (default: 30d)"
    )
    report.add_argument("--until", help="end, in the same forms (default: now)")
    report.add_argument("--tenant", help="only this tenant's spend")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument(
        "--plot", metavar="FILE.png", help="also draw spend over time and cost per task"
    )
    report.set_defaults(run=_report)

    experiments = commands.add_parser("experiments", help="A/B experiments' figures and verdicts")
    verbs = experiments.add_subparsers(dest="action", required=True)
    shown = verbs.add_parser("report", help="an experiment's variants, intervals and verdict")
    shown.add_argument("name", help="the experiment (its name in the config)")
    shown.add_argument("--config", help=f"config file (default: {_DEFAULT_CONFIG} if present)")
    shown.add_argument("--json", action="store_true", help="print the report as JSON")
    shown.add_argument(
        "--plot", metavar="FILE.png", help="the running estimate and interval over time"
    )
    shown.set_defaults(run=_experiments_report)

    from areion.jobs.cli import add_jobs_parser

    add_jobs_parser(
        commands, config=_config, config_help=f"config file (default: ./{_DEFAULT_CONFIG})"
    )

    evaluate = commands.add_parser("eval", help="measure a component on labelled data")
    targets = evaluate.add_subparsers(dest="target", required=True)
    cache = targets.add_parser(
        "cache", help="semantic cache precision and recall on question pairs"
    )
    cache.add_argument(
        "--pairs",
        required=True,
        nargs="+",
        help="CSV(s) with question1,question2,is_duplicate columns, each measured alone",
    )
    cache.add_argument(
        "--rates",
        type=float,
        nargs="+",
        help="also measure these max wrong-hit rates: the observed wrong-hit rate of each,"
        " beside the setting (a rate the calibration cannot vouch for serves nothing)",
    )
    cache.add_argument(
        "--max-wrong-hit-rate",
        type=float,
        help="the setting to measure (default: cache.semantic.max_wrong_hit_rate of the "
        "config, else the verifier's default)",
    )
    cache.add_argument("--config", help=f"config file (default: ./{_DEFAULT_CONFIG} if present)")
    cache.add_argument("--json", action="store_true", help="print one JSON object")
    cache.set_defaults(run=_eval_cache)

    routing = targets.add_parser(
        "routing", help="replay a routing policy against recorded model outcomes"
    )
    routing.add_argument(
        "--train", action="append", help="outcome CSV file or folder to fit on (or --split)"
    )
    routing.add_argument(
        "--data", required=True, action="append", help="outcome CSV file or folder to replay"
    )
    routing.add_argument("--target-quality", type=float, default=0.95)
    routing.add_argument("--policy", choices=["learned", "cascade"], default="learned")
    routing.add_argument(
        "--candidates",
        help="comma-separated models (default: all; cascade: first,second,...,strongest)",
    )
    routing.add_argument(
        "--data-candidates",
        help="learned: the models of --data that stand for --candidates, in the same order "
        "(data recorded under other names)",
    )
    routing.add_argument(
        "--split",
        choices=["random", "groups", "leave-one-out"],
        help="instead of --train: fit on part of --data, replay the rest, per split: random "
        "(30%% of each task's prompts held out), groups (30%% of the tasks/subjects held "
        "out whole), leave-one-out (each task held out once: out of domain)",
    )
    routing.add_argument("--splits", type=int, default=10, help="random/groups splits (10)")
    routing.add_argument("--seed", type=int, default=0, help="seed of the first split")
    routing.add_argument(
        "--max-cost", type=float, help="--split target: most cost, as a share of the strong model's"
    )
    routing.add_argument(
        "--max-strong-calls",
        type=float,
        help="--split target: most calls to the strong (most accurate) model, as a share",
    )
    routing.add_argument("--json", action="store_true", help="print one JSON object")
    routing.add_argument("--plot", help="write the cost/quality curve to this PNG file")
    routing.set_defaults(run=_eval_routing)

    train = commands.add_parser("train", help="train a component on recorded data")
    trainables = train.add_subparsers(dest="target", required=True)
    router = trainables.add_parser("router", help="the learned routing policy's router file")
    router.add_argument(
        "--data", required=True, action="append", help="outcome CSV file or folder (repeatable)"
    )
    router.add_argument("--out", required=True, help="router file to write (JSON)")
    router.add_argument("--candidates", help="comma-separated models (default: every model)")
    router.set_defaults(run=_train_router)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args))
    except (ConfigError, RequestError) as error:
        print(f"areion: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
