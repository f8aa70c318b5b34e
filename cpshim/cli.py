"""`cpshim report | check | demo`: read-only views of selection (and the ring demo)."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigurationError


def _pins(items: list[str]) -> dict[str, str]:
    pins = {}
    for item in items:
        dist, sep, version = item.partition("==")
        if not sep or not dist.strip() or not version.strip():
            raise ConfigurationError(f"--with {item!r}: write DIST==VERSION, e.g. --with transformers==5.10.4")
        pins[dist.strip()] = version.strip()
    return pins


def _report(args: argparse.Namespace):
    import cpshim

    return cpshim.report(versions=_pins(args.with_) or None) if args.with_ else cpshim.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpshim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("report", "show what cpshim selects for the installed (or --with) versions"),
                       ("check", "exit 0 if supported, 1 if unsupported, 2 if untested")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--with", dest="with_", action="append", default=[], metavar="DIST==VERSION",
                       help="evaluate for this version instead of the installed one (repeatable)")
        if name == "report":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            p.add_argument("--model", metavar="PATH_OR_TYPE",
                           help="what ring mode does with this model: a local model directory, its config.json, "
                                "or a model type (its default config); 0 runs, 1 refuses")
    demo = sub.add_parser("demo", help="2-rank ring CP run of a tiny model beside one process (CPU)")
    demo.add_argument("--steps", type=int, default=4)
    demo.add_argument("--seq-len", type=int, default=128)
    demo.add_argument("--strategy", default="zigzag")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .ring import demo as ring_demo

            return ring_demo.main(steps=args.steps, seq_len=args.seq_len, strategy=args.strategy)
        if args.command == "check" and args.model:
            from .ring import model_check

            code, lines = model_check.verdict(model_check.load_config(args.model))
            print("\n".join(lines))
            return code
        rep = _report(args)
    except ConfigurationError as e:
        print(f"cpshim: {e}", file=sys.stderr)
        return 64
    if args.command == "report":
        print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format_table())
        return 0
    code = rep.exit_code()
    verdict = {0: "supported", 1: "UNSUPPORTED", 2: "untested"}[code]
    print(f"cpshim check: {verdict}")
    for p in rep.needed():
        if p.support != "supported":
            print(f"  {p.id}: {p.support}: {p.reason}")
    return code
