"""Guard rails on what a run is given: mistakes that would otherwise pass defects silently.

Each check looks at the files a run has found (relative paths and, for the overlap, file bytes),
never at pixels, so it costs next to nothing before the model loads:

- a dataset folder (MVTec AD or VisA layout) given as the images to score or as the references
  is refused: its ground-truth masks would be scored as photos, or its defects taken as good parts;
- references from a folder whose name says "defective" are worth a warning;
- references that are also images to score (same bytes, whatever the name) are refused: an image
  matches itself perfectly (vision score 0) and so always passes;
- an image so small that the model sees it enlarged more than ``MAX_UPSCALE``-fold is worth a
  warning in its results row.

The rules and their messages are listed in docs/input-handling.md.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Optional, Sequence

from fade_cli.config import EngineConfig
from fade_cli.backbone.file_hash import file_sha256
from fade_cli.core.errors import InputError
from fade_cli.io.images import ImageFile

# MVTec AD: CLASS/train/good, CLASS/test/<defect or good>, CLASS/ground_truth/<defect>/*_mask.png.
MVTEC_SPLITS = frozenset({"train", "test"})
MVTEC_MASKS = "ground_truth"
# VisA: ROOT/split_csv/1cls.csv, ROOT/CLASS/Data/Images/{Normal,Anomaly}, ROOT/CLASS/Data/Masks/Anomaly.
VISA_SPLIT_CSV = PurePath("split_csv", "1cls.csv")
VISA_MASKS = ("data", "masks")
MASK_FILE_SUFFIX = "_mask"  # MVTec's NNN_mask.png
TEST_SPLIT = "test"
# Class folders of a test split that hold good parts; every other one holds a kind of defect.
GOOD_CLASSES = frozenset({"good", "normal", "ok"})
# Folder names that say "defective" wherever they are.
DEFECT_NAMES = frozenset({"anomaly", "anomalous", "defect", "defects", "defective", "bad", "ng", "nok", "reject",
                          "rejected", "rejects"})
# Beyond this the image holds too little detail for the model's input: its score says little.
MAX_UPSCALE = 8.0
OVERLAPS_SHOWN = 5


@dataclass(frozen=True)
class DatasetFolder:
    """A folder with a dataset's layout, found among the files of a run, and why it is one.

    ``path`` is a class folder (MVTec: ``train/``, ``test/``, ``ground_truth/``; VisA: ``Data/``)
    or, with ``is_root``, a dataset root (VisA's ``split_csv/``).
    """

    path: Path
    why: str
    layout: Optional[str] = "mvtec"  # None: masks outside a dataset, which `fade eval` cannot take
    is_root: bool = False
    has_masks: bool = True

    def eval_command(self) -> str:
        """The `fade eval` command that measures fade on this dataset (it takes the folder of the class folders)."""
        if self.is_root:
            return f"fade eval {self.path} --dataset {self.layout}"
        folder = Path(os.path.abspath(self.path))
        return f"fade eval {os.path.relpath(folder.parent)} --dataset {self.layout} --classes {folder.name}"


def find_dataset(root: Path, files: Sequence[ImageFile]) -> Optional[DatasetFolder]:
    """The first dataset layout under ``root`` (or ``root`` inside a mask folder), judged from the files found."""
    base = Path(os.path.abspath(root)).parts
    inside = _mask_folder(base)
    if inside is not None:
        start, end, layout = inside
        return DatasetFolder(Path(os.path.relpath(PurePath(*base[:start]))),
                             f"it is a folder of ground-truth masks ({os.path.relpath(PurePath(*base[:end]))}), "
                             "not of photos", layout)
    if (root / VISA_SPLIT_CSV).is_file():
        return DatasetFolder(root, f"it holds a VisA split file ({VISA_SPLIT_CSV.as_posix()})", "visa", is_root=True)
    children: dict[tuple[str, ...], set[str]] = {}
    for file in files:
        folders = PurePath(file.relative).parts[:-1]
        masks = _mask_folder(folders)
        if masks is not None:
            start, end, layout = masks
            return DatasetFolder(root.joinpath(*folders[:start]),
                                 f"it holds ground-truth masks ({root.joinpath(*folders[:end])})", layout)
        if _is_mask_file(root, file):
            return DatasetFolder(root.joinpath(*folders), f"it holds mask files ({file.relative})", layout=None)
        for depth, name in enumerate(folders):
            children.setdefault(folders[:depth], set()).add(name.lower())
    for prefix, names in sorted(children.items()):
        if MVTEC_SPLITS <= names:
            return DatasetFolder(root.joinpath(*prefix), "it holds train/ and test/ splits (the MVTec AD layout)",
                                 has_masks=False)
    return None


def refuse_dataset_images(root: Path, files: Sequence[ImageFile]) -> None:
    """Refuse a dataset folder as the images to score: its masks are not photos, and `fade eval` measures it."""
    found = find_dataset(root, files)
    if found is None:
        return
    test = found.path / TEST_SPLIT
    measure = f" To measure fade on the dataset run `{found.eval_command()}`." if found.layout else ""
    where = f"score its test images ({test})" if test.is_dir() else "score a folder of product photos"
    wrong = ("Masks would be scored as product photos" if found.has_masks
             else "Its good training images would be scored as parts to inspect")
    raise InputError(f"{root} is not a folder of images to inspect: {found.why}. {wrong}.{measure} To inspect parts, "
                     f"{where}")


def refuse_dataset_references(root: Path, files: Sequence[ImageFile]) -> None:
    """Refuse a dataset folder as references: its test defects and masks would count as good parts."""
    found = find_dataset(root, files)
    if found is None:
        return
    good = found.path / "train" / "good"
    where = f"its good training images ({good})" if good.is_dir() else "a folder of good parts only"
    raise InputError(f"the references {root} are not a folder of good parts: {found.why}. Its defective images and "
                     f"masks would be taken as good parts, so defects would pass. Give {where} as the references")


def defect_like_folder(root: Path, files: Sequence[ImageFile]) -> Optional[str]:
    """The first folder of the references whose name says it holds defects, or None.

    Such a folder is a class of a test split other than good/normal/ok (``test/cracked``), or a
    folder named like ``defect``, ``anomaly`` or ``ng``. Only ``root``, its parent and the folders
    below it are judged: the names higher up (a user called ``ng``) say nothing about the parts.
    """
    given = root if root.is_dir() else root.parent
    folder = Path(os.path.abspath(given))
    above = (folder.parent.name, folder.name)
    for file in files:
        names = above + PurePath(file.relative).parts[:-1]
        for index in range(1, len(names)):
            name = names[index].lower()
            if (names[index - 1].lower() == TEST_SPLIT and name not in GOOD_CLASSES) or name in DEFECT_NAMES:
                return given.joinpath(*names[2 : index + 1]).as_posix()
    return None


def defect_reference_warning(root: Path, files: Sequence[ImageFile]) -> Optional[str]:
    """A warning when the references come from a folder that seems to hold defects (:func:`defect_like_folder`)."""
    folder = defect_like_folder(root, files)
    if folder is None:
        return None
    return (f"the references come from {folder}, a folder whose name says it holds defective parts; references "
            "must be good parts, or defects like them will pass as OK")


def shared_content(references: Sequence[ImageFile], queries: Sequence[ImageFile]) -> list[tuple[ImageFile, ImageFile]]:
    """(query, reference) pairs of files with the same bytes (SHA-256), the same file included.

    Only files of a size some reference has are read, so a run whose images differ from the
    references reads nothing. Files that are not regular files (a FIFO would block) are skipped:
    the run reports them as unreadable.
    """
    by_size: dict[int, list[ImageFile]] = {}
    for reference in references:
        size = _regular_size(reference.path)
        if size is not None:
            by_size.setdefault(size, []).append(reference)
    pairs = []
    for query in queries:
        candidates = by_size.get(_regular_size(query.path), [])  # type: ignore[arg-type]
        digest = _sha256(query.path) if candidates else None
        match = next((ref for ref in candidates if digest is not None and _sha256(ref.path) == digest), None)
        if match is not None:
            pairs.append((query, match))
    return pairs


def refuse_shared_content(references: Sequence[ImageFile], queries: Sequence[ImageFile]) -> None:
    """Refuse a run whose references include images it scores: those would always pass."""
    pairs = shared_content(references, queries)
    if not pairs:
        return
    shown = ", ".join(f"{query.path} (= reference {ref.path})" for query, ref in pairs[:OVERLAPS_SHOWN])
    more = f" and {len(pairs) - OVERLAPS_SHOWN} more" if len(pairs) > OVERLAPS_SHOWN else ""
    raise InputError(f"{len(pairs)} image(s) to score are also references (the same file content): {shown}{more}. "
                     "An image matches itself perfectly (vision score 0), so it would always pass. Keep the "
                     "references apart from the images to inspect")


def smallest_input_size(config: EngineConfig) -> int:
    """The smallest side the model is given an image at: the least it enlarges any image."""
    return min(config.cls_size, *config.seg_sizes)


def upscale_warning(width: int, height: int, input_size: int) -> Optional[str]:
    """Why the score of a ``width`` x ``height`` image says little, when the model enlarges it more than
    ``MAX_UPSCALE``-fold (along its shorter side) to ``input_size``; else None."""
    factor = input_size / max(1, min(width, height))
    if factor <= MAX_UPSCALE:
        return None
    return (f"scored, but the image is only {width} x {height} pixels: the model sees it enlarged {factor:.0f}-fold "
            f"(to {input_size} x {input_size}, more than {MAX_UPSCALE:g}-fold), so its score says little; "
            "use a photo of at least "
            f"{-(-input_size // int(MAX_UPSCALE))} pixels on its shorter side")


def _mask_folder(folders: Sequence[str]) -> Optional[tuple[int, int, str]]:
    """Where a mask folder (MVTec's ``ground_truth``, VisA's ``Data/Masks``) is in ``folders``: (start, end, layout)."""
    lowered = [name.lower() for name in folders]
    if MVTEC_MASKS in lowered:
        index = lowered.index(MVTEC_MASKS)
        return index, index + 1, "mvtec"
    for index in range(len(lowered) - 1):
        if tuple(lowered[index : index + 2]) == VISA_MASKS:
            return index, index + 2, "visa"
    return None


def _is_mask_file(root: Path, file: ImageFile) -> bool:
    """A file named like a mask (``001_mask.png``) in a folder named like masks (``original_rgba_masks/``).

    Both are asked for: a product photo may well be called ``face_mask.jpg``.
    """
    folders = (Path(os.path.abspath(root if root.is_dir() else root.parent)).name,
               *PurePath(file.relative).parts[:-1])
    return (PurePath(file.relative).stem.lower().endswith(MASK_FILE_SUFFIX)
            and any("mask" in folder.lower() for folder in folders))


def _regular_size(path: Path) -> Optional[int]:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _sha256(path: Path) -> Optional[str]:
    try:
        return file_sha256(str(path))
    except OSError:
        return None


def check_run_inputs(images: Path, files: Sequence[ImageFile], refs: Optional[Path],
                     ref_files: Sequence[ImageFile]) -> list[str]:
    """Every check on the images to score and their references (refusals raise :class:`InputError`);
    the warnings to show."""
    refuse_dataset_images(images, files)
    if refs is None:
        return []
    warnings = check_reference_folder(refs, ref_files)
    refuse_shared_content(ref_files, files)
    return warnings


def check_reference_folder(refs: Path, ref_files: Sequence[ImageFile]) -> list[str]:
    """The checks on a folder of references alone (a bank is built from one); the warnings to show."""
    refuse_dataset_references(refs, ref_files)
    warning = defect_reference_warning(refs, ref_files)
    return [warning] if warning else []
