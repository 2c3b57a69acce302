"""Generated scenes of people with known identities: trajectories, a lossless video and a box file.

A :class:`Person` is a coloured figure (a rectangle with a pattern of its own: horizontal stripes of two
colours) that moves through keyframes ``{second: box}`` with boxes normalized ``x1, y1, x2, y2``; between two
keyframes the box moves linearly, and a keyframe missing from ``boxes`` inside the person's span means the
person is hidden there (not drawn, no box: an occlusion or a missed detection). :func:`write_scene` draws
the frames at 30 fps on a static textured background and writes the AVA box file, the boxes of each keyframe
in a shuffled order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FPS = 30


@dataclass
class Person:
    identity: int
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # RGB stripe colours
    boxes: dict[int, tuple[float, float, float, float]]  # keyframe second -> normalized x1, y1, x2, y2
    hidden: tuple[int, ...] = ()  # keyframe seconds where the person is neither drawn nor boxed
    lit: tuple[int, ...] = ()  # keyframe seconds around which (+-0.5 s) the person is drawn in ``lit_colors``
    lit_colors: tuple[tuple[int, int, int], tuple[int, int, int]] = ((255, 255, 255), (255, 255, 120))

    def box_at(self, seconds: float):
        """The linearly interpolated box at ``seconds`` (None outside the person's keyframes)."""
        times = sorted(self.boxes)
        if seconds < times[0] or seconds > times[-1]:
            return None
        after = next(t for t in times if t >= seconds)
        before = max(t for t in times if t <= seconds)
        if after == before:
            return np.asarray(self.boxes[before], float)
        weight = (seconds - before) / (after - before)
        return (1 - weight) * np.asarray(self.boxes[before], float) + weight * np.asarray(self.boxes[after], float)

    def colors_at(self, seconds: float):
        return self.lit_colors if any(abs(seconds - t) < 0.5 for t in self.lit) else self.colors

    def visible_at(self, seconds: float) -> bool:
        return self.box_at(seconds) is not None and not any(abs(seconds - h) < 0.5 for h in self.hidden)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A static smooth texture of 21 x 16 random cells, uint8 (height, width, 3) RGB."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(60, 140, (16, 21, 3), dtype=np.uint8)
    return cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)


def draw_person(image: np.ndarray, person: Person, box, seconds: float) -> None:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v * s)) for v, s in zip(box, (width, height, width, height)))
    stripe = max(2, (y2 - y1) // 6)
    colors = person.colors_at(seconds)
    for number, top in enumerate(range(y1, y2, stripe)):
        image[top:min(top + stripe, y2), x1:x2] = colors[number % 2]


def write_scene(folder: Path, name: str, persons: list[Person], seconds: int, *, size=(160, 120),
                seed: int = 0) -> tuple[Path, Path, dict]:
    """Write ``folder/name.mkv`` (lossless, ``seconds`` long) and ``folder/name_boxes.csv``.

    Returns ``(video, boxes, truth)`` where ``truth[second]`` lists ``(identity, box)`` of the people boxed at
    that keyframe (persons are drawn in list order: later ones in front).
    """
    import av

    width, height = size
    base = background(width, height, seed)
    video = folder / f"{name}.mkv"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("ffv1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for index in range(seconds * FPS):
            t = index / FPS
            image = base.copy()
            for person in persons:
                if person.visible_at(t):
                    draw_person(image, person, person.box_at(t), t)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    truth, rows = {}, []
    rng = random.Random(seed)
    for second in range(1, seconds):
        present = [(p.identity, tuple(p.boxes[second])) for p in persons
                   if second in p.boxes and second not in p.hidden]
        truth[second] = present
        shuffled = present[:]
        rng.shuffle(shuffled)
        rows += [f"{name},{second},{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},,0.9\n" for _, (x1, y1, x2, y2) in shuffled]
    boxes = folder / f"{name}_boxes.csv"
    boxes.write_text("".join(rows))
    return video, boxes, truth
