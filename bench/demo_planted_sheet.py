"""A contact sheet of what the demo plants that real data holds: re-crops, watermarks, tone
curves and burst frames, each beside the image it came from.

python bench/demo_planted_sheet.py /tmp/demo /tmp/planted.png          # a demo written by `fercurate demo`
python bench/demo_planted_sheet.py /tmp/demo /tmp/planted.png --per-kind 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

SCALE = 3  # 48 px faces shown at 144 px
KINDS = ("recrop", "watermark", "tone", "burst")


def _face(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("L").resize((48 * SCALE, 48 * SCALE), Image.Resampling.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="a folder written by `fercurate demo` (holds truth.parquet)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--per-kind", type=int, default=4, help="pairs shown per kind")
    args = parser.parse_args()
    truth_path = args.demo / "truth.parquet"
    if not truth_path.is_file():
        sys.exit(f"{truth_path} is missing; pass a folder written by `fercurate demo`")
    truth = pd.read_parquet(truth_path)
    rows = []
    for kind in KINDS:
        if kind == "burst":
            picked = truth[truth.burst_of.notna()].head(args.per_kind)
            pairs = [
                (o, p, f"{kind}: {a} -> {b}")
                for o, p, a, b in zip(
                    picked.burst_of,
                    picked.path,
                    truth.set_index("path").loc[picked.burst_of].true_label,
                    picked.true_label,
                    strict=True,
                )
            ]
        else:
            picked = truth[truth.dup_transform == kind].head(args.per_kind)
            pairs = [(o, p, kind) for o, p in zip(picked.dup_of, picked.path, strict=True)]
        rows.append(pairs)
    edge = 48 * SCALE
    cols = max(len(r) for r in rows)
    pair_w = 2 * edge + 10
    sheet = Image.new("L", (cols * (pair_w + 20), len(rows) * (edge + 22)), 255)
    draw = ImageDraw.Draw(sheet)
    for r, pairs in enumerate(rows):
        for c, (original, copy, caption) in enumerate(pairs):
            x, y = c * (pair_w + 20), r * (edge + 22)
            sheet.paste(_face(args.demo / "dataset" / original), (x, y + 18))
            sheet.paste(_face(args.demo / "dataset" / copy), (x + edge + 10, y + 18))
            draw.text((x, y + 2), caption, fill=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}: {sum(len(r) for r in rows)} pairs (original left, planted right)")


if __name__ == "__main__":
    main()
