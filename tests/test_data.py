"""Data: IDX files, splits, batching that resumes mid-epoch, augmentation and binarisation."""

import gzip

import numpy as np
import pytest
import torch
from helpers import FAST, run_experiment

from klexp.data.batches import TensorBatches
from klexp.data.digits import DigitsData
from klexp.data.idx import FILES, IMAGES_MAGIC, LABELS_MAGIC, IdxData, read_idx, write_idx
from klexp.data.images import random_shift
from klexp.errors import KlexpError


def write_mnist_like(root, train=60, test=20, size=6, compress=False):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count) % 3
        images = (rng.random((count, size, size)) * 80).astype(np.uint8)
        images[:, labels[0] :, :] += (labels * 50).astype(np.uint8)[:, None, None]
        image_file, label_file = FILES[split]
        write_idx(root / f"{image_file}{suffix}", images)
        write_idx(root / f"{label_file}{suffix}", labels)
    return root


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_load_with_t10k_as_test_split(tmp_path, compress):
    data = IdxData(root=str(write_mnist_like(tmp_path / "idx", compress=compress)), val_fraction=0.1)
    data.setup()
    assert data.input_shape == (6, 6)
    assert data.num_classes == 3
    assert len(data.splits["test"][1]) == 20
    assert len(data.splits["train"][1]) + len(data.splits["val"][1]) == 60
    assert len(data.splits["val"][1]) == 6  # val_fraction of the training files
    images = data.splits["train"][0]
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1


def test_classification_runs_on_local_idx_files(tmp_path):
    root = write_mnist_like(tmp_path / "idx")
    summary = run_experiment([*FAST, "data=mnist_idx", f"data.root={root}"], tmp_path / "run")
    assert summary["status"] == "completed"


def test_idx_reader_names_the_problem(tmp_path):
    root = write_mnist_like(tmp_path / "idx")
    images = root / FILES["train"][0]
    with pytest.raises(KlexpError, match="magic number 0x00000803, expected 0x00000801"):
        read_idx(images, LABELS_MAGIC)
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(KlexpError, match="truncated"):
        read_idx(images, IMAGES_MAGIC)
    with pytest.raises(KlexpError, match="does not exist"):
        IdxData(root=str(tmp_path / "missing")).setup()
    (root / FILES["test"][1]).unlink()
    with pytest.raises(KlexpError, match="t10k-labels-idx1-ubyte"):
        IdxData(root=str(root)).setup()


def test_idx_count_mismatch_is_reported(tmp_path):
    root = write_mnist_like(tmp_path / "idx")
    write_idx(root / FILES["train"][1], np.zeros(59, dtype=np.uint8))
    with pytest.raises(KlexpError, match="60 images but 59 labels"):
        IdxData(root=str(root)).setup()


def test_gzip_reader_reports_a_corrupt_archive(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20)[:-9])
    with pytest.raises(KlexpError, match="cannot read"):
        read_idx(path, IMAGES_MAGIC)


