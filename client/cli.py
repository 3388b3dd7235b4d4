"""The `reid` command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("reid: the client CLI is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
