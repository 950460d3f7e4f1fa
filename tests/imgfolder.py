"""Small labelled image folders that the tests write themselves (Pillow)."""
import os

import numpy as np

CLASSES = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def make_image(rng, color, size=(64, 48)):
    """A noisy picture dominated by `color`, with a random rectangle of another tone."""
    w, h = size
    base = np.array(color, dtype=np.float64)
    img = base + rng.normal(0, 18, size=(h, w, 3))
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0:y0 + h // 3, x0:x0 + w // 3] = base[::-1] * 0.6
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root, rng, per_class=6, broken=True, fmt="png"):
    """root/<class>/<class>_<i>.<fmt>, plus unreadable files when `broken`.
    Returns (good paths, {path: label}, broken paths)."""
    from PIL import Image
    good, labels, bad = [], {}, []
    for name, color in CLASSES.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            p = os.path.join(root, name, f"{name}_{i}.{fmt}")
            Image.fromarray(make_image(rng, color)).save(p)
            good.append(p)
            labels[p] = name
    if broken:
        p = os.path.join(root, "red", "truncated.jpg")
        Image.fromarray(make_image(rng, CLASSES["red"])).save(p, quality=90)
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 3])
        bad.append(p)
        p = os.path.join(root, "fake.png")
        open(p, "w").write("this is not an image")
        bad.append(p)
        open(os.path.join(root, "notes.txt"), "w").write("not listed: wrong extension")
    return sorted(good), labels, sorted(bad)


def make_flowers_layout(root, rng, per_class=4):
    """flowers17's layout: every image in root/images/, the classes in root/labels.csv
    (path,label,class_name, paths relative to root).  Returns [(relative path, label)]."""
    from PIL import Image
    os.makedirs(os.path.join(root, "images"))
    rows = []
    for name, color in CLASSES.items():
        for i in range(per_class):
            rel = f"images/{name}_{i}.png"
            Image.fromarray(make_image(rng, color)).save(os.path.join(root, rel))
            rows.append((rel, name))
    with open(os.path.join(root, "labels.csv"), "w") as f:
        f.write("path,label,class_name\n" + "".join(f"{p},{lab},{lab}\n" for p, lab in rows))
    return rows
