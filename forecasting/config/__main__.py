"""``python -m forecasting.config``: print conf/default.yaml as the settings models
render it; ``--write-default`` writes it, ``--check`` exits 1 when the committed file
differs."""

from __future__ import annotations

import argparse
import sys

from forecasting.config.defaults import render_default_yaml, write_default_yaml
from forecasting.config.loading import default_conf_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forecasting.config", description=__doc__)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write-default", action="store_true", help="write conf/default.yaml")
    what.add_argument("--check", action="store_true", help="exit 1 when conf/default.yaml is not up to date")
    args = parser.parse_args(argv)
    if args.write_default:
        sys.stdout.write(f"wrote {write_default_yaml()}\n")
        return 0
    if args.check:
        path = default_conf_path()
        if path.read_text() != render_default_yaml():
            sys.stdout.write(
                f"{path} differs from the settings models: python -m forecasting.config --write-default\n"
            )
            return 1
        sys.stdout.write(f"{path} is up to date\n")
        return 0
    sys.stdout.write(render_default_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
