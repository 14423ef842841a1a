"""`keras-llm` command line: thin; parses arguments and calls the public API."""

import argparse
import sys

import keras_llm


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-llm",
        description="Pretrain, fine-tune, evaluate and export keras_llm Transformers.",
    )
    parser.add_argument("--version", action="version", version=keras_llm.__version__)
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
