#!/usr/bin/env bash
# Collects the demo gallery into data/demo/photos from registry packages (see SOURCES.md):
# scikit-image's and matplotlib's wheels (downloaded, not installed) and Debian's
# mate-backgrounds (downloaded, not installed). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/data/demo/photos"
work="$root/data/.cache/demo-downloads"
mkdir -p "$out" "$work"
python=${PYTHON:-python3}

if [ ! -f "$out/chelsea.png" ]; then
  "$python" -m pip download --quiet --no-deps --dest "$work" scikit-image==0.26.0 matplotlib==3.11.2
  "$python" - "$work" "$out" <<'PY'
import glob, sys, zipfile, os
work, out = sys.argv[1], sys.argv[2]
sk = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "hubble_deep_field.jpg", "moon.png",
      "motorcycle_left.png", "rocket.jpg", "grass.png", "gravel.png", "brick.png", "clock_motion.png", "page.png",
      "horse.png", "retina.jpg"]
with zipfile.ZipFile(glob.glob(os.path.join(work, "scikit_image-*.whl"))[0]) as z:
    for name in sk:
        with open(os.path.join(out, name), "wb") as f:
            f.write(z.read("skimage/data/" + name))
with zipfile.ZipFile(glob.glob(os.path.join(work, "matplotlib-*.whl"))[0]) as z:
    with open(os.path.join(out, "grace_hopper.jpg"), "wb") as f:
        f.write(z.read("matplotlib/mpl-data/sample_data/grace_hopper.jpg"))
PY
fi

if [ ! -f "$out/LadyBird.jpg" ]; then
  ( cd "$work" && { apt-get download mate-backgrounds 2>/dev/null || { apt-get update -qq && apt-get download mate-backgrounds; }; } )
  rm -rf "$work/mate" && dpkg-deb -x "$work"/mate-backgrounds_*.deb "$work/mate"
  for f in Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower; do
    cp "$work/mate/usr/share/backgrounds/mate/nature/$f.jpg" "$out/"
  done
fi

cp "$root/launch/demo/queries.json" "$root/data/demo/queries.json"
echo "demo gallery: $(ls "$out" | wc -l) photos in $out"
