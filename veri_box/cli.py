"""The `veri-box` command: serve the API, manage API keys."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .settings import Settings, default_data_dir, describe

HELP = dict((name, (default, text)) for name, default, text in describe())


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    default, text = HELP["data_dir"]
    parser.add_argument("--data-dir", type=Path, default=None, help=text)


def _settings(args: argparse.Namespace) -> Settings:
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name, None) is not None}
    return Settings(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veri-box", description="The Veri Studio training API on your own machines.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="Run the API, dashboard and scheduler.",
        description="Run the API, dashboard and scheduler in one process.",
    )
    for name, (default, text) in HELP.items():
        if name == "data_dir":
            _add_data_dir(serve)
            continue
        flag = "--" + name.replace("_", "-")
        kind = type(default) if default is not None else str
        shown = "" if default is None else f" (default: {default})"
        serve.add_argument(flag, type=kind, default=None, help=text + shown)
    serve.set_defaults(func=cmd_serve)

    keys = commands.add_parser(
        "keys", help="Create, list and revoke API keys.", description="Create, list and revoke API keys."
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser(
        "create",
        help="Create a key and print it (shown only once).",
        description="Create an API key and print it alone on stdout; it is shown only once.",
    )
    create.add_argument("--name", required=True, help="A label for the key, e.g. who or what uses it.")
    _add_data_dir(create)
    create.set_defaults(func=cmd_keys_create)
    list_ = key_commands.add_parser(
        "list",
        help="List live keys (never the secrets).",
        description="List live API keys: id, name, prefix, created, last used.",
    )
    _add_data_dir(list_)
    list_.set_defaults(func=cmd_keys_list)
    revoke = key_commands.add_parser(
        "revoke",
        help="Revoke a key by id; it stops working at once.",
        description="Revoke an API key by id; it stops working at once.",
    )
    revoke.add_argument("id", help="The key's id, as `veri-box keys list` shows it.")
    _add_data_dir(revoke)
    revoke.set_defaults(func=cmd_keys_revoke)

    demo = commands.add_parser(
        "demo",
        help="Train a tiny model on a running box's cpu pool and watch its reward climb.",
        description="Upload a dataset and a reward function to a running box and run a 30-step LoRA GRPO job "
        "of the built-in tiny model (veri-box/tiny-lm) on its cpu pool, printing the reward as it climbs "
        "(about a minute on a 2-core machine).",
    )
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="The running box (default: %(default)s).")
    demo.add_argument(
        "--api-key", default=None, help="An API key of that box (default: create one named 'demo' in --data-dir)."
    )
    demo.add_argument(
        "--video",
        action="store_true",
        help="Train a tiny CogVideoX pipeline on clips of moving squares instead (sft_video_gen, about a minute).",
    )
    _add_data_dir(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _store(args: argparse.Namespace):
    from . import paths
    from .store import Store

    return Store(paths.db(Path(args.data_dir or default_data_dir())))


def cmd_keys_create(args: argparse.Namespace) -> int:
    _, key = _store(args).create_api_key(args.name)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    rows, _ = _store(args).list_api_keys(limit=10_000)
    if not rows:
        print("No API keys. Create one with: veri-box keys create --name NAME", file=sys.stderr)
        return 0
    print(f"{'ID':<18}{'NAME':<24}{'PREFIX':<10}{'CREATED':<26}LAST USED")
    for r in rows:
        print(f"{r['id']:<18}{r['name'][:23]:<24}{r['key_prefix']:<10}{r['created_at']:<26}{r['last_used_at'] or '-'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke_api_key(args.id):
        print(f"No live API key with id {args.id}.", file=sys.stderr)
        return 1
    print(f"Revoked {args.id}.", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import httpx

    from .demo import DemoError, run

    key = args.api_key or _store(args).create_api_key("demo")[1]
    try:
        return run(args.url.rstrip("/"), key, video=args.video)
    except (DemoError, OSError) as err:
        print(f"veri-box demo: {err}", file=sys.stderr)
        return 1
    except httpx.HTTPError as err:
        print(
            f"veri-box demo: cannot reach a box at {args.url} ({err}); start one with `veri-box serve`.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import sandbox
    from .app import Box, create_app
    from .inventory import InventoryError
    from .settings import SettingsError

    settings = _settings(args)
    try:
        mode = sandbox.resolve(settings.sandbox)  # before the box opens: --sandbox bwrap must work here
        box = Box.open(settings)
    except (InventoryError, SettingsError, sandbox.SandboxError) as err:
        print(f"veri-box: {err}", file=sys.stderr)
        return 2
    app = create_app(box)
    store = box.store
    if store.count_api_keys() == 0:
        _, key = store.create_api_key("first key")
        print(
            "\nThis box had no API keys, so one was created. It is shown only this once:\n\n"
            f"    {key}\n\n"
            f"Use it as 'Authorization: Bearer {key[:7]}...' or "
            f'Client(api_key=..., base_url="{settings.base_url}").\n'
            "Make more with `veri-box keys create --name NAME`.\n",
            flush=True,
        )
    print(
        f"veri-box {settings.base_url}  data: {settings.data_dir}  devices: {box.inventory.describe()}  "
        f"sandbox: {mode}",
        flush=True,
    )
    if mode == sandbox.Mode.NONE:
        why = sandbox.works() if settings.sandbox == "auto" else "--sandbox none"
        print(f"\nWARNING: {sandbox.WARNING} ({why}).\n", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
