"""python -m export CHECKPOINT --out artifacts/NAME [options]: build a gated serving artifact (export.cli)."""

import sys

from export.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
