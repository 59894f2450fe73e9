"""Dataset layouts (mvtec, folder, visa), their error messages, and the seeded reference draw."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fade_cli.core.errors import InputError
from fade_cli.evaluation.datasets import detect_layout, load_dataset
from fade_cli.evaluation.plan import EvalSettings, plan_runs
from fade_cli.evaluation.shots import choose_references

COOKIE_ROOT = Path(__file__).parent.parent / "examples" / "cookie"


def image(path: Path, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 0).save(path)
    return path


def mvtec_tree(root: Path, suffix: str = "_mask", ext: str = ".png") -> Path:
    for name in ("a.png", "b.png", "c.png"):
        image(root / "widget" / "train" / "good" / name)
    image(root / "widget" / "test" / "good" / "g1.png")
    image(root / "widget" / "test" / "scratch" / "s1.png")
    image(root / "widget" / "test" / "scratch" / "s2.png")
    image(root / "widget" / "ground_truth" / "scratch" / f"s1{suffix}{ext}")
    return root


def test_mvtec_layout_of_the_cookie_example():
    [split] = load_dataset(COOKIE_ROOT, "mvtec")  # original_rgba_masks/ next to it is not a class
    assert split.name == "cookie"
    assert [s.relative for s in split.test] == [
        "cookie/test/cracked/001.jpg", "cookie/test/cracked/002.jpg", "cookie/test/cracked/003.jpg",
        "cookie/test/good/001.jpg", "cookie/test/good/002.jpg"]
    assert [s.anomalous for s in split.test] == [True, True, True, False, False]
    assert split.test[0].mask == COOKIE_ROOT / "cookie" / "ground_truth" / "cracked" / "001_mask.png"
    assert split.test[3].mask is None
    assert [f.relative for f in split.train_good] == [f"cookie/train/good/00{i}.jpg" for i in (1, 2, 3)]
    assert detect_layout(COOKIE_ROOT) == "mvtec"


def test_missing_mask_is_reported_not_an_error(tmp_path):
    [split] = load_dataset(mvtec_tree(tmp_path), "mvtec")
    masks = {s.relative: s.mask for s in split.test}
    assert masks["widget/test/scratch/s1.png"].name == "s1_mask.png"
    assert masks["widget/test/scratch/s2.png"] is None


def test_folder_layout_takes_a_mask_suffix_and_any_extension(tmp_path):
    root = mvtec_tree(tmp_path, suffix="-gt", ext=".bmp")
    [split] = load_dataset(root, "folder", mask_suffix="-gt")
    assert split.test[1].mask.name == "s1-gt.bmp"
    [strict] = load_dataset(root, "mvtec")  # mvtec wants <name>_mask.png
    assert strict.test[1].mask is None


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: (r / "widget" / "test" / "good" / "g1.png").rename(r / "widget" / "test" / "g1.png"),
         r"unexpected file .*widget/test/g1\.png"),
        (lambda r: image(r / "widget" / "test" / "scratch" / "deeper" / "x.png"),
         r"unexpected folder .*widget/test/scratch/deeper"),
        (lambda r: image(r / "gadget" / "train" / "good" / "a.png"), r"missing .*gadget/test"),
        (lambda r: [p.unlink() for p in (r / "widget" / "test" / "good").iterdir()]
         and (r / "widget" / "test" / "good").rmdir(), r"missing .*widget/test/good"),
    ],
)
def test_malformed_mvtec_layout_names_the_first_bad_path(tmp_path, breakage, message):
    root = mvtec_tree(tmp_path)
    breakage(root)
    with pytest.raises(InputError, match=message):
        load_dataset(root, "mvtec")


def test_class_selection_and_wrong_root(tmp_path):
    root = mvtec_tree(tmp_path)
    with pytest.raises(InputError, match=r"class 'nut' not found; classes there: widget"):
        load_dataset(root, "mvtec", classes=["nut"])
    with pytest.raises(InputError, match="single class folder.*--classes widget"):
        load_dataset(root / "widget", "mvtec")
    with pytest.raises(InputError, match="dataset folder not found"):
        load_dataset(root / "nowhere", "mvtec")


def visa_tree(root: Path, rows: list[str]) -> Path:
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("object,split,label,image,mask\n" + "".join(r + "\n" for r in rows))
    for row in rows:
        for relative in row.split(",")[3:]:
            if relative and not relative.startswith("missing"):
                image(root / relative)
    return root


VISA_ROWS = [
    "pcb1,train,normal,pcb1/Data/Images/Normal/0001.JPG,",
    "pcb1,train,normal,pcb1/Data/Images/Normal/0002.JPG,",
    "pcb1,test,normal,pcb1/Data/Images/Normal/0100.JPG,",
    "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png",
    "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/001.JPG,",
    "candle,test,normal,candle/Data/Images/Normal/0000.JPG,",
]


def test_visa_layout(tmp_path):
    root = visa_tree(tmp_path, VISA_ROWS)
    assert detect_layout(root) == "visa"
    candle, pcb = load_dataset(root, "visa")
    assert (candle.name, pcb.name) == ("candle", "pcb1")
    assert [s.defect for s in pcb.test] == ["anomaly", "anomaly", "good"]
    assert pcb.test[0].mask == root / "pcb1/Data/Masks/Anomaly/000.png"
    assert pcb.test[1].mask is None  # reported as missing for pixel metrics
    assert [f.relative for f in pcb.train_good] == ["pcb1/Data/Images/Normal/0001.JPG",
                                                    "pcb1/Data/Images/Normal/0002.JPG"]
    assert [s.name for s in load_dataset(root, "visa", classes=["pcb1"])] == ["pcb1"]


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (VISA_ROWS, "object,split,label,image\n", r"lacks the column\(s\) mask"),
        (["pcb1,val,normal,pcb1/a.JPG,"], None, r"line 2: unexpected split 'val'"),
        (["pcb1,test,bad,pcb1/a.JPG,"], None, r"line 2: unexpected label 'bad'"),
        (["pcb1,test,normal,missing/a.JPG,"], None, r"missing .*missing/a\.JPG \(listed in .*1cls\.csv line 2\)"),
        (["pcb1,test,anomaly,pcb1/a.JPG,missing/m.png"], None, r"missing .*missing/m\.png"),
    ],
)
def test_malformed_visa_layout(tmp_path, rows, header, message):
    root = visa_tree(tmp_path, rows)
    if header:
        csv_path = root / "split_csv" / "1cls.csv"
        csv_path.write_text(header + csv_path.read_text().split("\n", 1)[1])
    with pytest.raises(InputError, match=message):
        load_dataset(root, "visa")


def test_visa_without_csv_names_it(tmp_path):
    with pytest.raises(InputError, match=r"missing .*split_csv/1cls\.csv"):
        load_dataset(tmp_path, "visa")


def test_reference_draw_is_seeded_nested_and_order_free(tmp_path):
    [split] = load_dataset(mvtec_tree(tmp_path), "mvtec")
    draws = {seed: [f.relative for f in choose_references(split, 3, seed)] for seed in range(6)}
    assert all(sorted(d) == [f.relative for f in split.train_good] for d in draws.values())
    assert len({tuple(d) for d in draws.values()}) > 1  # seeds change the draw
    for seed in range(6):
        assert [f.relative for f in choose_references(split, 1, seed)] == draws[seed][:1]
        assert choose_references(split, 2, seed) == choose_references(split, 2, seed)
    reversed_split = type(split)(split.name, split.test, split.train_good[::-1], split.train_source)
    assert choose_references(reversed_split, 2, 4) == choose_references(split, 2, 4)


def test_too_few_good_images_fail_before_any_run(tmp_path):
    [split] = load_dataset(mvtec_tree(tmp_path), "mvtec")
    with pytest.raises(InputError, match=r"--shots 4 needs 4 good training image\(s\), but .*train/good holds 3"):
        plan_runs([split], EvalSettings(shots=4, seeds=(0,)))
    runs = plan_runs([split], EvalSettings(shots=0, seeds=(0, 1, 2)))
    assert [(r.seed, r.references) for r in runs] == [(None, ())]
    assert [r.seed for r in plan_runs([split], EvalSettings(shots=1, seeds=(3, 5)))] == [3, 5]
