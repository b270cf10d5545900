"""Image inspection: read each image once for its sha256, decode it completely, take its perceptual hash.

Decoding is what Ultralytics would do when training (PIL, EXIF orientation, its size and format
limits), but judged instead of repaired: each problem becomes a finding. What the bytes alone
determine is a pure function of the content, so callers may cache it by sha256.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import simplejpeg
from PIL import Image, UnidentifiedImageError
from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic validates cached facts: it needs this TypedDict on 3.11

from phase2.dataset.findings import Finding
from phase2.dataset.index_cache import FileIndex
from phase2.dataset.labels import ParsedLabel, parse_label
from phase2.dataset.layout import image_formats
from phase2.infra.files import atomic_write_text, sha256_bytes

PHASH_SIDE = 32  # imagehash.phash: hash_size 8 x highfreq_factor 4
MIN_IMAGE_SIDE = 10  # Ultralytics rejects images below 10 px
# PIL's own default limit; set explicitly because Ultralytics may set Image.MAX_IMAGE_PIXELS = None.
MAX_IMAGE_PIXELS = 89_478_485
PIL_FORMAT_EXTENSIONS = {
    "JPEG": {"jpg", "jpeg"},
    "MPO": {"jpg", "jpeg", "mpo"},
    "PNG": {"png"},
    "BMP": {"bmp"},
    "TIFF": {"tif", "tiff", "dng"},
    "WEBP": {"webp"},
    "JPEG2000": {"jp2"},
    "AVIF": {"avif"},
    "HEIF": {"heic", "heif"},
}
# libjpeg's warnings for damaged entropy-coded data (JWRN_JPEG_EOF, JWRN_HIT_MARKER, JWRN_EXTRANEOUS_DATA,
# JWRN_HUFF_BAD_CODE, ...): PIL ignores them and returns grey or garbled blocks.
_JPEG_DAMAGE = ("Premature end of JPEG file", "Corrupt JPEG data")


class ImageFacts(TypedDict):
    """What an image's bytes determine; problems are (code, message) pairs."""

    format: str | None
    width: int | None
    height: int | None
    phash: int | None
    problems: list[tuple[str, str]]


@dataclass
class ImageResult:
    width: int | None = None
    height: int | None = None
    format: str | None = None
    sha256: str | None = None
    phash: int | None = None
    phash_low: np.ndarray | None = None  # 8x8 DCT of a newly decoded image: its phash bits are set in one batch
    new_facts: ImageFacts | None = None  # decoded this run (not from the cache): to be cached once hashed
    findings: list[Finding] = field(default_factory=list)


def _pil_open() -> Callable[..., Any]:
    """PIL's own Image.open: Ultralytics replaces it with a wrapper that tries to install pi-heif
    whenever a file is not an image (an auto-install attempt for every non-image we report)."""
    if Image.open.__module__ == Image.__name__:
        return Image.open
    from ultralytics.utils import patches

    return patches._image_open


def inspect_image(path: str, known: dict[str, ImageFacts] | None = None, index: FileIndex | None = None) -> ImageResult:
    """Read once: sha256 of the bytes; decode facts from `known` (by content hash) or by decoding.
    With `index`, a file whose stat key is unchanged and whose content's facts are known is not read.
    Whether the path may be read at all (PHASE2_DATA_ROOTS) is decided before, by the layout."""
    result = ImageResult()
    add = result.findings.append
    st = None
    if index is not None:
        cached_sha, st = index.lookup(path)
        if cached_sha is not None and (cached := (known or {}).get(cached_sha)) is not None:
            result.sha256 = cached_sha
            return _with_facts(result, path, cached)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        add(Finding.of("IMG_MISSING", path, "listed image does not exist"))
        return result
    except OSError as e:
        add(Finding.of("IMG_UNREADABLE", path, f"cannot read: {e.strerror or e}"))
        return result
    if not data:
        add(Finding.of("IMG_EMPTY", path, "zero-byte file"))
        return result
    result.sha256 = sha256_bytes(data)
    if index is not None and st is not None:  # stat taken before the read: a later edit is a new key
        index.remember(path, st, result.sha256)
    facts = (known or {}).get(result.sha256)
    if facts is None:
        facts, grey = decode_image(data)
        result.new_facts = facts
        if grey is not None:
            result.phash_low = _phash_low(grey)
    return _with_facts(result, path, facts)


def _with_facts(result: ImageResult, path: str, facts: ImageFacts) -> ImageResult:
    result.format, result.width, result.height, result.phash = (
        facts["format"],
        facts["width"],
        facts["height"],
        facts["phash"],
    )
    result.findings += [Finding.of(code, path, message) for code, message in facts["problems"]]
    ext = path.rpartition(".")[-1].lower()
    if facts["format"] and ext not in PIL_FORMAT_EXTENSIONS.get(facts["format"], {ext}):
        result.findings.append(
            Finding.of("IMG_EXT_MISMATCH", path, f"extension .{ext} but content is {facts['format']}")
        )
    return result


