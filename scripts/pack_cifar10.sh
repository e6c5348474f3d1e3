#!/usr/bin/env bash
# Pack a class-folder copy of CIFAR-10 (train/<class>/*.jpg, test/<class>/*.jpg) into one xz tar file, small enough
# to travel with the repository to a GPU machine (about 19 MB for the JPEG copy), where scripts/gpu_session.sh
# unpacks it. The file is written under a temporary name and renamed, so an interrupted pack leaves no half file.
#
#   bash scripts/pack_cifar10.sh data/cifar10-jpeg data/cifar10-jpeg.tar.xz
set -euo pipefail

src=${1:?usage: pack_cifar10.sh SOURCE_FOLDER OUTPUT.tar.xz}
dest=${2:?usage: pack_cifar10.sh SOURCE_FOLDER OUTPUT.tar.xz}
for split in train test; do
    if [ ! -d "$src/$split" ]; then
        echo "pack_cifar10.sh: $src/$split is not a folder; expected train/<class>/ and test/<class>/ image folders." >&2
        exit 2
    fi
done
if [ -e "$dest" ]; then
    echo "pack_cifar10.sh: $dest exists; remove it first to pack again." >&2
    exit 2
fi
tmp="$dest.partial.$$"
trap 'rm -f "$tmp"' EXIT
tar -C "$src" -cf - train test | xz -6 -T0 > "$tmp"
mv "$tmp" "$dest"
trap - EXIT
echo "$dest: $(du -h "$dest" | cut -f1), $(find "$src/train" "$src/test" -type f | wc -l) files"
