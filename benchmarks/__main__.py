"""``python -m benchmarks [OPTIONS]`` is ``recsys bench [OPTIONS]`` (see :mod:`benchmarks.suite`)."""

import sys

from cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]], prog_name="recsys")
