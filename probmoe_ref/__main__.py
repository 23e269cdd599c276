"""``python -m probmoe_ref [--quick]``: print the reference self-check table; exit 1 on a failure."""

import argparse
import sys
import time

from .selfcheck import run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probmoe_ref", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller case grid (seconds)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    checks = run(quick=args.quick)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  max error {c.max_error:.3e}  "
              f"tol {c.tol:.0e}")
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed "
          f"in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