def decode_image(data: bytes) -> tuple[ImageFacts, np.ndarray | None]:
    """What the bytes alone determine (format, EXIF-corrected size, problems as (code, message)),
    plus a small grey image (>= 32 px a side) for the perceptual hash. A pure function of the
    content: cacheable by sha256."""
    problems: list[tuple[str, str]] = []
    facts: ImageFacts = {"format": None, "width": None, "height": None, "phash": None, "problems": problems}
    im: Image.Image | None = None
    orientation = None
    size = plain_jpeg_size(data)
    if size:  # most images: simplejpeg read the size; PIL's (Python) header parser is not needed
        facts["format"], (width, height) = "JPEG", size
    else:
        try:
            im = _pil_open()(io.BytesIO(data))
        except UnidentifiedImageError:
            problems.append(("IMG_NOT_IMAGE", "not an image (unrecognised content)"))
            return facts, None
        except Image.DecompressionBombError as e:
            problems.append(("IMG_DECOMPRESSION_BOMB", str(e)))
            return facts, None
        except Exception as e:
            problems.append(("IMG_CORRUPT", f"header unreadable: {e}"))
            return facts, None
        facts["format"] = im.format
        width, height = im.size
        if (im.format or "").lower() not in image_formats() | {"jpeg2000"}:
            problems.append(("IMG_FORMAT", f"format {im.format} is not one Ultralytics accepts"))
            return facts, None
        try:
            orientation = im.getexif().get(274)
        except Exception:
            orientation = None
    if width * height > MAX_IMAGE_PIXELS:
        problems.append(
            ("IMG_DECOMPRESSION_BOMB", f"{width}x{height} = {width * height} px exceeds {MAX_IMAGE_PIXELS} px")
        )
        return facts, None
    if orientation in {5, 6, 7, 8}:  # rotated 90/270: Ultralytics swaps width and height
        width, height = height, width
    if orientation not in (None, 1):
        problems.append(
            ("IMG_EXIF_ORIENTATION", f"EXIF orientation {orientation}: Ultralytics rotates the image when loading")
        )
    facts["width"], facts["height"] = width, height
    try:
        if im is None or facts["format"] in {"JPEG", "MPO"}:
            grey = _decode_jpeg_grey(data)
        else:
            grey = _decode_pil_grey(im)
    except Exception as e:
        problems.append(("IMG_CORRUPT", f"does not decode completely: {e}"))
        return facts, None
    if min(width, height) < MIN_IMAGE_SIDE:
        problems.append(("IMG_TOO_SMALL", f"{width}x{height} is below {MIN_IMAGE_SIDE} px"))
    if facts["format"] in {"JPEG", "MPO"} and not data.endswith(b"\xff\xd9"):
        problems.append(("IMG_JPEG_NO_EOI", "JPEG lacks its end-of-image marker"))
    return facts, grey


def plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG without EXIF or MPF segments (so no orientation and not an MPO), from
    libjpeg-turbo's header parser; None means "ask PIL" (other formats, EXIF, unreadable headers)."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos = 2
    while True:  # the marker segments before the scan data; anything unexpected: let PIL judge
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: no metadata after this
            break
        if (marker == 0xE1 and data.startswith(b"Exif\x00\x00", pos + 4)) or (
            marker == 0xE2 and data.startswith(b"MPF\x00", pos + 4)
        ):
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return width, height


def _decode_jpeg_grey(data: bytes) -> np.ndarray:
    """Decode every byte of the entropy-coded data with libjpeg-turbo (GIL released, so the decode pool
    runs in parallel), scaled in the IDCT to >= 32 px a side: the perceptual hash needs no more.
    strict=True turns libjpeg's damage warnings into errors; other refusals (colour conversions
    libjpeg-turbo lacks) fall back to PIL."""
    try:
        return simplejpeg.decode_jpeg(
            data, colorspace="GRAY", min_height=PHASH_SIDE, min_width=PHASH_SIDE, strict=True
        )[..., 0]
    except ValueError as e:
        if any(marker in str(e) for marker in _JPEG_DAMAGE):
            raise ValueError(f"damaged JPEG data ({e})") from e
    im = _pil_open()(io.BytesIO(data))
    im.draft("L", (PHASH_SIDE, PHASH_SIDE))
    return _decode_pil_grey(im)


def _decode_pil_grey(im: Image.Image) -> np.ndarray:
    """Any other format: full decode by PIL, then the hash's 32x32 grey image (PIL's LANCZOS)."""
    im.load()
    return np.asarray(im.convert("L").resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS))


