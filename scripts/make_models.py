"""Train and export the small digits models and data the specs and tests use.

    python scripts/make_models.py            # writes specs/models/*.onnx, specs/data/*.npz
    python scripts/make_models.py --force    # regenerate even if present
    python scripts/make_models.py --out DIR  # DIR/models/..., DIR/data/...

Seeded and under a minute on two cores. The files are not committed (.gitignore).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from irkit.testing.digits import REPO_SPECS, make_digits_assets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_SPECS, help="specs directory")
    parser.add_argument("--force", action="store_true", help="regenerate even if present")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    report = make_digits_assets(args.out, force=args.force)
    if not report.written:
        print(f"digits models and data already in {args.out} (use --force to regenerate)")
        return 0
    print(f"digits_mlp held-out accuracy: {report.mlp_accuracy:.4f}")
    print(f"digits_cnn held-out accuracy: {report.cnn_accuracy:.4f}")
    print(f"wrote {report.models_dir} and {report.data_dir} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
