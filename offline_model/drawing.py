"""Pillow drawing: a deterministic PNG for a prompt, and the sizes the images endpoint accepts.

The same prompt and size always give the same bytes.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import math
import random
import re

from PIL import Image, ImageDraw, ImageFont

#: Sizes the images endpoint accepts (the union of what OpenAI's image models accept).
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "256x256": (256, 256),
    "512x512": (512, 512),
    "1024x1024": (1024, 1024),
    "1024x1536": (1024, 1536),
    "1536x1024": (1536, 1024),
    "1024x1792": (1024, 1792),
    "1792x1024": (1792, 1024),
    "auto": (1024, 1024),
}
DEFAULT_IMAGE_SIZE = "1024x1024"

RGB = tuple[int, int, int]
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _squash(text: str) -> str:
    return " ".join(text.split())


# Words that set the mood of the background gradient (top colour first).
_MOOD_COLOURS: dict[str, tuple[RGB, ...]] = {
    "dusk": ((255, 140, 66), (142, 68, 173)),
    "sunset": ((255, 120, 60), (120, 50, 140)),
    "sunrise": ((255, 190, 110), (250, 120, 140)),
    "dawn": ((255, 200, 150), (160, 140, 210)),
    "night": ((8, 14, 48), (40, 30, 90)),
    "midnight": ((5, 8, 30), (25, 25, 70)),
    "starry": ((8, 14, 48), (40, 30, 90)),
    "space": ((5, 5, 15), (60, 20, 90)),
    "forest": ((80, 160, 80), (10, 70, 30)),
    "jungle": ((60, 170, 60), (5, 60, 20)),
    "woods": ((90, 140, 70), (30, 60, 25)),
    "trees": ((110, 170, 90), (20, 80, 35)),
    "meadow": ((150, 210, 120), (60, 140, 60)),
    "ocean": ((0, 105, 148), (0, 40, 90)),
    "sea": ((40, 140, 190), (0, 50, 100)),
    "lake": ((110, 180, 210), (20, 80, 130)),
    "river": ((100, 170, 200), (30, 90, 120)),
    "beach": ((90, 190, 230), (240, 220, 170)),
    "snow": ((250, 250, 255), (190, 215, 240)),
    "snowy": ((250, 250, 255), (190, 215, 240)),
    "winter": ((230, 240, 250), (160, 190, 220)),
    "ice": ((220, 245, 255), (140, 200, 230)),
    "fire": ((255, 200, 40), (200, 30, 20)),
    "lava": ((255, 120, 0), (120, 10, 10)),
    "volcano": ((255, 110, 30), (60, 20, 20)),
    "desert": ((250, 220, 160), (200, 140, 80)),
    "autumn": ((250, 170, 60), (170, 60, 30)),
    "sky": ((120, 190, 240), (225, 240, 255)),
}
_COLOUR_NAMES: dict[str, RGB] = {
    "red": (215, 40, 45),
    "orange": (255, 140, 0),
    "yellow": (250, 215, 50),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (130, 60, 180),
    "violet": (140, 80, 200),
    "pink": (245, 130, 180),
    "magenta": (210, 40, 160),
    "white": (245, 245, 245),
    "black": (20, 20, 25),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "brown": (120, 75, 40),
    "gold": (212, 175, 55),
    "golden": (212, 175, 55),
    "silver": (192, 192, 200),
    "teal": (0, 128, 128),
    "cyan": (0, 200, 220),
    "turquoise": (64, 224, 208),
}


def _hash_colour(rng: random.Random, lightness: float) -> RGB:
    r, g, b = colorsys.hls_to_rgb(rng.random(), lightness, rng.uniform(0.45, 0.85))
    return round(r * 255), round(g * 255), round(b * 255)


def _shade(colour: RGB, factor: float) -> RGB:
    """factor > 1 lightens towards white, < 1 darkens towards black."""
    if factor >= 1:
        return tuple(round(c + (255 - c) * (factor - 1)) for c in colour)  # type: ignore[return-value]
    return tuple(round(c * factor) for c in colour)  # type: ignore[return-value]


def _palette(prompt: str, rng: random.Random) -> list[RGB]:
    """Gradient stops: mood words first, then plain colour names, else hash-derived."""
    stops: list[RGB] = []
    for word in re.findall(r"[a-z]+", prompt.lower()):
        for colour in _MOOD_COLOURS.get(word, ()) or (
            (_COLOUR_NAMES[word],) if word in _COLOUR_NAMES else ()
        ):
            if colour not in stops:
                stops.append(colour)
    if not stops:
        stops = [_hash_colour(rng, 0.65), _hash_colour(rng, 0.3)]
    elif len(stops) == 1:
        stops = [_shade(stops[0], 1.35), _shade(stops[0], 0.55)]
    return stops[:3]


def _gradient(stops: list[RGB], width: int, height: int) -> Image.Image:
    # Build one 1-pixel column and stretch it: far faster than drawing H lines.
    column = bytearray()
    segments = len(stops) - 1
    for y in range(height):
        position = y / max(1, height - 1) * segments
        index = min(int(position), segments - 1)
        t = position - index
        a, b = stops[index], stops[index + 1]
        column += bytes(round(a[i] + (b[i] - a[i]) * t) for i in range(3))
    strip = Image.frombytes("RGB", (1, height), bytes(column))
    return strip.resize((width, height), Image.Resampling.NEAREST)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> _Font:
    # Pillow >= 10.1 ships a scalable default font (needs FreeType, which wheels include).
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: _Font, max_width: float, max_lines: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= max_width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + "..."
    # Hard-cut anything still too wide (one enormous word).
    fitted = []
    for line in lines:
        while len(line) > 4 and font.getlength(line) > max_width:
            line = line[:-4] + "..."
        fitted.append(line)
    return fitted


def render_image(prompt: str, width: int, height: int) -> bytes:
    """Render a deterministic PNG for ``prompt``: same prompt and size, same bytes."""
    rng = random.Random(int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big"))
    stops = _palette(prompt, rng)
    image = _gradient(stops, width, height)
    # Drawing in "RGBA" mode on an RGB image blends each translucent shape as it goes.
    draw = ImageDraw.Draw(image, "RGBA")
    shortest = min(width, height)
    accents = [*stops, _hash_colour(rng, 0.55), _hash_colour(rng, 0.75), (250, 250, 250)]
    for _ in range(rng.randint(6, 10)):
        base = rng.choice(accents)
        fill = (*(max(0, min(255, c + rng.randint(-30, 30))) for c in base), rng.randint(90, 190))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height * 0.8)
        radius = rng.uniform(0.05, 0.22) * shortest
        kind = rng.choice(("circle", "rect", "polygon"))
        if kind == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif kind == "rect":
            w, h = radius * rng.uniform(0.8, 2.2), radius * rng.uniform(0.5, 1.6)
            draw.rounded_rectangle((cx - w, cy - h, cx + w, cy + h), radius=radius * 0.2, fill=fill)
        else:
            sides = rng.randint(3, 6)
            turn = rng.uniform(0, math.tau)
            points = [
                (
                    cx + radius * rng.uniform(0.7, 1.1) * math.cos(turn + math.tau * k / sides),
                    cy + radius * rng.uniform(0.7, 1.1) * math.sin(turn + math.tau * k / sides),
                )
                for k in range(sides)
            ]
            draw.polygon(points, fill=fill)

    # The prompt itself, on a translucent band so it stays legible on any background.
    font = _font(max(12, round(shortest / 18)))
    margin = round(shortest * 0.05)
    lines = _wrap(_squash(prompt) or "untitled", font, width - 2 * margin, max_lines=3)
    line_height = round(font.size * 1.25) if hasattr(font, "size") else 14
    band_height = line_height * len(lines) + margin
    band_top = height - band_height - margin
    draw.rectangle((0, band_top, width, band_top + band_height), fill=(0, 0, 0, 140))
    y = band_top + margin // 2
    for line in lines:
        draw.text((margin + 2, y + 2), line, font=font, fill=(0, 0, 0, 160))
        draw.text((margin, y), line, font=font, fill=(255, 255, 255, 255))
        y += line_height

    buffer = io.BytesIO()
    # Level 1 keeps a 1024x1024 encode at a few ms; the flat shapes compress well anyway.
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def parse_size(size: object) -> tuple[int, int]:
    """Map an OpenAI ``size`` value to pixels; raises ValueError for unsupported sizes."""
    if size is None:
        return IMAGE_SIZES[DEFAULT_IMAGE_SIZE]
    if isinstance(size, str) and size in IMAGE_SIZES:
        return IMAGE_SIZES[size]
    raise ValueError(size)
