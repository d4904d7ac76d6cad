"""The prompt grammar of the tiny video world: vocabulary, palette, rendering and parsing of prompts.

A prompt describes one or more objects, each as ``a <color> <shape> moving <direction>``, joined
by ``and``: ``"a red circle moving left and a blue square moving up"``. The empty prompt is the
unconditional (CFG negative / caption dropout) prompt. Detectors in :mod:`qvgen_eval.metrics`
read the same palette and shapes, so generator and judge cannot drift.
"""

from __future__ import annotations

import dataclasses
import re

# Saturated, mutually distant object colors (RGB in [0, 1]); backgrounds are dark (see BACKGROUNDS),
# so every object color is far from every background and a nearest-color test separates them.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.20, 0.40, 1.00),
    "yellow": (0.95, 0.90, 0.15),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Image coordinates: x grows to the right, y grows downwards.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# Dark backgrounds (not named in prompts): the model learns to pick one at random.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.03, 0.03, 0.03),
    "gray": (0.22, 0.22, 0.22),
    "navy": (0.05, 0.07, 0.25),
}
FUNCTION_WORDS: tuple[str, ...] = ("a", "moving", "and")
VOCAB: tuple[str, ...] = FUNCTION_WORDS + tuple(COLORS) + SHAPES + tuple(DIRECTIONS)


@dataclasses.dataclass(frozen=True)
class ObjectPrompt:
    """What a prompt says about one object."""

    color: str
    shape: str
    direction: str

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {sorted(COLORS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {list(SHAPES)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; expected one of {list(DIRECTIONS)}")

    def text(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction}"


def render_prompt(objects: list[ObjectPrompt] | tuple[ObjectPrompt, ...]) -> str:
    """``[ObjectPrompt, ...] -> "a red circle moving left and ..."``; no objects -> ``""``."""
    return " and ".join(o.text() for o in objects)


def tokenize(prompt: str) -> list[str]:
    """Lower-cased words of ``prompt``; raises ``ValueError`` on a word outside :data:`VOCAB`."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    words = re.findall(r"[a-z]+", prompt.lower())
    unknown = [w for w in words if w not in VOCAB]
    if unknown:
        raise ValueError(f"prompt {prompt!r} has words outside the tiny-video vocabulary: {unknown}")
    return words


def parse_prompt(prompt: str) -> list[ObjectPrompt]:
    """The objects a prompt describes; ``""`` -> ``[]``. Raises ``ValueError`` off-grammar."""
    words = tokenize(prompt)
    if not words:
        return []
    objects: list[ObjectPrompt] = []
    for clause in " ".join(words).split(" and "):
        parts = clause.split()
        if len(parts) != 5 or parts[0] != "a" or parts[3] != "moving":
            raise ValueError(f"prompt {prompt!r}: clause {clause!r} is not 'a <color> <shape> moving <direction>'")
        objects.append(ObjectPrompt(color=parts[1], shape=parts[2], direction=parts[4]))
    return objects
