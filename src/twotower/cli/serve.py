"""``twotower serve``, ``serve-prepare`` and ``refresh-states``: the online service and the jobs that feed it."""

from __future__ import annotations

import argparse
import os

from ..errors import ArtifactError, ConfigError, UsageError
from .index import add_index_knobs, index_config_from


def declare_serve(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower serve``; each unset one falls back to its TWOTOWER_* setting."""
    p.add_argument("--artifacts", help="artifact root (default: TWOTOWER_ARTIFACTS or ./artifacts)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes, each with its own copy of the bundle (default: one per core); "
        "a reload reaches all of them",
    )
    p.add_argument("--store", help="feature store URL (default sqlite:///ARTIFACTS/states.db)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the settings, the artifact root and the store, then run uvicorn (one process or several)."""
    from pydantic import ValidationError

    from ..serve import ServeSettings

    flags = {"artifacts": args.artifacts, "host": args.host, "port": args.port, "workers": args.workers}
    overrides = {k: v for k, v in {**flags, "store_url": args.store}.items() if v is not None}
    try:
        settings = ServeSettings(**overrides)  # refuses an empty/default admin token outside dev mode
    except ValidationError as exc:  # pydantic's error into ours: one line, exit 2 (it never echoes secrets)
        raise ConfigError(str(exc)) from exc
    if not (settings.artifacts / "index").is_dir():
        raise ArtifactError(f"{settings.artifacts} is not an artifact root; run `twotower serve-prepare` first")
    from ..serve.health import check_serving_store

    check_serving_store(settings.resolved_store_url())  # missing/mistyped store: one error line, exit 2
    import uvicorn

    common = dict(host=settings.host, port=settings.port, access_log=False, timeout_graceful_shutdown=30)
    workers = settings.resolved_workers()
    if workers == 1:
        from ..serve.app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    # Several processes: each worker builds its app from the environment, so pass the overrides through it.
    for key, value in overrides.items():
        os.environ[f"TWOTOWER_{key.upper()}"] = str(value)
    from ..serve.metrics import multiprocess_dir, remove_multiprocess_dir
    from ..serve.workers import balanced, run_workers

    metrics_dir = multiprocess_dir()  # before the workers start: one /metrics scrape adds up all of them
    try:
        if not balanced():  # no SO_REUSEPORT balancing here: uvicorn's shared socket
            uvicorn.run("twotower.serve.app:app_from_env", factory=True, workers=workers, **common)
            return 0
        host, port = common.pop("host"), common.pop("port")
        try:
            run_workers("twotower.serve.app:app_from_env", workers, host, port, **common)
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host}:{port} ({exc}); pick a free port with --port") from exc
        return 0
    finally:
        remove_multiprocess_dir(metrics_dir)


def declare_serve_prepare(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower serve-prepare``: the run, the root, the store, and the index flags."""
    p.add_argument(
        "--run", required=True, help="run directory of a trained model (hybrid: fresh events; unsplit: cached vectors)"
    )
    p.add_argument("--artifacts", required=True, help="artifact root to create or add a version to")
    p.add_argument("--store", help="feature store URL (default sqlite:///ARTIFACTS/states.db)")
    add_index_knobs(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_serve_prepare)


def cmd_serve_prepare(args: argparse.Namespace) -> int:
    """Export the items, write the user states, build and publish the index under one artifact root."""
    from ..jobs.serving import build_artifacts

    res = build_artifacts(
        args.run,
        args.artifacts,
        index_config=index_config_from(args),
        store_url=args.store,
        recall_floor=args.recall_floor,
        progress=not args.no_progress,
    )
    print(
        f"artifact root {res['root']}: model {res['model_version']}, index {res['index_version']} "
        f"(recall@100 {res['recall']['recall@100']:.4f}), {res['states_written']:,} user states written "
        f"-> {res['store_url']}"
    )
    return 0


def declare_publish_ranker(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower publish-ranker``."""
    p.add_argument("--ranker", required=True, help="a ranker directory (`twotower train-ranker --out`)")
    p.add_argument("--artifacts", required=True, help="the artifact root it will serve from")
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="publish a ranker trained against another retriever than the served model (recorded; the service "
        "then serves it)",
    )
    p.set_defaults(func=cmd_publish_ranker)


def cmd_publish_ranker(args: argparse.Namespace) -> int:
    """Copy the ranker into ROOT/rankers/ and make it CURRENT; a running service takes it at /admin/reload."""
    from ..jobs.serving import publish_ranker

    r = publish_ranker(args.ranker, args.artifacts, allow_mismatch=args.allow_mismatch)
    print(
        f"ranker {r['ranker_version']} (trained for model {r['retriever_version']}, serving {r['model_version']}) "
        f"-> {r['path']}; a running service takes it at POST /admin/reload"
    )
    return 0


def declare_refresh_states(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twotower refresh-states``."""
    p.add_argument("--run", required=True, help="run directory (hybrid: the encoder states; unsplit: the user vectors)")
    p.add_argument("--store", required=True, help="sqlite:///states.db | redis://host:6379/0")
    p.add_argument("--as-of", help="history cut-off: unix seconds or ISO date (default: after the last event)")
    p.add_argument("--since", help="only users whose last event is at or after this time")
    p.add_argument("--data", help="dataset directory (default: the run's)")
    p.add_argument("--batch", type=int, default=512, help="users per encoder batch and store transaction")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "int8"], help="stored precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_refresh_states)


def cmd_refresh_states(args: argparse.Namespace) -> int:
    """Encode the users whose history changed and write their states into the feature store."""
    if args.batch < 1:  # before the store is opened (and created)
        raise ConfigError(f"--batch must be >= 1 users per encoder batch, got {args.batch}; e.g. --batch 512")
    as_of, since = timestamp(args.as_of, "--as-of"), timestamp(args.since, "--since")
    from ..jobs.refresh import refresh_states
    from ..store import StoreConfig, open_store
    from ..train.distributed import shutdown

    store = open_store(args.store, StoreConfig(dtype=args.dtype))
    try:
        r = refresh_states(
            args.run,
            store,
            as_of=as_of,
            since=since,
            data_dir=args.data,
            batch=args.batch,
            device=args.device,
            progress=not args.no_progress,
        )
    finally:
        store.close()
        shutdown()  # under torchrun: after every rank's writes
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 reports for all
        return 0
    print(
        f"as of {r.as_of}: {r.stale:,} stale of {r.users_with_history:,} users with history; encoded "
        f"{r.encoded:,} in {r.batches} batches, {r.seconds:.1f} s ({r.users_per_s:,.0f} users/s); "
        f"model {r.model_version} -> {args.store}"
    )
    return 0


def timestamp(text: str | None, flag: str) -> int | None:
    """Unix seconds or an ISO-8601 date/time (UTC when it has no zone) -> int seconds; None stays None."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        from datetime import datetime, timezone

        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise UsageError(
                f"{flag}: cannot read time {text!r}: give unix seconds or ISO-8601 like 2000-12-31"
            ) from exc
        return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp())
