#!/usr/bin/env bash
# Extract the public FER2013 (Kaggle layout) and FER+ snapshots from two fetched git repositories.
#
# Usage: bench/real/fetch.sh FER2013_GIT_DIR FERPLUS_GIT_DIR DEST
#   FER2013_GIT_DIR  a clone (or bare git dir) of github.com/RecepTahirGunlu/Duygu-Tanima
#   FERPLUS_GIT_DIR  a clone (or bare git dir) of github.com/tessav/crowd-emotion
#   DEST             empty folder; gets DEST/fer2013/{train,test}/<7 emotions>/*.jpg
#                    and DEST/ferplus/{fer2013new.csv,data/FER2013{Train,Valid,Test}/}
# Example: bench/real/fetch.sh ~/src/Duygu-Tanima ~/src/crowd-emotion /tmp/real
#
# The commits are pinned: Duygu-Tanima's first commit (later ones re-split and augment the images) and
# the crowd-emotion commit that holds the FER+ release. The data are for measuring only: never commit
# them. Then build the sets: python bench/real/prepare.py --fer2013 DEST/fer2013 --ferplus DEST/ferplus --out DEST/sets
set -euo pipefail
FER2013_COMMIT=8041c66ab014c185bfe459e8e32349fc7b15685a
FERPLUS_COMMIT=95c07555f685e8b776d03c66406b49faa402a349
usage="pass FER2013_GIT_DIR (RecepTahirGunlu/Duygu-Tanima) FERPLUS_GIT_DIR (tessav/crowd-emotion) DEST"
if [ $# -ne 3 ]; then echo "error: expected 3 arguments, got $#; $usage" >&2; exit 1; fi
fer2013_git=$1 ferplus_git=$2 dest=$3
for pair in "$fer2013_git:$FER2013_COMMIT:FER2013_GIT_DIR (RecepTahirGunlu/Duygu-Tanima)" \
            "$ferplus_git:$FERPLUS_COMMIT:FERPLUS_GIT_DIR (tessav/crowd-emotion)"; do
  dir=${pair%%:*} rest=${pair#*:} commit=${rest%%:*} what=${rest#*:}
  if ! git -C "$dir" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "error: $dir is not a git repository holding commit $commit; pass $what" >&2; exit 1
  fi
done
for sub in fer2013 ferplus; do
  if [ -e "$dest/$sub" ] && [ -n "$(ls -A "$dest/$sub")" ]; then
    echo "error: $dest/$sub already exists and is not empty; pass a fresh DEST or remove it" >&2; exit 1
  fi
done
# Extract into temporary folders and rename, so an interrupted run leaves nothing half-written.
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/fer2013" "$tmp/ferplus"
git -C "$fer2013_git" archive "$FER2013_COMMIT" train test | tar -x -C "$tmp/fer2013"
git -C "$ferplus_git" archive "$FERPLUS_COMMIT" data fer2013new.csv | tar -x -C "$tmp/ferplus"
rmdir "$dest/fer2013" "$dest/ferplus" 2>/dev/null || true
mv "$tmp/fer2013" "$dest/fer2013"
mv "$tmp/ferplus" "$dest/ferplus"
echo "fer2013: $(find "$dest/fer2013" -name '*.jpg' | wc -l) JPEGs; ferplus: $(find "$dest/ferplus/data" -name '*.png' | wc -l) PNGs"
