"""Tests of plugattn.data: formats, loaders, augmentation, determinism, sharding, errors, mixup.

Every dataset file is written here in its official format (IDX, CIFAR pickles, PNG folders) and
read back through the real code path; nothing needs the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from plugattn.data import (
    DATASETS,
    AugConfig,
    DataError,
    DatasetInfo,
    MixupCutmix,
    build_loader,
    get_dataset_info,
    parse_randaugment,
    smooth_one_hot,
    sources,
)
from plugattn.data.augment import _OPS, RANDAUGMENT_OPS, BatchAugmenter

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FM_MEAN, FM_STD = 0.2860, 0.3530


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No system copies, no $PLUGATTN_DATA, a private download cache and an empty decode cache."""
    monkeypatch.delenv("PLUGATTN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {})
    sources.clear_cache()
    yield
    sources.clear_cache()


# ----------------------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_fashion(folder: Path, n_train: int = 43, n_test: int = 17, seed: int = 0, compress: bool = True):
    """Tiny Fashion-MNIST in the official IDX layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress)
        data[split] = (images, labels)
    return data


def make_cifar10(root: Path, per_batch: int = 6, protocol: int = 2):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for fname in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": f"{fname} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        split = "test" if fname == "test_batch" else "train"
        out[split][0].append(data)
        out[split][1].extend(labels)
    meta = {
        b"label_names": [
            n.encode()
            for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        ],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return {k: (np.concatenate(v[0]).reshape(-1, 3, 32, 32), np.array(v[1])) for k, v in out.items()}


def make_cifar100(root: Path, n: int = 10, protocol: int = 4):
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        batch = {
            b"filenames": [b"x.png"] * n,
            b"batch_label": split.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": data,
        }
        with open(folder / split, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        out[split] = (data.reshape(-1, 3, 32, 32), np.array(fine))
    meta = {
        b"fine_label_names": [f"c{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return out


def make_imagefolder(root: Path, classes=("ant", "bee", "cat"), n_train: int = 4, n_val: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def collect(loader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return xs, ys


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------------------- names / info


def test_dataset_names_and_static_info():
    assert DATASETS == ("fashion-mnist", "digits", "cifar10", "cifar100", "imagefolder")
    info = get_dataset_info("Fashion_MNIST")
    assert info == get_dataset_info("fashion-mnist")
    assert (info.num_classes, info.in_chans, info.image_size) == (10, 1, (28, 28))
    assert (info.mean, info.std, info.train_size, info.test_size) == ((0.2860,), (0.3530,), 60000, 10000)
    c100 = get_dataset_info("cifar-100")
    assert (c100.name, c100.num_classes, c100.in_chans, len(c100.mean)) == ("cifar100", 100, 3, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3


def test_unknown_dataset_suggests_close_match():
    with pytest.raises(DataError, match="did you mean 'cifar10'") as exc:
        get_dataset_info("cifar01")
    assert "known datasets are fashion-mnist" in one_line(exc)
    with pytest.raises(DataError, match="did you mean 'fashion-mnist'"):
        build_loader("fashion-mnst", "train", batch_size=4, train=True)


# ----------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("layout", ["flat-gz", "flat-raw", "torchvision-raw"])
def test_fashion_idx_loads_in_order_and_normalises(tmp_path, layout):
    folder = {"flat-gz": tmp_path, "flat-raw": tmp_path, "torchvision-raw": tmp_path / "FashionMNIST" / "raw"}[layout]
    data = make_fashion(folder, compress=layout != "flat-raw")
    loader = build_loader("fashion-mnist", "test", batch_size=8, train=False, data_dir=tmp_path, download=False)
    xs, ys = collect(loader)
    assert [len(y) for y in ys] == [8, 8, 1]  # test split keeps the last partial batch
    x, y = torch.cat(xs), torch.cat(ys)
    images, labels = data["test"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (17, 1, 28, 28)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    expected = (images[5, 7, 11] / 255.0 - FM_MEAN) / FM_STD
    assert x[5, 0, 7, 11].item() == pytest.approx(expected, abs=1e-5)
    full = (torch.from_numpy(images).float() / 255 - FM_MEAN) / FM_STD
    torch.testing.assert_close(x[:, 0], full, atol=1e-5, rtol=0)
    assert loader.info.test_size == 17 and loader.dataset_size == 17 and loader.num_samples == 17


def test_fashion_lookup_order_data_dir_then_env(tmp_path, monkeypatch):
    env_root = tmp_path / "env"
    env_data = make_fashion(env_root / "fashion-mnist", n_test=9, seed=5)
    monkeypatch.setenv("PLUGATTN_DATA", str(env_root))
    y_env = torch.cat(collect(build_loader("fashion-mnist", "test", batch_size=4, train=False, download=False))[1])
    assert torch.equal(y_env, torch.from_numpy(env_data["test"][1].astype(np.int64)))
    own = make_fashion(tmp_path / "own", n_test=11, seed=6)
    loader = build_loader("fashion-mnist", "test", batch_size=4, train=False, data_dir=tmp_path / "own", download=False)
    assert torch.equal(torch.cat(collect(loader)[1]), torch.from_numpy(own["test"][1].astype(np.int64)))


def test_fashion_missing_files_message(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        build_loader("fashion-mnist", "train", batch_size=4, train=True, data_dir=empty, download=False)
    msg = one_line(exc)
    assert f"--data-dir {empty}" in msg and "$PLUGATTN_DATA" in msg and "download=False" in msg
    assert "apt-get install dataset-fashion-mnist" in msg

    calls = []

    def offline(root):
        calls.append(root)
        raise OSError("network unreachable")

    monkeypatch.setattr(sources, "_download_fashion_mnist", offline)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "nowhere",)})
    with pytest.raises(DataError, match=r"download failed \(offline\?") as exc:
        build_loader("fashion-mnist", "train", batch_size=4, train=True, data_dir=empty)
    assert calls == [empty] and str(tmp_path / "nowhere") in one_line(exc)


def test_truncated_and_corrupt_idx(tmp_path):
    make_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # truncated gzip stream
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz") as exc:
        build_loader("fashion-mnist", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)
    assert "corrupt or truncated" in one_line(exc)

    raw = gzip.decompress(blob)
    path.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, data shorter than the header says
    with pytest.raises(DataError, match="is truncated: "):
        build_loader("fashion-mnist", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)

    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))  # label magic on an image file
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        build_loader("fashion-mnist", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)


def test_fashion_decoded_once(tmp_path, monkeypatch):
    make_fashion(tmp_path)
    calls = []
    real = sources.read_idx

    def counting(path, ndim):
        calls.append(Path(path).name)
        return real(path, ndim)

    monkeypatch.setattr(sources, "read_idx", counting)
    a = build_loader("fashion-mnist", "train", batch_size=4, train=True, data_dir=tmp_path, download=False)
    b = build_loader("fashion-mnist", "train", batch_size=8, train=False, data_dir=tmp_path, download=False)
    assert sorted(calls) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert a.images is b.images


# ----------------------------------------------------------------------------------------- digits


def test_digits_split_and_pixels():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    train = build_loader("digits", "train", batch_size=100, train=False)
    test = build_loader("digits", "test", batch_size=100, train=False)
    assert (train.dataset_size, test.dataset_size) == (1437, 360)
    assert train.info.image_size == (8, 8) and train.info.num_classes == 10
    x, y = (torch.cat(t) for t in collect(test))
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 per class
    bunch = sklearn_datasets.load_digits()
    _, test_idx = train_test_split(np.arange(1797), test_size=360, stratify=bunch.target, random_state=0)
    test_idx = np.sort(test_idx)  # the documented split, original order kept
    raw = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.images[:, 0].numpy(), raw[test_idx])
    assert np.array_equal(y.numpy(), bunch.target[test_idx])
    v = int(raw[test_idx[0], 3, 4])
    assert x[0, 0, 3, 4].item() == pytest.approx((v / 255 - 0.3054) / 0.3760, abs=1e-5)


# ----------------------------------------------------------------------------------------- CIFAR


def test_cifar10_official_pickles(tmp_path):
    data = make_cifar10(tmp_path, per_batch=6, protocol=2)
    loader = build_loader("cifar10", "train", batch_size=7, train=False, data_dir=tmp_path, download=False)
    x, y = (torch.cat(t) for t in collect(loader))
    images, labels = data["train"]
    assert x.shape == (30, 3, 32, 32) and torch.equal(y, torch.from_numpy(labels))
    info = loader.info
    assert info.classes[:3] == ("airplane", "automobile", "bird") and info.train_size == 30
    for c in range(3):
        expected = (images[13, c, 20, 9] / 255 - info.mean[c]) / info.std[c]
        assert x[13, c, 20, 9].item() == pytest.approx(expected, abs=1e-5)
    test = build_loader("cifar10", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)
    assert torch.equal(torch.cat(collect(test)[1]), torch.from_numpy(data["test"][1]))


def test_cifar100_official_pickles(tmp_path):
    data = make_cifar100(tmp_path, n=10, protocol=4)
    loader = build_loader("cifar100", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)
    x, y = (torch.cat(t) for t in collect(loader))
    assert torch.equal(y, torch.from_numpy(data["test"][1]))
    assert loader.info.num_classes == 100 and loader.info.classes[99] == "c99"
    img = data["test"][0]
    assert x[4, 2, 0, 31].item() == pytest.approx((img[4, 2, 0, 31] / 255 - 0.4409) / 0.2762, abs=1e-5)


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 not found in --data-dir") as exc:
        build_loader("cifar10", "train", batch_size=4, train=True, data_dir=tmp_path, download=False)
    assert "cifar-10-batches-py/" in one_line(exc)
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch is corrupt or truncated") as exc:
        build_loader("cifar10", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)
    one_line(exc)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_forbidden_global_is_refused_without_running(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load global (posix|os|nt)\.system") as exc:
        build_loader("cifar10", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)
    assert "NOT loaded" in one_line(exc)
    assert not marker.exists()

    # An object-dtype numpy array would let pickled Python objects in: refused too.
    path.write_bytes(pickle.dumps({b"data": np.array([1, "a"], dtype=object), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="Python objects"):
        build_loader("cifar10", "test", batch_size=4, train=False, data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------------------- augmentation


@pytest.fixture
def fashion_dir(tmp_path):
    make_fashion(tmp_path / "fm", n_train=43, n_test=17)
    return tmp_path / "fm"


def _plain_and_aug(fashion_dir, aug, **kw):
    common = dict(batch_size=8, data_dir=fashion_dir, download=False, seed=3, **kw)
    plain = build_loader("fashion-mnist", "train", train=True, **common)
    augd = build_loader("fashion-mnist", "train", train=True, aug=aug, **common)
    return collect(plain), collect(augd)


def test_flip_gives_original_or_mirror(fashion_dir):
    (px, py), (ax, ay) = _plain_and_aug(fashion_dir, AugConfig(hflip=True))
    assert [y.tolist() for y in py] == [y.tolist() for y in ay]  # same order, only pixels change
    p, a = torch.cat(px), torch.cat(ax)
    assert p.shape == a.shape == (40, 1, 28, 28)
    same = (a == p).flatten(1).all(1)
    mirrored = (a == p.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 5 <= int(mirrored.sum()) <= 35  # about half are flipped


def test_random_crop_and_flip_is_a_zero_padded_shift_of_original_or_mirror(fashion_dir):
    pad = 3
    (px, _), (ax, _) = _plain_and_aug(fashion_dir, AugConfig(random_crop_padding=pad, hflip=True))
    p, a = torch.cat(px), torch.cat(ax)
    zero = (0 - FM_MEAN) / FM_STD
    found = []
    for i in range(len(p)):
        hits = []
        for mirrored, src in ((False, p[i, 0]), (True, p[i, 0].flip(-1))):
            padded = torch.nn.functional.pad(src, (pad, pad, pad, pad), value=zero)
            hits += [
                (mirrored, dy, dx)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                if torch.equal(padded[dy : dy + 28, dx : dx + 28], a[i, 0])
            ]
        assert len(hits) == 1, f"sample {i} is not one shifted crop of the image or its mirror: {hits}"
        found.append(hits[0])
    assert len({(dy, dx) for _, dy, dx in found}) > 5
    # Row and column offsets are drawn independently (a mirrored crop at offset ox shows as dx = 2p - ox).
    assert any(dy != (2 * pad - dx if m else dx) for m, dy, dx in found)
    assert 5 <= sum(m for m, _, _ in found) <= 35  # about half mirrored


def test_all_augmentations_keep_shape_and_change_pixels(fashion_dir):
    aug = AugConfig(
        random_crop_padding=2,
        hflip=True,
        randaugment="rand-m9-mstd0.5-inc1",
        color_jitter=0.4,
        random_erasing=0.5,
        random_resized_crop=True,
        scale=(0.5, 1.0),
    )
    (px, _), (ax, _) = _plain_and_aug(fashion_dir, aug)
    p, a = torch.cat(px), torch.cat(ax)
    assert a.shape == p.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    changed = ~torch.isclose(a, p).flatten(1).all(1)
    assert int(changed.sum()) >= 38


def test_image_size_resizes_train_and_test(fashion_dir):
    aug = AugConfig(image_size=32, hflip=True)
    tr = build_loader("fashion-mnist", "train", batch_size=8, train=True, aug=aug, data_dir=fashion_dir, download=False)
    te = build_loader("fashion-mnist", "test", batch_size=8, train=False, aug=aug, data_dir=fashion_dir, download=False)
    assert next(iter(tr))[0].shape == (8, 1, 32, 32) and next(iter(te))[0].shape == (8, 1, 32, 32)
    assert tr.info.image_size == (32, 32) == te.info.image_size


def test_randaugment_parsing_and_ops():
    spec = parse_randaugment("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.num_ops, spec.magnitude_std, spec.increasing, spec.prob) == (9.0, 2, 0.5, True, 0.5)
    assert parse_randaugment("rand-n3-m5-p1.0-mstd101").magnitude_std == float("inf")
    with pytest.raises(DataError, match="cannot parse 'x9'"):
        parse_randaugment("rand-x9")
    with pytest.raises(DataError, match="must start with 'rand'"):
        AugConfig(randaugment="augmix-m5")
    assert len(RANDAUGMENT_OPS[False]) == len(RANDAUGMENT_OPS[True]) == 15

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 12, 12), generator=g, dtype=torch.uint8)
    level, sign, fill = torch.full((4,), 0.5), torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.zeros(1, 3, 1, 1)
    for name, op in _OPS.items():
        out = op(x, level, sign, fill, "bilinear")
        assert out.shape == x.shape and out.dtype == torch.uint8, name
    assert torch.equal(_OPS["Invert"](x, level, sign, fill, "bilinear"), 255 - x)
    assert torch.equal(_OPS["Posterize"](x, level, sign, fill, "bilinear"), x & 0b11000000)  # level .5 -> 2 bits
    sol = _OPS["Solarize"](x, level, sign, fill, "bilinear")  # threshold 128
    assert torch.equal(sol, torch.where(x >= 128, 255 - x, x))
    assert torch.equal(
        _OPS["Brightness"](x, torch.full((4,), 0.5 / 1.8), sign, fill, "bilinear"),
        (x.float() * 0.6).round().to(torch.uint8),
    )
    moved = _OPS["TranslateXRel"](x, torch.full((4,), 1 / 0.45 / 12), sign, fill, "nearest")  # 1 pixel
    assert torch.equal(moved[0, :, :, :-1], x[0, :, :, 1:]) and torch.equal(moved[1, :, :, 1:], x[1, :, :, :-1])


def test_batch_augmenter_params_slice_consistently():
    aug = AugConfig(random_crop_padding=2, hflip=True, randaugment="rand-m7", random_erasing=0.5)
    bat = BatchAugmenter(aug, (0.5,), (0.25,), (10, 10))
    x = torch.randint(0, 256, (6, 1, 10, 10), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    params = bat.sample(6, torch.Generator().manual_seed(9))
    whole = bat.apply(x, params)
    part = bat.apply(x[2:5], {k: v[2:5] for k, v in params.items()})
    assert torch.equal(whole[2:5], part)


# ----------------------------------------------------------------------------------------- determinism


FULL_AUG = AugConfig(
    random_crop_padding=4, hflip=True, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25, color_jitter=0.3
)


def test_determinism_per_seed_and_epoch_independent_of_global_rng(fashion_dir):
    def run(seed, epoch, global_seed):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        loader = build_loader(
            "fashion-mnist",
            "train",
            batch_size=8,
            train=True,
            aug=FULL_AUG,
            seed=seed,
            data_dir=fashion_dir,
            download=False,
        )
        loader.set_epoch(epoch)
        return collect(loader)

    (x1, y1), (x2, y2) = run(0, 2, 1), run(0, 2, 12345)
    assert all(torch.equal(a, b) for a, b in zip(x1, x2)) and all(torch.equal(a, b) for a, b in zip(y1, y2))
    _, y3 = run(0, 3, 1)
    assert not torch.equal(torch.cat(y1), torch.cat(y3))
    x4, _ = run(1, 2, 1)
    assert not torch.equal(torch.cat(x1), torch.cat(x4))


def test_resume_at_epoch_reproduces_uninterrupted_run(fashion_dir):
    kw = dict(batch_size=8, train=True, aug=FULL_AUG, seed=7, data_dir=fashion_dir, download=False)
    uninterrupted = build_loader("fashion-mnist", "train", **kw)
    history = []
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        history.append(collect(uninterrupted))
    sources.clear_cache()
    resumed = build_loader("fashion-mnist", "train", **kw)
    resumed.set_epoch(2)
    xs, ys = collect(resumed)
    assert all(torch.equal(a, b) for a, b in zip(xs, history[2][0]))
    assert all(torch.equal(a, b) for a, b in zip(ys, history[2][1]))
    assert not torch.equal(torch.cat(history[1][1]), torch.cat(history[2][1]))


# ----------------------------------------------------------------------------------------- sharding


def test_distributed_union_equals_single_process_global_batch(fashion_dir):
    world, per_rank = 2, 4
    kw = dict(train=True, aug=FULL_AUG, seed=11, data_dir=fashion_dir, download=False)
    single = build_loader("fashion-mnist", "train", batch_size=world * per_rank, **kw)
    ranks = [
        build_loader("fashion-mnist", "train", batch_size=per_rank, rank=r, world_size=world, **kw)
        for r in range(world)
    ]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    sx, sy = collect(single)
    rank_batches = [collect(r) for r in ranks]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 43 // 8
    assert ranks[0].num_samples == ranks[1].num_samples == 5 * 4
    for i in range(len(single)):
        assert torch.equal(torch.cat([rb[1][i] for rb in rank_batches]), sy[i])
        assert torch.equal(torch.cat([rb[0][i] for rb in rank_batches]), sx[i])  # augmentation too
    idx0 = torch.cat(ranks[0].batch_indices(1))
    idx1 = torch.cat(ranks[1].batch_indices(1))
    assert not set(idx0.tolist()) & set(idx1.tolist())


def test_distributed_padding_and_unshuffled_test_split(fashion_dir):
    loaders = [
        build_loader(
            "fashion-mnist",
            "test",
            batch_size=4,
            train=False,
            rank=r,
            world_size=3,
            data_dir=fashion_dir,
            download=False,
        )
        for r in range(3)
    ]
    # 17 samples over 3 ranks: padded to 18 by repeating sample 0, 6 per rank, 2 batches each (4 + 2).
    assert [ld.num_samples for ld in loaders] == [6, 6, 6] and [len(ld) for ld in loaders] == [2, 2, 2]
    per_rank = [ld.batch_indices() for ld in loaders]
    assert [b.tolist() for b in per_rank[0]] == [[0, 1, 2, 3], [12, 13]]
    assert [b.tolist() for b in per_rank[2]] == [[8, 9, 10, 11], [16, 0]]
    union = sorted(i for batches in per_rank for b in batches for i in b.tolist())
    assert union == sorted([*range(17), 0])
    labels = [torch.cat(collect(ld)[1]) for ld in loaders]
    assert all(len(lab) == 6 for lab in labels)


def test_drop_last_defaults_to_train(fashion_dir):
    kw = dict(batch_size=8, data_dir=fashion_dir, download=False)
    train = build_loader("fashion-mnist", "train", train=True, **kw)
    assert len(train) == 5 and train.num_samples == 40
    assert [len(y) for y in collect(train)[1]] == [8] * 5
    keep = build_loader("fashion-mnist", "train", train=True, drop_last=False, **kw)
    assert len(keep) == 6 and [len(y) for y in collect(keep)[1]][-1] == 3
    test = build_loader("fashion-mnist", "train", train=False, **kw)
    assert test.num_samples == 43 and sorted(torch.cat(collect(test)[1]).tolist()) == sorted(
        torch.cat(collect(keep)[1]).tolist()
    )
    with pytest.raises(DataError, match="has no batch"):
        build_loader("fashion-mnist", "train", train=True, batch_size=64, data_dir=fashion_dir, download=False)


# ----------------------------------------------------------------------------------------- bad values


def test_bad_values_raise_data_error(fashion_dir):
    kw = dict(data_dir=fashion_dir, download=False)
    for bad, match in (
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(batch_size=4, rank=2, world_size=2), "rank 2 must be smaller than world_size 2"),
        (dict(batch_size=4, num_workers=-1), "num_workers"),
        (dict(batch_size=4, aug={"hlfip": True}), "unknown augmentation key 'hlfip': did you mean 'hflip'"),
        (dict(batch_size=4, aug={"random_erasing": 2.0}), r"random_erasing=2.0 is invalid"),
        (dict(batch_size=4, aug={"scale": [0.9, 0.1]}), "scale=.* is invalid"),
    ):
        with pytest.raises(DataError, match=match) as exc:
            build_loader("fashion-mnist", "train", train=True, **kw, **bad)
        one_line(exc)
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        build_loader("fashion-mnist", "validation", batch_size=4, train=False, **kw)
    cfg = AugConfig.from_dict({"hflip": True, "scale": [0.2, 1.0]})
    assert cfg.scale == (0.2, 1.0) and AugConfig.from_dict(cfg.to_dict()) == cfg
    assert not AugConfig().enabled and cfg.enabled


# ----------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_train_and_val(tmp_path):
    root = make_imagefolder(tmp_path / "imgs")
    info = get_dataset_info("imagefolder", root)
    assert (info.num_classes, info.classes, info.train_size, info.image_size) == (
        3,
        ("ant", "bee", "cat"),
        None,
        (224, 224),
    )
    aug = AugConfig(random_resized_crop=True, hflip=True, image_size=16, randaugment="rand-m9", random_erasing=0.5)
    train = build_loader("imagefolder", "train", batch_size=4, train=True, aug=aug, data_dir=root, seed=2)
    assert len(train) == 3 and train.info.train_size == 12 and train.info.image_size == (16, 16)
    xs, ys = collect(train)
    assert all(x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 for x in xs)
    assert sorted(torch.cat(ys).tolist()) == [0] * 4 + [1] * 4 + [2] * 4

    val = build_loader("imagefolder", "test", batch_size=4, train=False, aug=AugConfig(image_size=16), data_dir=root)
    vx, vy = (torch.cat(t) for t in collect(val))
    assert vx.shape == (6, 3, 16, 16) and vy.tolist() == [0, 0, 1, 1, 2, 2]
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    img = Image.open(root / "val" / "bee" / "1.png").convert("RGB")
    ref = TF.center_crop(TF.resize(img, 18, antialias=True), [16, 16])  # int(16 / 0.875) = 18
    ref = TF.pil_to_tensor(ref).float() / 255
    ref = (ref - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(vx[3], ref, atol=1e-5, rtol=0)


def test_imagefolder_deterministic_across_workers_and_sharded(tmp_path):
    root = make_imagefolder(tmp_path / "imgs")
    aug = AugConfig(random_resized_crop=True, hflip=True, image_size=12, color_jitter=0.4)
    kw = dict(train=True, aug=aug, data_dir=root, seed=5)
    in_proc = build_loader("imagefolder", "train", batch_size=4, **kw)
    workers = build_loader("imagefolder", "train", batch_size=4, num_workers=2, **kw)
    for epoch in (0, 1):
        in_proc.set_epoch(epoch)
        workers.set_epoch(epoch)
        (ax, ay), (bx, by) = collect(in_proc), collect(workers)
        assert all(torch.equal(a, b) for a, b in zip(ax, bx)) and all(torch.equal(a, b) for a, b in zip(ay, by))
    assert workers.loader.persistent_workers
    ranks = [build_loader("imagefolder", "train", batch_size=2, rank=r, world_size=2, **kw) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    rank_x = [collect(r)[0] for r in ranks]
    for i in range(len(ax)):
        union = torch.cat([rank_x[0][i], rank_x[1][i]])
        # Same samples with the same augmentation as the single-process batch, possibly reordered.
        assert sorted(map(_key, union)) == sorted(map(_key, ax[i]))


def _key(t: torch.Tensor) -> float:
    return round(float(t.double().sum()), 3)


def test_imagefolder_layout_errors(tmp_path):
    root = make_imagefolder(tmp_path / "imgs")
    import shutil

    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match="has no val/ folder") as exc:
        build_loader("imagefolder", "test", batch_size=2, train=False, data_dir=root)
    one_line(exc)
    with pytest.raises(DataError, match="needs --data-dir"):
        build_loader("imagefolder", "train", batch_size=2, train=True)
    (root / "val" / "zebra").mkdir(parents=True)
    with pytest.raises(DataError, match="val has classes missing from train/: zebra"):
        get_dataset_info("imagefolder", root)


# ----------------------------------------------------------------------------------------- mixup


def test_smooth_one_hot_values():
    out = smooth_one_hot(torch.tensor([2, 0]), 4, 0.2)
    torch.testing.assert_close(out, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))


def test_mixup_and_cutmix():
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mix = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.0, num_classes=5)
    mx, t = mix(x, y, torch.Generator().manual_seed(3))
    lam = float(t[1, 1])  # sample 1 (class 1) is mixed with its mirror, sample 4 (class 4)
    assert 0 < lam < 1 and float(t[1, 4]) == pytest.approx(1 - lam, abs=1e-6)
    torch.testing.assert_close(mx, x * lam + x.flip(0) * (1 - lam))
    torch.testing.assert_close(t.sum(1), torch.ones(6))
    mx2, t2 = mix(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(mx, mx2) and torch.equal(t, t2)

    cut = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.1, num_classes=5)
    for seed in range(5):
        cx, ct = cut(x, y, torch.Generator().manual_seed(seed))
        from_partner = (cx == x.flip(0)).all(1) & ~(cx == x).all(1)
        assert ((cx == x) | (cx == x.flip(0))).all()
        lam = 1 - float(from_partner[1].float().mean())
        expected = smooth_one_hot(y, 5, 0.1) * lam + smooth_one_hot(y.flip(0), 5, 0.1) * (1 - lam)
        torch.testing.assert_close(ct, expected)

    off = MixupCutmix(prob=0.0, label_smoothing=0.1, num_classes=5)
    ox, ot = off(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(ox, x) and torch.equal(ot, smooth_one_hot(y, 5, 0.1))
    with pytest.raises(TypeError, match=r"explicit torch\.Generator"):
        off(x, y, None)


# ----------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (FASHION_SYSTEM_DIR / "train-labels-idx1-ubyte.gz").exists(), reason="no system Fashion-MNIST")
def test_real_fashion_mnist_statistics():
    train = build_loader(
        "fashion-mnist", "train", batch_size=1000, train=False, data_dir=FASHION_SYSTEM_DIR, download=False
    )
    test = build_loader(
        "fashion-mnist", "test", batch_size=1000, train=False, data_dir=FASHION_SYSTEM_DIR, download=False
    )
    assert (train.dataset_size, test.dataset_size) == (60000, 10000)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    pixels = train.images.double() / 255
    assert pixels.mean().item() == pytest.approx(FM_MEAN, abs=5e-5)
    assert pixels.std().item() == pytest.approx(FM_STD, abs=5e-5)
    x, _ = next(iter(test))
    assert x.shape == (1000, 1, 28, 28) and -1.0 < x.mean().item() < 1.0
    assert isinstance(train.info, DatasetInfo) and train.info.classes[9] == "Ankle boot"


def test_batch_preparation_keeps_callers_thread_count(fashion_dir):
    loader = build_loader(
        "fashion-mnist", "train", batch_size=8, train=True, aug=FULL_AUG, data_dir=fashion_dir, download=False
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = [torch.get_num_threads() for _ in loader]
        assert seen == [2] * len(loader) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def _read_everywhere(path: Path, channels: int) -> dict[str, list]:
    """The 8-bit pixels of one file as the ImageFolder loader, ``predict`` and ``cam`` read them (H, W[, C])."""
    from PIL import Image

    from plugattn.analysis.gradcam import preprocess
    from plugattn.data.images import open_rgb
    from plugattn.engine.preprocess import Preprocessing

    with Image.open(path) as im:
        size = (im.height, im.width)
    zeros, ones = (0.0,) * channels, (1.0,) * channels  # no normalisation: x * 255 is the pixel value
    predict = Preprocessing((channels, *size), zeros, ones, 'nearest', 'stretch').load(path)
    rgb, cam = preprocess(path, size, channels, zeros, ones)
    out = {'predict': (predict * 255).round().permute(1, 2, 0), 'cam': (cam[0] * 255).round().permute(1, 2, 0)}
    if channels == 3:
        out['loader'] = torch.from_numpy(np.asarray(open_rgb(path)).copy())
        out['cam overlay'] = torch.from_numpy(rgb * 255).round()
    return {k: (v[..., 0] if channels == 1 else v).to(torch.int64).tolist() for k, v in out.items()}


def test_16bit_float_and_palette_images_read_as_their_values_mean(tmp_path):
    """16-bit, 32-bit integer, float and palette files give the same 8-bit pixels in the loaders, predict and cam
    (Pillow's own convert('RGB') clips I;16 to white and turns float 0..1 black)."""
    from PIL import Image

    grey16 = tmp_path / 'grey16.png'
    Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16)).save(grey16)
    int32 = tmp_path / 'int32.tiff'
    Image.fromarray(np.array([[0, 1000, 40000, 65535]], dtype=np.int32)).save(int32)
    int32_8bit = tmp_path / 'int32_8bit.tiff'  # 8-bit values stored as 32-bit: kept
    Image.fromarray(np.array([[0, 7, 100, 255]], dtype=np.int32)).save(int32_8bit)
    float01 = tmp_path / 'float01.tiff'
    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)).save(float01)
    float255 = tmp_path / 'float255.tiff'
    Image.fromarray(np.array([[0.0, 7.4, 100.6, 255.0]], dtype=np.float32)).save(float255)
    palette = Image.new('P', (4, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.putpixel((3, 0), 1)
    palette.save(tmp_path / 'palette.png')
    palette.info['transparency'] = 0  # index 0 transparent: composited over white
    palette.save(tmp_path / 'palette_alpha.png')
    assert [Image.open(tmp_path / n).mode for n in ('grey16.png', 'int32.tiff', 'float01.tiff', 'palette.png')] == [
        'I;16', 'I', 'F', 'P']

    grey = {grey16: [0, 1, 128, 255], int32: [0, 4, 156, 255], int32_8bit: [0, 7, 100, 255],
            float01: [0, 64, 128, 255], float255: [0, 7, 101, 255]}
    for path, want in grey.items():
        for c in (1, 3):
            for reader, got in _read_everywhere(path, c).items():
                assert got == [[v if c == 1 else [v] * 3 for v in want]], (path.name, c, reader)
    dark, light = [10, 20, 30], [200, 100, 50]
    luma = [round((r * 299 + g * 587 + b * 114) / 1000) for r, g, b in (dark, light)]  # ITU-R 601-2, Pillow's L
    for name, first in (('palette.png', dark), ('palette_alpha.png', [255, 255, 255])):
        first_luma = 255 if first[0] == 255 else luma[0]
        for reader, got in _read_everywhere(tmp_path / name, 3).items():
            assert got == [[first, light, first, light]], (name, reader)
        for reader, got in _read_everywhere(tmp_path / name, 1).items():
            assert got == [[first_luma, luma[1], first_luma, luma[1]]], (name, reader)


@pytest.mark.parametrize(('values', 'problem', 'fix'), [
    (np.array([[-1.0, 0.5, 2.0]], dtype=np.float32), r'float image holds pixel values in \[-1, 2\], neither 0\.\.1 '
                                                    r'nor 0\.\.255', r'rescale it to 0\.\.1'),
    (np.array([[0.0, np.nan, 1.0]], dtype=np.float32), 'float image holds NaN or infinite pixel values',
     'save it as an 8-bit or 16-bit image'),
    (np.array([[0, 70000]], dtype=np.int32), r'32-bit integer image holds pixel values in \[0, 70000\], beyond 16 '
                                             r'bits', r'rescale it to 0\.\.65535'),
])
def test_images_without_an_8bit_meaning_are_refused_in_one_line(tmp_path, values, problem, fix):
    import re

    from PIL import Image

    from plugattn.analysis import AnalysisError
    from plugattn.analysis.gradcam import preprocess
    from plugattn.data.images import open_rgb, preflight_imagefolder
    from plugattn.engine import EngineError
    from plugattn.engine.preprocess import Preprocessing

    path = tmp_path / 'train' / 'a' / 'x.tiff'
    path.parent.mkdir(parents=True)
    Image.fromarray(values).save(path)
    (tmp_path / 'val').symlink_to(tmp_path / 'train')
    where = re.escape(str(path))
    with pytest.raises(DataError, match=rf'^image {where}: {problem}; {fix}'):
        open_rgb(path)
    with pytest.raises(DataError, match=rf'has 2 unreadable images: {where} \({problem}\), '):
        preflight_imagefolder(tmp_path, cache=False)
    prepare = Preprocessing((3, 1, values.shape[1]), (0.5,) * 3, (0.5,) * 3)
    for error, read in ((EngineError, lambda: prepare.load(path)),
                        (AnalysisError, lambda: preprocess(path, (8, 8), 3))):
        with pytest.raises(error, match=rf'^cannot read image {where} \({problem}\); {fix}'):
            read()
