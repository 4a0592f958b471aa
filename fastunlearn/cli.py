"""The ``fastunlearn`` command: ``fastunlearn run | doctor``.

A user mistake (a :class:`~fastunlearn.errors.UserInputError`) ends with one line on stderr and exit code 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from fastunlearn.errors import UserInputError


def _doctor(args: argparse.Namespace) -> int:
    from fastunlearn import doctor

    return doctor.main(as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastunlearn", description="Make a trained generative model forget data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_doc = sub.add_parser("doctor", help="versions, devices, the C++/CUDA extension and which kernel backend each op uses")
    p_doc.add_argument("--json", action="store_true", help="print the report as JSON")
    p_doc.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"fastunlearn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
