"""The ``aim`` command: ``aim serve`` and the model / projector tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommands implemented by other modules' ``main(argv) -> int``; imported only when used.
TOOLS = {
    "build-tiny": (
        "projector.models.tiny",
        "build a tiny random model (LLaVA, or --model-type) into a directory",
    ),
    "build-mini": (
        "projector.models.aim_mini.build",
        "build aim-mini from the installed pretrained packages",
    ),
    "train-connector": ("projector.models.aim_mini.train_connector", "train aim-mini's vision connector"),
    "train": ("projector.training.cli", "train an AIM projector on a frozen backbone"),
    "bank": ("server.bank_cli", "list, export or import the demonstration bank"),
    "eval": ("projector.evaluation.cli", "few-shot evaluation: zero-shot, raw ICL, AIM"),
}


def serve(argv: list[str]) -> int:
    from pydantic import ValidationError

    from server.settings import Settings

    parser = argparse.ArgumentParser(
        prog="aim serve", description="Start the HTTP server (settings: AIM_* env)."
    )
    parser.add_argument("--host", help="interface to listen on (AIM_HOST)")
    parser.add_argument("--port", type=int, help="port (AIM_PORT)")
    parser.add_argument("--model", help="model: tiny, aim-mini, a directory or a hub id (AIM_MODEL)")
    parser.add_argument("--projector", help="projector checkpoint directory (AIM_PROJECTOR)")
    parser.add_argument("--engine", choices=["auto", "vllm", "transformers"], help="engine (AIM_ENGINE)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        # Messages only: pydantic's own text repeats the raw input, which may hold API keys.
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"aim serve: {where}: {error['msg']}", file=sys.stderr)
        return 2

    import uvicorn

    from server.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from server.app import ProjectorRequiredError, choose_projector
    from server.auth import ApiKeyConfigError

    try:
        choose_projector(settings)  # before anything loads: no trained projector is refused at once
        app = create_app(settings)
    except (ApiKeyConfigError, ProjectorRequiredError) as exc:
        print(f"aim serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"serve": "start the HTTP server", **{k: v[1] for k, v in TOOLS.items()}}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: aim COMMAND [ARGS]\n\ncommands:")
        for name, help_ in commands.items():
            print(f"  {name:16} {help_}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        return serve(rest)
    module = importlib.import_module(TOOLS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
