"""`python -m mmad_boost.sample [root|benchmark|experts]`: print a folder of the bundled sample.

root (default): the VisA-layout images; benchmark: the MMAD-format benchmark (built once into the
cache), e.g. `mmad-boost eval --data "$(python -m mmad_boost.sample benchmark)" ...`; experts: the
fitted experts. Errors: one line on stderr, exit code 2.
"""

import sys

from ..errors import MmadError
from . import benchmark_root, root
from ..resources import sample_experts

WHAT = {"root": root, "benchmark": benchmark_root, "experts": sample_experts}


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "root"
    if len(argv) > 1 or name not in WHAT:
        print(f"usage: python -m mmad_boost.sample [{'|'.join(WHAT)}] (default root)", file=sys.stderr)
        return 2
    try:
        print(WHAT[name]())
    except MmadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


sys.exit(main(sys.argv[1:]))
