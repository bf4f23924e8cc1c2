"""The ``portrait`` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stream.settings import ConfigError, Settings


def _store(settings: Settings) -> Any:
    from stream.storage.store import Store

    return Store.from_settings(settings)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from stream.app import run_worker

    run_worker(settings)
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stream.kafka import replay

    mapping = replay.parse_mapping(args.map) if args.map else None
    source = replay.read_events(Path(args.file), fmt=args.format, mapping=mapping, default_type=args.type, tz=args.tz)
    report = asyncio.run(replay.replay(settings, source, progress=not args.quiet, rate=args.rate))
    print(report)
    return 0


def cmd_profile(settings: Settings, args: argparse.Namespace) -> int:
    from stream.tagging.definitions import load_catalogue

    async def fetch() -> dict[str, str]:
        store = _store(settings)
        try:
            profile: dict[str, str] = await store.profile(args.user_id)
            return profile
        finally:
            await store.close()

    profile = asyncio.run(fetch())
    if not profile:
        print(f"no profile for {args.user_id!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(profile, indent=2, sort_keys=True))
        return 0
    print(format_profile(args.user_id, profile, load_catalogue(settings.tags_file)))
    return 0


def format_profile(user_id: str, profile: dict[str, str], catalogue: Any) -> str:
    lines = [f"profile {user_id}"]
    for level in ("L1", "L2", "L3"):
        rows = [
            (t.name, profile[t.name], t.unit or "") for t in catalogue.tags if t.level == level and t.name in profile
        ]
        if rows:
            lines.append(f"  [{level}]")
            lines.extend(f"    {name:<22} {value} {unit}".rstrip() for name, value, unit in rows)
    meta = {k: v for k, v in profile.items() if k.startswith("_")}
    if meta:
        lines.append("  [meta] " + "  ".join(f"{k}={v}" for k, v in sorted(meta.items())))
    return "\n".join(lines)


def cmd_tags(settings: Settings, args: argparse.Namespace) -> int:
    from stream.tagging.definitions import load_catalogue

    catalogue = load_catalogue(settings.tags_file)
    print(f"{'tag':<22} {'level':<5} {'category':<13} {'type':<6} {'unit':<7} {'aud':<3} description")
    for t in sorted(catalogue.tags, key=lambda t: (t.level, t.category, t.name)):
        aud = "yes" if t.audience else ""
        print(f"{t.name:<22} {t.level:<5} {t.category:<13} {t.type:<6} {t.unit or '':<7} {aud:<3} {t.description}")
    return 0


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from stream.kafka.dlq import read, resubmit

    if args.action == "tail":
        for letter in asyncio.run(read(settings, idle_s=args.idle)):
            if args.reason and letter.reason != args.reason:
                continue
            src = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
            print(f"{letter.reason:<18} {src:<36} {letter.error.splitlines()[0][:100]}")
        return 0
    count = asyncio.run(resubmit(settings, reason=args.reason, idle_s=args.idle))
    print(f"re-submitted {count} dead letters to their source topics")
    return 0


def cmd_rfm(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> int:
        store = _store(settings)
        try:
            clock = await store.clock() if settings.clock == "event" else None
            version: int = await store.refresh_rfm(clock if clock is not None else time.time())
            if args.reevaluate:
                await store.mark_all_due()
            return version
        finally:
            await store.close()

    print(f"rfm thresholds version {asyncio.run(run())}")
    return 0


def cmd_clock(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> float | None:
        store = _store(settings)
        try:
            if args.set is not None:
                await store.advance_clock(args.set)
            value: float | None = await store.clock()
            return value
        finally:
            await store.close()

    print(asyncio.run(run()))
    return 0


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> dict[str, int]:
        store = _store(settings)
        try:
            stats: dict[str, int] = await store.stats()
            return stats
        finally:
            await store.close()

    print(json.dumps(asyncio.run(run()), indent=2, sort_keys=True))
    return 0


def cmd_triggers(settings: Settings, args: argparse.Namespace) -> int:
    from stream.kafka.triggers_tail import tail

    return asyncio.run(tail(settings, topic=args.topic, follow=args.follow))


def cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    from stream.rules import DeliveryMemory

    async def load() -> Any:
        store = _store(settings)
        try:
            loaded, _, _ = await store.load([args.user_id])
            return loaded[args.user_id].state
        finally:
            await store.close()

    state = asyncio.run(load())
    if state is None:
        print(f"no state for {args.user_id!r}", file=sys.stderr)
        return 1
    memory = DeliveryMemory.from_dict(state.delivery)
    print(f"rule firings for {args.user_id} (newest last; suppressed firings are recorded, not sent)")
    for record in memory.recent:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.at))
        outcome = record.outcome if record.reason is None else f"{record.outcome} ({record.reason})"
        print(
            f"  {when}Z  {record.rule_id} v{record.rule_version}  {record.channel:<6} {outcome:<24} {record.trigger_id}"
        )
    if not memory.recent:
        print("  none")
    print("rule inputs at last evaluation: " + json.dumps(state.rules_prev or {}, sort_keys=True))
    return 0


def cmd_rules(settings: Settings, args: argparse.Namespace) -> int:
    from stream.rules import MODEL_TAGS, load_rules
    from stream.tagging.definitions import load_catalogue

    if args.action == "report":
        return rules_report(settings)
    if args.action == "backtest":
        from stream.offline.backtest import run as run_backtest

        return run_backtest(args)

    known = load_catalogue(settings.tags_file).names | set(MODEL_TAGS)
    rules = load_rules(Path(args.file), known)
    print(f"{args.file}: {len(rules.active)} active rules OK")
    for rule in rules.active:
        print(f"  {rule.id} v{rule.version} -> {rule.action.type} on {rule.channel}")
    return 0


def cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from stream.kafka.replay import read_events
    from stream.offline.evaluation import evaluate_events
    from stream.tagging.definitions import parse_duration

    events = [e for e in read_events(Path(args.file)) if isinstance(e, dict)]
    report = evaluate_events(events, horizon=parse_duration(args.horizon) if args.horizon else None)
    print(report.to_text())
    return 0


def rules_report(settings: Settings) -> int:
    """Firings, suppressions by reason and uplift per rule, from the counters the workers keep."""

    async def run() -> dict[str, int]:
        store = _store(settings)
        try:
            stats: dict[str, int] = await store.stats()
            return stats
        finally:
            await store.close()

    stats = asyncio.run(run())
    rules: dict[str, dict[str, int]] = {}
    for key, n in stats.items():
        kind, _, rest = key.partition(":")
        if kind in ("rule", "effect"):
            rule, _, what = rest.partition(":")
            rules.setdefault(rule, {})[f"{kind}:{what}"] = n
    if not rules:
        print("no rule has fired yet")
        return 0
    print(f"{'rule':<26} {'sent':>6}  suppressed (reason=n)                  treated conv    control conv   uplift")
    for rule, c in sorted(rules.items()):
        reasons = ", ".join(
            f"{k.split(':', 1)[1]}={n}" for k, n in sorted(c.items()) if k.startswith("rule:") and k != "rule:send"
        )

        def rate(group: str, c: dict[str, int] = c) -> tuple[str, float | None]:
            exposed, converted = c.get(f"effect:{group}:exposed", 0), c.get(f"effect:{group}:converted", 0)
            if not exposed:
                return "      n/a", None
            return f"{converted:>4}/{exposed:<4}", converted / exposed

        (t_txt, t), (c_txt, k) = rate("treated"), rate("control")
        uplift = f"{100 * (t - k):+.1f}pp" if t is not None and k is not None else "n/a"
        print(f"{rule:<26} {c.get('rule:send', 0):>6}  {reasons or 'none':<38} {t_txt:>12} {c_txt:>12}   {uplift}")
    print("conversion = an order within the rule's conversion window after the firing (open windows still count)")
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> tuple[dict[str, Any], int]:
        store = _store(settings)
        try:
            status: dict[str, Any] = await store.model_status()
            _, _, version = await store.model_checkpoint()
            return status, version
        finally:
            await store.close()

    status, version = asyncio.run(run())
    if not status:
        print("no model checkpoint published yet")
        return 1
    if args.action == "status":
        c = status["churn"]
        print(f"model checkpoint v{version} (churn model {c['version']}), {c['examples']} resolved examples")
        print(f"  churn progressive ROC AUC {c['auc']}  vs recency-only baseline {c['baseline_auc']}")
        print(f"  log loss {c['log_loss']}  positive rate {c['positive_rate']}  drift alarms {c['drifts']}")
    else:
        for seg in sorted(status["segments"], key=lambda d: -d["share"]):
            print(f"{seg['segment_id']:<5} {seg['share']:6.1%}  {seg['text']}")
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.redacted(), indent=2, sort_keys=True, default=str))
    print(f"config hash: {settings.config_hash()}")
    return 0


def cmd_privacy(settings: Settings, args: argparse.Namespace) -> int:
    from stream.service import privacy

    if args.action == "erase":
        confirmation = asyncio.run(privacy.erase_and_confirm(settings, args.user_id, args.request_id))
        print(confirmation.model_dump_json(indent=2))
    else:
        print(json.dumps(asyncio.run(privacy.export_json(settings, args.user_id)), indent=2, sort_keys=True))
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from stream.contracts.topics import Topics
    from stream.kafka.admin import create_topics

    names = Topics(settings.topic_prefix).all
    create_topics(
        settings.bootstrap_servers(),
        names,
        args.partitions or settings.partitions,
        replication=args.replication,
        client_kwargs=settings.kafka_client_kwargs(),
    )
    for name in names:
        print(name)
    return 0


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from stream.contracts.schemas import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def _add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    from stream.offline.backtest import add_arguments

    add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portrait", description="Real-time user portraits")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run the Faust worker").set_defaults(func=cmd_worker)

    p = sub.add_parser("replay", help="stream a JSONL or CSV file into the input topics")
    p.add_argument("file")
    p.add_argument("--format", choices=["auto", "jsonl", "csv"], default="auto")
    p.add_argument("--map", help="CSV column mapping, e.g. user=user_id,date=ts,amount=amount")
    p.add_argument("--type", help="event type for rows without a type column (e.g. order_paid)")
    p.add_argument("--tz", default="UTC", help="time zone of naive timestamps")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("profile", help="show a user's profile from Redis")
    p.add_argument("user_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)

    sub.add_parser("tags", help="print the tag catalogue").set_defaults(func=cmd_tags)

    p = sub.add_parser("dlq", help="dead letters: tail or re-submit")
    p.add_argument("action", choices=["tail", "replay"])
    p.add_argument("--reason", help="only this reason")
    p.add_argument("--idle", type=float, default=2.0, help="stop after this many idle seconds")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("rfm", help="refresh RFM population thresholds")
    p.add_argument("action", choices=["refresh"])
    p.add_argument("--reevaluate", action="store_true", help="re-evaluate every user now")
    p.set_defaults(func=cmd_rfm)

    p = sub.add_parser("clock", help="show or advance the event-time clock")
    p.add_argument("--set", type=float, help="epoch seconds (only moves forward)")
    p.set_defaults(func=cmd_clock)

    sub.add_parser("stats", help="processing counters").set_defaults(func=cmd_stats)

    p = sub.add_parser("triggers", help="follow the trigger topics like a marketing-automation consumer")
    p.add_argument("action", choices=["tail"])
    p.add_argument("--topic", help="one trigger topic suffix, e.g. triggers.coupon (default: all)")
    p.add_argument("--follow", action="store_true", help="keep waiting for new triggers")
    p.set_defaults(func=cmd_triggers)

    p = sub.add_parser("explain", help="a user's recent rule firings and suppressions with reasons")
    p.add_argument("user_id")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("rules", help="rules: check FILE | report | backtest FILE --data EXPORT")
    rules_sub = p.add_subparsers(dest="action", required=True)
    check = rules_sub.add_parser("check", help="validate a rules file")
    check.add_argument("file")
    check.set_defaults(func=cmd_rules)
    rules_sub.add_parser("report", help="firings, suppressions and uplift per rule").set_defaults(func=cmd_rules)
    backtest = rules_sub.add_parser("backtest", help="replay an export in event time without sending")
    _add_backtest_arguments(backtest)
    backtest.set_defaults(func=cmd_rules)

    p = sub.add_parser("evaluate", help="replay an export offline: churn AUC vs baseline, segments")
    p.add_argument("file")
    p.add_argument("--horizon", help="churn horizon, e.g. 30d or 90d")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="model quality and segment descriptions")
    p.add_argument("action", choices=["status", "segments"])
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    p.add_argument("action", choices=["show"])
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("privacy", help="erase a user everywhere, or export what is stored about them")
    p.add_argument("action", choices=["erase", "export"])
    p.add_argument("user_id")
    p.add_argument("--request-id", help="erase: id echoed in the confirmation event (default: random)")
    p.set_defaults(func=cmd_privacy)

    p = sub.add_parser("topics", help="create every Portrait topic (existing ones are left alone)")
    p.add_argument("action", choices=["create"])
    p.add_argument("--partitions", type=int, help="partitions per topic (default: PORTRAIT_PARTITIONS)")
    p.add_argument("--replication", type=int, default=1, help="replicas per partition")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("schemas", help="write the JSON Schemas of the event models")
    p.add_argument("--out", default="docs/schemas")
    p.set_defaults(func=cmd_schemas)

    # Development commands (demo, infra, bench) live in the separate portrait-dev distribution and
    # register themselves here; the product never imports them.
    for plugin in entry_points(group="portrait.commands"):
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            settings = Settings()
        except ValidationError as exc:
            problems = "; ".join(f"PORTRAIT_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"environment: {problems}") from exc
        result: int = args.func(settings, args)
        return result
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