def test_digits_split_is_stratified_and_fixed_by_split_seed():
    first, second = DigitsData(seed=1), DigitsData(seed=2)
    first.setup()
    second.setup()
    assert torch.equal(first.splits["test"][0], second.splits["test"][0])
    counts = torch.bincount(first.splits["test"][1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert first.num_train + len(first.splits["val"][1]) + len(first.splits["test"][1]) == 1797


def test_batches_are_a_function_of_seed_and_epoch():
    data = (torch.arange(10),)
    batches = TensorBatches(data, 3, shuffle=True, seed=7)
    epoch0 = [b[0].tolist() for b in batches]
    epoch1 = [b[0].tolist() for b in batches]
    assert epoch0 != epoch1
    assert sorted(i for batch in epoch0 for i in batch) == list(range(10))
    again = TensorBatches(data, 3, shuffle=True, seed=7)
    assert [b[0].tolist() for b in again] == epoch0


def test_batches_resume_at_the_first_batch_not_yet_trained_on():
    data = (torch.arange(20),)
    reference = [b[0].tolist() for b in TensorBatches(data, 4, shuffle=True, seed=3)]
    batches = TensorBatches(data, 4, shuffle=True, seed=3)
    iterator = iter(batches)
    next(iterator)  # batch 0 trains; a checkpoint after its step must resume at batch 1
    state = batches.state_dict()
    resumed = TensorBatches(data, 4, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == reference[1:]


def test_batches_shard_disjointly_across_ranks():
    data = (torch.arange(10),)
    shards = [
        torch.cat([b[0] for b in TensorBatches(data, 2, shuffle=True, seed=0, rank=rank, world_size=2)])
        for rank in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def test_random_shift_moves_images_by_at_most_one_pixel():
    image = torch.zeros(1, 5, 5)
    image[0, 2, 2] = 1.0
    shifted = random_shift(image.repeat(50, 1, 1), torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(shifted, as_tuple=True)[1:]
    assert set(rows.tolist()) == {1, 2, 3} and set(cols.tolist()) == {1, 2, 3}
    assert torch.equal(shifted.sum((1, 2)), torch.ones(50))


def test_dynamic_binarisation_redraws_training_pixels_every_epoch():
    data = DigitsData(binarize=True, batch_size=2000)
    data.setup()
    loader = data.train_dataloader()
    first, second = (next(iter(loader))[0] for _ in range(2))
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)
    val = data.splits["val"][0]
    assert set(val.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"val_fraction": 0}, "val_fraction: expected a number in (0, 1), got 0"),
    ({"split_seed": -1}, "split_seed: expected an integer in [0, 4294967294], got -1"),
    ({"split_seed": 2**32 - 1}, "split_seed: expected an integer in [0, 4294967294], got 4294967295"),
])
def test_a_split_setting_out_of_range_is_refused_by_the_constructor(kwargs, message):
    with pytest.raises(KlexpError) as error:
        DigitsData(**kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"test_fraction": 0}, "data.test_fraction: 0 holds out 0 of 1797 examples and keeps 1797; a split "
                           "stratified by 10 classes needs 10 on each side (expected test_fraction "
                           "between 0.00556 and 0.994)"),
    ({"val_fraction": 0.001}, "data.val_fraction: 0.001 holds out 2 of 1437 examples and keeps 1435; a "
                              "split stratified by 10 classes needs 10 on each side (expected "
                              "val_fraction between 0.00557 and 0.794)"),
])
def test_a_split_too_small_for_the_classes_is_named_with_the_range_that_works(kwargs, message):
    data = DigitsData(**kwargs)
    with pytest.raises(KlexpError) as error:
        data.setup()
    assert str(error.value) == message


def test_the_smallest_share_the_message_offers_does_split():
    data = DigitsData(val_fraction=0.00557)
    data.setup()
    assert torch.equal(torch.unique(data.splits["val"][1]), torch.arange(10))


def test_setup_is_idempotent_so_the_check_before_the_trainer_costs_one_load(monkeypatch):
    data = DigitsData()
    data.setup("fit")
    splits = data.splits
    monkeypatch.setattr(data, "load", lambda: pytest.fail("loaded twice"))
    data.setup("fit")
    data.setup("test")
    assert data.splits is splits


@pytest.mark.parametrize(("broken", "message"), [
    ("shape", "data.root: t10k-images-idx3-ubyte holds 7×6 images, train-images-idx3-ubyte 6×6: "
              "expected test images of the training images' shape"),
    ("labels", "data.root: t10k-labels-idx1-ubyte holds classes [3, 4] that train-labels-idx1-ubyte "
               "does not: expected test classes among the training classes [0, 1, 2]"),
])
def test_idx_test_files_that_disagree_with_the_training_files_are_named(tmp_path, broken, message):
    root = write_disagreeing_idx(tmp_path / "idx", broken)
    with pytest.raises(KlexpError) as error:
        IdxData(root=str(root)).setup()
    assert str(error.value) == message


def write_disagreeing_idx(root, broken):
    """IDX files whose test images have another shape (``shape``) or classes the training files
    lack (``labels``)."""
    write_mnist_like(root)
    if broken == "shape":
        write_idx(root / FILES["test"][0], np.zeros((20, 7, 6), dtype=np.uint8))
    else:
        write_idx(root / FILES["test"][1], (np.arange(20) % 5).astype(np.uint8))
    return root
