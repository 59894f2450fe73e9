"""The MVTec-AD layout, also used for plain labelled folders (``folder``)::

    ROOT/<class>/train/good/*.png
    ROOT/<class>/test/good/*.png
    ROOT/<class>/test/<defect>/*.png
    ROOT/<class>/ground_truth/<defect>/<name>_mask.png

``mvtec`` requires test/good and PNG masks named ``<name>_mask.png``; ``folder``
accepts any mask suffix and image extension and does not require test/good.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from fade_cli.core.errors import InputError
from fade_cli.evaluation.samples import GOOD, ClassSplit, TestSample
from fade_cli.io.images import IMAGE_EXTENSIONS, ImageFile, is_image_file


def load_mvtec(root: Path, classes: Optional[Sequence[str]], mask_suffix: str, strict: bool) -> list[ClassSplit]:
    """Read the classes (default: every class folder, sorted); ``strict`` is the ``mvtec`` flavour."""
    mask_extensions = (".png",) if strict else tuple(sorted(IMAGE_EXTENSIONS))
    names = list(classes) if classes else discover_class_names(root)
    return [_load_mvtec_class(root, name, mask_suffix, mask_extensions, strict) for name in names]


CLASS_PARTS = ("train", "test", "ground_truth")


def discover_class_names(root: Path) -> list[str]:
    """Sub-folders of ROOT that hold train/, test/ or ground_truth/; each of them must hold test/.

    Other sub-folders (extra material next to the classes) are not classes and are skipped.
    """
    if (root / "test").is_dir():
        raise InputError(
            f"{root} looks like a single class folder (it holds test/); pass its parent folder "
            f"and --classes {root.name}"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [folder for folder in folders if any((folder / part).is_dir() for part in CLASS_PARTS)]
    if not classes:
        raise InputError(f"missing {root / '<class>' / 'test'}: no class folder in {root}")
    for folder in classes:
        _require_dir(folder / "test")
    return [folder.name for folder in classes]


def _load_mvtec_class(
    root: Path, name: str, mask_suffix: str, mask_extensions: tuple[str, ...], strict: bool
) -> ClassSplit:
    class_dir = root / name
    if not class_dir.is_dir():
        found = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
        raise InputError(f"missing {class_dir} (class {name!r} not found; classes there: {found or 'none'})")
    test_dir = class_dir / "test"
    _require_dir(test_dir)
    if strict:
        _require_dir(test_dir / GOOD)
    samples = []
    for defect_dir in _defect_folders(test_dir):
        for image_path in _flat_images(defect_dir):
            mask = None
            if defect_dir.name != GOOD:
                mask = _find_mask(class_dir / "ground_truth" / defect_dir.name, image_path.stem, mask_suffix,
                                  mask_extensions)
            relative = image_path.relative_to(root).as_posix()
            samples.append(TestSample(image_path, relative, defect_dir.name, mask))
    if not samples:
        raise InputError(f"no test image under {test_dir}")
    train_dir = class_dir / "train" / GOOD
    if not train_dir.is_dir():
        return ClassSplit(name, tuple(samples), (), f"{train_dir} (missing)")
    train = tuple(ImageFile(p, p.relative_to(root).as_posix()) for p in _flat_images(train_dir))
    return ClassSplit(name, tuple(samples), train, str(train_dir))


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise InputError(f"missing {path}" + (" (it is a file, a folder is expected)" if path.exists() else ""))


def _defect_folders(test_dir: Path) -> list[Path]:
    """The defect-type folders of test/; an image lying directly in test/ is unexpected."""
    folders = []
    for entry in sorted(test_dir.iterdir()):
        if entry.is_file() and is_image_file(entry):
            raise InputError(f"unexpected file {entry}: test images belong in test/<defect>/ (good ones in test/good/)")
        if entry.is_dir() and not entry.name.startswith("."):
            folders.append(entry)
    return folders


def _flat_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (non-image files are ignored); a sub-folder is unexpected."""
    images = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            raise InputError(f"unexpected folder {entry}: images are expected directly in {folder}")
        if is_image_file(entry):
            images.append(entry)
    return images


def _find_mask(mask_dir: Path, stem: str, suffix: str, extensions: tuple[str, ...]) -> Optional[Path]:
    for extension in extensions:
        for candidate in (mask_dir / f"{stem}{suffix}{extension}", mask_dir / f"{stem}{suffix}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None
