"""Pillow edits: a deterministic transform of the source bytes that visibly follows the prompt.

The same sources, prompt, size and variant always give the same bytes. The words
of the prompt pick the effects ("night" darkens and adds stars and a moon,
"stormy" greys it and adds rain and lightning, colour words tint it, ...); a
prompt with none of them rotates the hues. Reference images (the second source
on) are pasted in as insets, a mask limits the edit to its transparent pixels
(OpenAI's rule), and the prompt is written along the bottom. Partial images
(previews) are the final picture, blurred less and less.
"""

from __future__ import annotations

import hashlib
import io
import random
import re

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from offline_model.drawing import _COLOUR_NAMES, _font, _wrap

RGB = tuple[int, int, int]


def _words(prompt: str) -> set[str]:
    return set(re.findall(r"[a-z]+", prompt.lower()))


def _tint(image: Image.Image, colour: RGB, amount: float) -> Image.Image:
    return Image.blend(image, Image.new("RGB", image.size, colour), amount)


def _night(image: Image.Image, rng: random.Random) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(0.38)
    image = _tint(image, (12, 20, 70), 0.35)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(max(40, width * height // 9000)):
        x, y = rng.randrange(width), rng.randrange(int(height * 0.6))
        radius = rng.choice((1, 1, 1, 2)) * max(1, width // 512)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 230))
    moon = width // 10
    mx, my = int(width * 0.78), int(height * 0.16)
    draw.ellipse((mx - moon, my - moon, mx + moon, my + moon), fill=(250, 245, 210))
    return image


def _storm(image: Image.Image, rng: random.Random) -> Image.Image:
    image = ImageEnhance.Color(image).enhance(0.35)
    image = ImageEnhance.Brightness(image).enhance(0.6)
    image = _tint(image, (70, 75, 90), 0.3)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(max(60, width * height // 4000)):
        x, y = rng.randrange(width), rng.randrange(height)
        length = max(8, height // 30)
        draw.line((x, y, x - length // 3, y + length), fill=(190, 200, 215), width=1)
    x, y = int(width * rng.uniform(0.3, 0.7)), 0
    bolt = [(x, y)]
    while y < height * 0.65:
        x += rng.randint(-width // 20, width // 20)
        y += rng.randint(height // 20, height // 10)
        bolt.append((x, y))
    draw.line(bolt, fill=(255, 255, 200), width=max(3, width // 150))
    return image


def _snow(image: Image.Image, rng: random.Random) -> Image.Image:
    image = _tint(ImageEnhance.Brightness(image).enhance(1.15), (235, 242, 255), 0.3)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(max(60, width * height // 5000)):
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.choice((1, 2, 3)) * max(1, width // 512)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255))
    return image


def _sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(image), (40, 25, 10), (255, 235, 200))


# Effects by the words that call for them, applied in this order.
_WORD_EFFECTS = (
    ({"night", "midnight", "dark", "starry", "stars", "nighttime"}, "night"),
    ({"storm", "stormy", "rain", "rainy", "thunder", "lightning"}, "storm"),
    ({"snow", "snowy", "winter", "wintry", "frozen"}, "snow"),
    ({"sunset", "dusk", "warm", "golden", "sunrise"}, "warm"),
    ({"grayscale", "greyscale", "monochrome", "gray", "grey"}, "gray"),
    ({"sepia", "vintage", "old"}, "sepia"),
    ({"mirror", "flip", "flipped", "mirrored"}, "mirror"),
)


def edit_image(
    sources: list[bytes],
    prompt: str,
    size: tuple[int, int] | None,
    *,
    mask: bytes | None = None,
    variant: int = 0,
) -> bytes:
    """The edited PNG: `sources[0]` changed as `prompt` says, the others as insets."""
    with Image.open(io.BytesIO(sources[0])) as opened:
        original = opened.convert("RGB")
    if size is not None and original.size != size:
        original = ImageOps.fit(original, size)
    seed = hashlib.sha256(
        b"".join(hashlib.sha256(s).digest() for s in sources) + prompt.encode() + bytes([variant])
    ).digest()
    rng = random.Random(seed)
    words = _words(prompt)
    image = original.copy()
    applied = False
    for names, effect in _WORD_EFFECTS:
        if not words & names:
            continue
        applied = True
        if effect == "night":
            image = _night(image, rng)
        elif effect == "storm":
            image = _storm(image, rng)
        elif effect == "snow":
            image = _snow(image, rng)
        elif effect == "warm":
            image = _tint(image, (255, 140, 50), 0.3)
        elif effect == "gray":
            image = ImageOps.grayscale(image).convert("RGB")
        elif effect == "sepia":
            image = _sepia(image)
        elif effect == "mirror":
            image = ImageOps.mirror(image)
    for word in sorted(words & _COLOUR_NAMES.keys()):
        if word in {"gray", "grey"}:
            continue
        applied = True
        image = _tint(image, _COLOUR_NAMES[word], 0.35)
    if not applied:
        # No word we know: still visibly an edit of this prompt (hues turned by it).
        image = _rotate_hue(image, 40 + seed[0] % 240)
    if variant:
        image = _rotate_hue(image, 25 * variant)
    image = _with_insets(image, sources[1:])
    if mask is not None:
        image = _masked(original, image, mask)
    _caption(image, prompt)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _rotate_hue(image: Image.Image, degrees: int) -> Image.Image:
    hue, saturation, value = image.convert("HSV").split()
    shift = int(degrees * 255 / 360)
    hue = hue.point(lambda h: (h + shift) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def _with_insets(image: Image.Image, references: list[bytes]) -> Image.Image:
    """Each reference image, small, along the top left: "put the fox from the first one in"."""
    width, height = image.size
    side = max(32, min(width, height) // 4)
    margin = max(4, side // 10)
    for position, data in enumerate(references):
        with Image.open(io.BytesIO(data)) as opened:
            inset = ImageOps.fit(opened.convert("RGB"), (side, side))
        inset = ImageOps.expand(inset, border=max(2, side // 40), fill=(255, 255, 255))
        image.paste(inset, (margin + position * (side + margin), margin))
    return image


def _masked(original: Image.Image, edited: Image.Image, mask: bytes) -> Image.Image:
    """Edited where the mask is transparent, the original elsewhere."""
    with Image.open(io.BytesIO(mask)) as opened:
        alpha = opened.convert("RGBA").getchannel("A").resize(original.size)
    return Image.composite(original, edited, alpha)


def _caption(image: Image.Image, prompt: str) -> None:
    width, height = image.size
    font = _font(max(12, width // 40))
    lines = _wrap(f"edit: {prompt}", font, width * 0.9, 2)
    draw = ImageDraw.Draw(image)
    line_height = int(font.size * 1.3) if hasattr(font, "size") else 14
    y = height - line_height * len(lines) - max(6, height // 60)
    for line in lines:
        draw.text((width * 0.05 + 1, y + 1), line, font=font, fill=(0, 0, 0))
        draw.text((width * 0.05, y), line, font=font, fill=(255, 255, 255))
        y += line_height


def partial_images(final: bytes, count: int) -> list[bytes]:
    """`count` previews of `final`, each sharper than the last (none is the final image)."""
    with Image.open(io.BytesIO(final)) as opened:
        image = opened.convert("RGB")
    previews = []
    for index in range(count):
        radius = max(1.0, min(image.size) / 24 / (index + 1))
        blurred = image.filter(ImageFilter.GaussianBlur(radius))
        # Darker early on, as a drawing "coming in".
        blurred = ImageChops.multiply(
            blurred, Image.new("RGB", image.size, (200 + 55 * index // max(1, count),) * 3)
        )
        buffer = io.BytesIO()
        blurred.save(buffer, "PNG", compress_level=1)
        previews.append(buffer.getvalue())
    return previews
