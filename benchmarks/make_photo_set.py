"""A set of real photos for the photo benchmarks: the clothing dataset (subset) of Alexey Grigorev, CC0, 3,781
JPEG photos of about 400 x 533 px in 10 classes, from its public git repository, laid out as train/ and test/.

    python benchmarks/make_photo_set.py --repo PATH_TO_clothing-dataset-small.git --out benchmarks/runs/clothing

``--repo`` is a clone (or a bare mirror) of github.com/alexeygrigorev/clothing-dataset-small. Its train/ split
(3,068 photos) becomes train/; its validation/ and test/ splits (713 photos) become test/, the held-out set
the kNN monitor and `moco evaluate` score on. The photos are copied byte for byte; nothing is resized. The
set stays out of this repository (benchmarks/runs/ is ignored).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
from pathlib import Path

SPLITS = {"train": "train", "validation": "test", "test": "test"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="the clothing-dataset-small repository (a clone or a mirror)")
    ap.add_argument("--rev", default="HEAD", help="the commit to take the photos from")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    repo, out = Path(a.repo), Path(a.out)
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    try:
        blob = subprocess.run(["git", f"--git-dir={git_dir}", "archive", a.rev], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"{repo}: cannot read it as a git repository ({e})") from None
    counts: dict[str, int] = {"train": 0, "test": 0}
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        for m in tf:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 3 or parts[0] not in SPLITS or not m.name.lower().endswith(".jpg"):
                continue
            split = SPLITS[parts[0]]
            dest = out / split / parts[1] / f"{parts[0]}-{parts[2]}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            f = tf.extractfile(m)
            assert f is not None
            dest.write_bytes(f.read())
            counts[split] += 1
    if not counts["train"]:
        raise SystemExit(f"{repo} at {a.rev} holds no train/CLASS/*.jpg photos: is it clothing-dataset-small?")
    print(f"{out}: {counts['train']} training and {counts['test']} test photos")


if __name__ == "__main__":
    main()