@functools.cache
def _phash_projection(size: int) -> np.ndarray:
    """(8, size): PIL's LANCZOS resampling from `size` to 32 samples (read off PIL itself by resizing
    an identity image in float mode) followed by the 8 lowest rows of the 32-point DCT-II that
    imagehash.phash takes (scipy.fftpack.dct). Resize and DCT are linear, so one matrix does both."""
    from scipy.fftpack import dct

    dct_low = dct(np.eye(PHASH_SIDE), axis=0)[:8]
    if size == PHASH_SIDE:
        return dct_low
    eye = Image.fromarray(np.eye(size, dtype=np.float32), mode="F")
    resize = np.asarray(eye.resize((PHASH_SIDE, size), Image.Resampling.LANCZOS), dtype=np.float64).T
    return dct_low @ resize


def _phash_low(grey: np.ndarray) -> np.ndarray:
    """The 8x8 lowest DCT frequencies of the image's 32x32 LANCZOS thumbnail: two small matmuls (numpy
    releases the GIL, so this runs in the decode threads)."""
    return _phash_projection(grey.shape[0]) @ grey.astype(np.float64) @ _phash_projection(grey.shape[1]).T


def _phash_bits(lows: Sequence[np.ndarray]) -> list[int]:
    """imagehash.phash's 64 bits: each low frequency above the image's median of them."""
    low = np.asarray(lows, dtype=np.float64).reshape(len(lows), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits, axis=1)]


def phash_batch(greys: Sequence[np.ndarray]) -> list[int]:
    """imagehash.phash of grey images of any size. Equal to imagehash on 32x32 input (tested); on
    larger input it skips imagehash's rounding of the thumbnail to uint8, which can flip a bit near
    the median."""
    return _phash_bits([_phash_low(grey) for grey in greys])


def _chunks(items: list[str], n: int) -> list[list[str]]:
    size = max(1, math.ceil(len(items) / n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _inspect_chunk(chunk: list[str], known: dict[str, ImageFacts] | None, index: FileIndex | None) -> list[ImageResult]:
    return [inspect_image(p, known, index) for p in chunk]


def inspect_images(
    paths: list[str],
    pool: ThreadPoolExecutor,
    known: dict[str, ImageFacts] | None = None,
    labels: Sequence[str] = (),
    nc: int = 0,
    index: FileIndex | None = None,
) -> Callable[[], tuple[list[ImageResult], list[ParsedLabel]]]:
    """Start inspecting `paths` (and parsing `labels`) in `pool`; returns a function that waits for the
    results and adds the images' perceptual hashes.

    Image and label chunks alternate in the queue so that one thread parses labels (Python, holds the
    GIL) while the other decodes JPEGs (GIL released): a thread doing only Python would make every
    decoding thread wait up to the interpreter's switch interval for the GIL after each image."""
    n_chunks = 4 * (os.cpu_count() or 1)
    image_futures: list[Future[list[ImageResult]]] = []
    label_futures: list[Future[list[ParsedLabel]]] = []
    for image_chunk, label_chunk in itertools.zip_longest(_chunks(paths, n_chunks), _chunks(list(labels), n_chunks)):
        if image_chunk:
            image_futures.append(pool.submit(_inspect_chunk, image_chunk, known, index))
        if label_chunk:
            label_futures.append(pool.submit(lambda chunk: [parse_label(p, nc) for p in chunk], label_chunk))

    def collect() -> tuple[list[ImageResult], list[ParsedLabel]]:
        results = [r for f in image_futures for r in f.result()]
        hashed = [r for r in results if r.phash_low is not None]
        if hashed:
            for r, code in zip(
                hashed, _phash_bits([r.phash_low for r in hashed if r.phash_low is not None]), strict=True
            ):
                r.phash, r.phash_low = code, None
                if r.new_facts is not None:
                    r.new_facts["phash"] = code
        return results, [r for f in label_futures for r in f.result()]

    return collect


_FACTS = TypeAdapter(dict[str, ImageFacts])


class FactsCache:
    """{sha256: decode facts} in one JSON file; content-keyed, so it can never be stale. The file name
    carries the format version and the decoders' versions (a new decoder may judge bytes differently).
    Untrusted when read: anything malformed is a cold cache."""

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / f"image-facts-v2-pillow{PIL.__version__}-simplejpeg{simplejpeg.__version__}.json"
        try:
            self.facts: dict[str, ImageFacts] = _FACTS.validate_json(self.path.read_bytes())
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            self.facts = {}

    def save(self, new: list[ImageResult]) -> None:
        new_facts = {r.sha256: r.new_facts for r in new if r.sha256 and r.new_facts is not None}
        if not new_facts:
            return
        self.facts.update(new_facts)
        atomic_write_text(self.path, json.dumps(self.facts))
