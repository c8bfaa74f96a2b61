"""CLI commands of the online service: `twotower serve` and `twotower serve-prepare` (registered by cli_model)."""

from __future__ import annotations

import argparse
import os


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeSettings

    overrides = {k: v for k, v in (("artifacts", args.artifacts), ("host", args.host), ("port", args.port),
                                   ("workers", args.workers), ("store_url", args.store)) if v is not None}  # fmt: skip
    from pydantic import ValidationError

    from .errors import ConfigError

    try:
        settings = ServeSettings(**overrides)  # refuses an empty/default admin token outside dev mode
    except ValidationError as exc:  # the CLI reports config errors without a traceback (exit 2)
        raise ConfigError(str(exc)) from exc
    if not (settings.artifacts / "index").is_dir():
        raise SystemExit(f"error: {settings.artifacts} is not an artifact root; run `twotower serve-prepare` first")
    from .serve.health import check_serving_store

    check_serving_store(settings.resolved_store_url())  # missing/mistyped store: one error line, exit 2
    import uvicorn

    common = dict(host=settings.host, port=settings.port, access_log=False, timeout_graceful_shutdown=30)
    workers = settings.resolved_workers()
    if workers == 1:
        from .serve.app import create_app

        uvicorn.run(create_app(settings), **common)
        return 0
    # Several processes: each worker builds its app from the environment, so pass the overrides through it.
    for key, value in overrides.items():
        os.environ[f"TWOTOWER_{key.upper()}"] = str(value)
    uvicorn.run("twotower.serve.app:app_from_env", factory=True, workers=workers, **common)
    return 0


def cmd_serve_prepare(args: argparse.Namespace) -> int:
    from .cli_model import index_config_from
    from .errors import ArtifactError
    from .jobs.serving import build_artifacts

    try:
        res = build_artifacts(args.run, args.artifacts, index_config=index_config_from(args), store_url=args.store,
                              recall_floor=args.recall_floor, progress=not args.no_progress)  # fmt: skip
    except ArtifactError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(
        f"artifact root {res['root']}: model {res['model_version']}, index {res['index_version']} "
        f"(recall@100 {res['recall']['recall@100']:.4f}), {res['states_written']:,} user states written "
        f"-> {res['store_url']}"
    )
    return 0


def add_serve_commands(sub) -> None:
    s = sub.add_parser("serve", help="online retrieval service (FastAPI/uvicorn) over an artifact root")
    s.add_argument("--artifacts", help="artifact root (default: TWOTOWER_ARTIFACTS or ./artifacts)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument(
        "--workers",
        type=int,
        help="worker processes, each with its own copy of the bundle (default: one per core); "
        "a reload reaches all of them",
    )
    s.add_argument("--store", help="feature store URL (default sqlite:///ARTIFACTS/states.db)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("serve-prepare", help="assemble an artifact root from a hybrid run (export, states, index)")
    s.add_argument("--run", required=True, help="run directory of a hybrid model (model.online_head = true)")
    s.add_argument("--artifacts", required=True, help="artifact root to create or add a version to")
    s.add_argument("--store", help="feature store URL (default sqlite:///ARTIFACTS/states.db)")
    from .cli_model import add_index_knobs

    add_index_knobs(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_serve_prepare)
