"""Development subcommands of ``portrait`` (demo, infra, bench), registered by entry point.

The product's CLI loads every ``portrait.commands`` entry point and calls it with its subparsers,
so these commands exist only where the portrait-dev distribution is installed (never in the
worker image).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stream.settings import Settings


def cmd_infra(settings: Settings, args: argparse.Namespace) -> int:
    from portrait_dev import infra

    if args.action == "up":
        state = infra.up(settings)
        print(json.dumps(state, indent=2))
    elif args.action == "down":
        print("stopped" if infra.down(settings) else "nothing was running")
    else:
        print(json.dumps(infra.status(settings), indent=2, default=str))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from portrait_dev.demo import run_demo

    return run_demo(users=args.users, events=args.events, seed=args.seed)


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from portrait_dev.bench import run

    return run(args)


def register(sub: Any) -> None:
    """Add the development subcommands to the ``portrait`` parser's subparsers."""
    from portrait_dev.bench import add_arguments as add_bench_arguments

    p = sub.add_parser("infra", help="embedded broker + Valkey in the background")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_infra)

    p = sub.add_parser("bench", help="throughput, latency and memory benchmark (results/)")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="end-to-end demo on embedded infrastructure")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--events", type=int, default=50000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)
