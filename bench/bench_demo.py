"""Time ``generate_demo`` at its default size.

python bench/bench_demo.py --workers 2            # wall time, as the CLI would run it
taskset -c 0,1 python bench/bench_demo.py          # pinned to two cores
python bench/bench_demo.py --workers 1 --profile   # where the time goes, single process
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from fercurate.demo import DemoParams, generate_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: available cores)")
    parser.add_argument("--n-images", type=int, default=DemoParams.n_images)
    parser.add_argument("--n-affectnet", type=int, default=DemoParams.n_affectnet)
    parser.add_argument("--profile", action="store_true", help="print the 25 most expensive calls")
    args = parser.parse_args()
    params = DemoParams(n_images=args.n_images, n_affectnet=args.n_affectnet)

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "demo"
        profiler = cProfile.Profile() if args.profile else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = generate_demo(dest, params, workers=args.workers)
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - start
        print(f"generate_demo: {elapsed:.2f} s wall for {result.counts}")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
