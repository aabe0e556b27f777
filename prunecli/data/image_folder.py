"""``format: image_folder``: ``root/<class_name>/*.png|jpg``, one folder per class.

Class names sorted alphabetically give the label indices (``cat`` -> 0, ``dog`` -> 1). Images are
read with Pillow as RGB (or one channel with ``data.grayscale``), resized to ``data.image_size``
([height, width]) when given, and returned as CHW; their 8-bit pixels become [0, 1] in
``make_split``, as uint8 inputs do in every format. When both ``data.train`` and ``data.eval``
are set they must hold the same class folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.data.dataset import DataSet, Split, make_split
from prunecli.data.files import resolve_data_path, short_reason
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read(spec: DataSpec, *, base_dir: Path) -> DataSet:
    """Read the ``data.train`` and ``data.eval`` folders, checking they name the same classes."""
    if spec.train is None and spec.eval is None:
        raise InputError("data.format 'image_folder' reads folders: set data.train and/or data.eval, or pass --data")
    roots = {
        field: resolve_data_path(path, base_dir=base_dir, field=field)
        for field, path in (("train", spec.train), ("eval", spec.eval))
        if path is not None
    }
    class_names = {field: list_classes(root) for field, root in roots.items()}
    if len(set(map(tuple, class_names.values()))) > 1:
        raise InputError(
            f"train classes {class_names['train']} differ from eval classes {class_names['eval']}; "
            "use the same class folders in both"
        )
    splits = {field: read_folder(root, spec) for field, root in roots.items()}
    return DataSet(train=splits.get("train"), eval=splits.get("eval"))


def list_classes(root: Path) -> list[str]:
    """The class folder names under ``root``, sorted: position = label index."""
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; image_folder data is root/<class_name>/*.png")
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise InputError(f"{root} has no class folders; put images in {root}/<class_name>/")
    return names


def read_folder(root: Path, spec: DataSpec) -> Split:
    """Every image under ``root/<class_name>/`` as a Split of float32 (N, C, H, W) in [0, 1]."""
    files = [
        (path, label)
        for label, name in enumerate(list_classes(root))
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise InputError(f"{root} has no .png or .jpg images in its class folders; add images")
    images = [_read_image(path, spec) for path, _ in files]
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise InputError(f"images under {root} have different sizes {shapes[:3]}; set data.image_size: [height, width]")
    labels = np.array([label for _, label in files], dtype=np.int64)
    return make_split(np.stack(images), labels, source=str(root))


def _read_image(path: Path, spec: DataSpec) -> np.ndarray:
    """One image as uint8 (C, H, W), pixels 0..255."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if spec.grayscale else "RGB")
            if spec.image_size is not None:
                height, width = spec.image_size
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)  # (H, W) or (H, W, 3)
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"cannot read image {path} ({short_reason(error)}); replace or remove it") from error
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
