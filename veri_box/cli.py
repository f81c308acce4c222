"""The `veri-box` command: serve the API, manage API keys."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from .settings import Settings, default_data_dir, describe

HELP = dict((name, (default, text)) for name, default, text in describe())


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    default, text = HELP["data_dir"]
    parser.add_argument("--data-dir", type=Path, default=None, help=text)


def _with_default(text: str, default: object) -> str:
    """A setting's help with its default, unless there is none to show (an empty string means
    "off", and the help says so) or the help already names it in words. argparse formats help
    with %: a literal one is doubled."""
    shown = "" if default in (None, "") or "(default: " in text else f" (default: {default})"
    return (text + shown).replace("%", "%%")


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
        serve.add_argument(flag, type=kind, default=None, help=_with_default(text, default))
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
    create.add_argument(
        "--admin",
        action="store_true",
        help="Make an admin key (keys, settings, quotas, any object); without it a member key, "
        "except the box's first key, which is always an admin.",
    )
    _add_data_dir(create)
    create.set_defaults(func=cmd_keys_create)
    list_ = key_commands.add_parser(
        "list",
        help="List live keys (never the secrets).",
        description="List live API keys: id, name, role, prefix, created, last used.",
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
    demo.add_argument(
        "--url",
        default=None,
        help="The running box (default: the URL the box serving --data-dir recorded there, else http://127.0.0.1:8000).",
    )
    demo.add_argument(
        "--api-key",
        default=None,
        help="An API key of that box (default: the demo's own key in --data-dir, made there on the first run).",
    )
    demo.add_argument(
        "--video",
        action="store_true",
        help="Train a tiny CogVideoX pipeline on clips of moving squares instead (sft_video_gen, about a minute).",
    )
    _add_data_dir(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _store(args: argparse.Namespace, existing: bool = True):
    """The database of --data-dir. Only `keys create` may make one (keys before the first
    `serve`): listing or revoking in the wrong directory must not leave a stray database there."""
    from . import paths
    from .store import Store

    data_dir = Path(args.data_dir or default_data_dir())
    db = paths.db(data_dir)
    if existing and not db.is_file():
        raise SystemExit(
            f"veri-box: there is no box in {data_dir} (no {db.name}); pass --data-dir with the data directory "
            "`veri-box serve` printed after `data:`."
        )
    return Store(db)


def cmd_keys_create(args: argparse.Namespace) -> int:
    store = _store(args, existing=False)
    # A box without an admin (a new one) gets one: otherwise nobody could manage keys or settings.
    admin = args.admin or store.count_admin_keys() == 0
    _, key = store.create_api_key(args.name, "admin" if admin else "member")
    print(key)
    print(f"Created an {'admin' if admin else 'member'} key.", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    rows, _ = _store(args).list_api_keys(limit=10_000)
    if not rows:
        print("No API keys. Create one with: veri-box keys create --name NAME", file=sys.stderr)
        return 0
    print(f"{'ID':<18}{'NAME':<24}{'ROLE':<8}{'PREFIX':<10}{'CREATED':<26}LAST USED")
    for r in rows:
        print(
            f"{r['id']:<18}{r['name'][:23]:<24}{r['role']:<8}{r['key_prefix']:<10}{r['created_at']:<26}"
            f"{r['last_used_at'] or '-'}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    # The command line may revoke any key, the last admin's too (the API refuses that): whoever
    # runs it on the box can make a new admin at once, which is the way back in.
    store = _store(args)
    if not store.revoke_api_key(args.id):
        print(f"No live API key with id {args.id}.", file=sys.stderr)
        return 1
    print(f"Revoked {args.id}.", file=sys.stderr)
    if store.count_admin_keys() == 0:
        print("The box has no admin key now; make one: veri-box keys create --admin --name NAME", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import httpx

    from . import demo

    data_dir = Path(args.data_dir or default_data_dir())
    url = (args.url or demo.recorded_url(data_dir) or demo.DEFAULT_URL).rstrip("/")
    try:
        demo.check_box(url)
        key = args.api_key or demo.demo_key(data_dir)
        return demo.run(url, key, video=args.video)
    except demo.KeyRefused as err:
        if args.api_key:
            hint = "check --api-key, or leave it out to use the demo's own key of --data-dir"
        else:
            hint = (
                f"the box at {url} does not serve {data_dir}: pass --data-dir with the data directory that box's "
                "`veri-box serve` printed, or --url of the box that serves this one"
            )
        print(f"veri-box demo: {err}; {hint}.", file=sys.stderr)
        return 1
    except (demo.DemoError, OSError) as err:
        print(f"veri-box demo: {err}", file=sys.stderr)
        return 1
    except httpx.HTTPError as err:
        where = "" if args.url else f" (pass --url if it listens elsewhere; --data-dir is {data_dir})"
        print(
            f"veri-box demo: cannot reach a box at {url} ({err}); start one with `veri-box serve`{where}.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


def _first_run(key: str, settings: Settings) -> str:
    """The first start's message: the key, alone on its line to copy, and what to do with it."""
    url = settings.base_url
    data = "" if settings.data_dir == default_data_dir() else f" --data-dir {settings.data_dir}"
    return (
        "\nThis box had no API keys, so one was created. It is shown only this once:\n\n"
        f"    {key}\n\n"
        "Next steps:\n"
        f"  - Train a tiny model on this box's CPU and watch its reward climb:  veri-box demo{data}\n"
        f"  - The dashboard (log in with the key):  {url}\n"
        "  - The SDK (pip install veri-sdk):\n"
        "        from veri_sdk import Client\n"
        f'        client = Client(api_key="{key[:7]}...", base_url="{url}")\n'
        f"  - curl: -H 'Authorization: Bearer {key[:7]}...' {url}/v1/training_jobs\n"
        "This first key is an admin. Make member keys for your lab with `veri-box keys create --name NAME`\n"
        "(or on the dashboard's Settings page), and more admins with `--admin`.\n"
    )


def _quiet_scheduler() -> None:
    """APScheduler logs every run of the runner's one-second tick at INFO (and, on a busy box,
    each skipped or late run as a warning): at the default level that buried the first-run key
    and everything else worth reading. Its errors still show."""
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import demo, sandbox
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
    _quiet_scheduler()
    demo.record_url(settings.data_dir, settings.base_url)
    store = box.store
    if store.count_api_keys() == 0:
        _, key = store.create_api_key("first key", "admin")
        print(_first_run(key, settings), flush=True)
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
