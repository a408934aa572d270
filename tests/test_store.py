"""The one verified store behind every cache: an entry's checksum covers its content and
its description, entries are size-checked before a byte is read and hashed in chunks,
every entry is a valid .npy, and dead writers' part files do not stay."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graft
from conftest import IMAGE
from graft.training import activations, store
from graft.training.store import Store, open_store

ROWS, SHAPE = 10, (3, 2)


def _values(rows=ROWS, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, *SHAPE)).astype("float32")


def _written(tmp_path, key="a" * 40, values=None, dtype="float32"):
    values = _values() if values is None else values
    s = Store(tmp_path)
    s.write(key, len(values), np.array_split(values, 3), dtype)
    return s, key, values


def _edit(s: Store, name: str, **fields):
    index = s.path(name).with_suffix(".json")
    index.write_text(json.dumps({**json.loads(index.read_text()), **fields}))


def test_an_entry_is_a_valid_npy_read_back_in_one_verified_pass(tmp_path):
    s, key, values = _written(tmp_path)
    np.testing.assert_array_equal(np.load(s.path(key)), values)
    loaded, entry, why = s.load(key, ROWS, SHAPE)
    assert why is None and entry.rows == ROWS and entry.dtype == "float32"
    np.testing.assert_array_equal(loaded, values)
    read = store.reader(entry)
    np.testing.assert_array_equal(read([7, 2, 3, 4]), values[[7, 2, 3, 4]])
    assert s.find(key, ROWS + 1, SHAPE) == (None, store.MISFIT)
    assert s.find("b" * 40, ROWS, SHAPE) == (None, None)
    assert not list(tmp_path.glob("*.part"))


def test_a_chosen_dtype_still_writes_the_npy_header(tmp_path):
    """The activation cache passes the dtype it chose on its first entry to the next ones
    (validation, views): those entries are valid .npy files too."""
    s, key, values = _written(tmp_path, dtype="float16")
    np.testing.assert_array_equal(np.load(s.path(key)), values.astype("float16"))
    entry, why = s.find(key, ROWS, SHAPE)
    assert why is None and entry.dtype == "float16"


@pytest.mark.parametrize(
    "fields",
    [
        {"offset": 128 + 4 * 6},  # rows shifted by one: other numbers from an intact file
        {"dtype": "float16"},  # half the size: refused before a byte is read
        {"dtype": "float64"},
        {"shape": [2, 3]},
        {"seconds": 0.5},
    ],
)
def test_an_edited_description_is_refused(tmp_path, fields):
    s, key, _ = _written(tmp_path)
    _edit(s, key, **fields)
    for shape in (SHAPE, tuple(fields.get("shape", SHAPE))):
        array, entry, why = s.load(key, ROWS, shape)
        assert array is None and entry is None and why


def test_a_forged_description_with_a_matching_header_fails_the_checksum(tmp_path):
    """Description and .npy header both edited to agree: the checksum covers the
    description too, so the entry is still refused."""
    s, key, values = _written(tmp_path)
    path = s.path(key)
    half = values.astype("float16")
    np.save(path, half)  # a valid file of other bytes
    _edit(s, key, dtype="float16")
    assert s.find(key, ROWS, SHAPE) == (None, store.DAMAGED)


def test_another_keys_entry_copied_under_this_key_is_refused(tmp_path):
    """Another backbone's (or other data's) entry copied under this entry's name."""
    s, mine, _ = _written(tmp_path, "a" * 40)
    _, theirs, _ = _written(tmp_path, "b" * 40, _values(seed=1))
    for suffix in (".npy", ".json"):
        shutil.copyfile(s.path(theirs).with_suffix(suffix), s.path(mine).with_suffix(suffix))
    assert s.find(mine, ROWS, SHAPE) == (None, store.FOREIGN)
    _edit(s, mine, key=mine)  # and with the key in its description edited to match
    assert s.find(mine, ROWS, SHAPE) == (None, store.DAMAGED)


def test_a_huge_entry_is_refused_before_it_is_read(tmp_path, monkeypatch):
    s, key, _ = _written(tmp_path)
    with open(s.path(key), "r+b") as handle:
        handle.truncate(8 << 30)  # 8 GiB (sparse)
    read: list[int] = []
    real = store._read

    def counted(fd, size):
        data = real(fd, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(store, "_read", counted)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load on a huge entry"))
    assert s.load(key, ROWS, SHAPE) == (None, None, store.RESIZED)
    assert sum(read) < 4096  # its small description only
    index = s.path(key).with_suffix(".json")
    index.write_bytes(b" " * (store.MAX_INDEX_BYTES + 1))  # a huge description too
    read.clear()
    assert s.find(key, ROWS, SHAPE) == (None, store.MISSING_INDEX)
    assert sum(read) == 0


def test_content_is_hashed_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNK", 16)
    s, key, values = _written(tmp_path)
    sizes: list[int] = []
    real = store._read
    monkeypatch.setattr(store, "_read", lambda fd, n: sizes.append(n) or real(fd, n))
    assert s.find(key, ROWS, SHAPE)[1] is None
    assert max(sizes) <= store.MAX_INDEX_BYTES + 1 and len(sizes) > values.nbytes // 16


def test_an_entry_of_the_previous_format_is_refused_naming_the_version(tmp_path):
    s, key, _ = _written(tmp_path)
    index = s.path(key).with_suffix(".json")
    index.write_text(json.dumps({"sha256": "0" * 64, "shape": [ROWS, *SHAPE], "format": 1}))
    why = s.find(key, ROWS, SHAPE)[1]
    assert "format 1" in why and f"format {store.FORMAT}" in why


def test_part_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    s, key, _ = _written(tmp_path)
    name = s.path(key).name
    stale = tmp_path / f"{name}.{store._HOST}.{dead.pid}.part"
    live = tmp_path / f"{name}.{store._HOST}.{os.getpid()}.part"
    foreign = tmp_path / f"{name}.otherhost.1.part"
    other = tmp_path / "notes.part"  # not a part file of the store: left alone
    for path in (stale, live, foreign, other):
        path.write_bytes(b"x")
    open_store(tmp_path)
    assert not stale.exists() and live.exists() and foreign.exists() and other.exists()
    os.utime(foreign, (0, 0))  # a day old: its pid says nothing on this host
    open_store(tmp_path)
    assert not foreign.exists() and live.exists()


def test_a_float16_overflow_leaves_nothing_behind(tmp_path):
    values = _values()
    values[-1] = 1e6
    s = Store(tmp_path)
    with pytest.raises(store.Float16Overflow):
        s.write("c" * 40, ROWS, [values[:5], values[5:]], "float16")
    assert list(tmp_path.iterdir()) == []


def test_writes_never_follow_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    s = Store(tmp_path / "store")
    key = "d" * 40
    s.directory.mkdir()
    part = store._part(s.path(key))
    part.symlink_to(victim)  # a link planted where the writer's part file goes
    with pytest.raises(OSError):
        s.write(key, ROWS, [_values()])
    assert victim.read_text() == "keep me"


# ------------------------------------------------ through a run (the activation cache)

RUN = dict(
    cut="block3_pool", batch_size=8, seed=3, image_size=IMAGE, strategy="finetune",
    unfreeze="blocks:1", epochs=1, lr=0.05, optimizer="sgd", precise_bn=False,
    verbose=0, val_split=0.3,
)  # fmt: skip


def _train(data, backbone, cache):
    lines: list[str] = []
    graft.train(data, backbone=str(backbone), cache_dir=str(cache), log=lines.append, **RUN)
    return [line for line in lines if line.startswith("Activation cache")]


def test_forged_and_swapped_activation_entries_are_recomputed(
    digits_folder, cnn_file, tmp_path, monkeypatch
):
    """Issue 21 item 4: an edited offset and another backbone's entries were "reused"."""
    monkeypatch.setattr(activations, "DTYPE", "float32")
    cache = tmp_path / "cache"
    first = _train(digits_folder, cnn_file, cache)
    folder = cache / "activations"
    entries = sorted(folder.glob("*.npy"))
    assert len(entries) == 2  # train and val
    rows = sorted(len(np.load(p)) for p in entries)  # the validation entry loads too
    assert sum(rows) == 36 and rows[0] > 0 and "reused" not in first[-1]
    assert "reused" in _train(digits_folder, cnn_file, cache)[-1]
    # an edited offset: recomputed, with a line saying why
    before = np.load(entries[0])
    index = entries[0].with_suffix(".json")
    description = json.loads(index.read_text())
    index.write_text(json.dumps({**description, "offset": description["offset"] + 4}))
    lines = _train(digits_folder, cnn_file, cache)
    assert any("recomputed" in line and entries[0].name in line for line in lines), lines
    assert json.loads(index.read_text())["offset"] == description["offset"]  # rewritten
    np.testing.assert_array_equal(np.load(entries[0]), before)
    # another backbone's entries copied under these keys
    from conftest import make_cnn

    other = tmp_path / "other.keras"
    make_cnn(seed=7).save(other)
    theirs = tmp_path / "theirs"
    _train(digits_folder, other, theirs)
    for mine in entries:
        (match,) = [
            p
            for p in (theirs / "activations").glob("*.npy")
            if len(np.load(p)) == len(np.load(mine))
        ]
        for suffix in (".npy", ".json"):
            shutil.copyfile(match.with_suffix(suffix), mine.with_suffix(suffix))
    lines = _train(digits_folder, cnn_file, cache)
    refused = [line for line in lines if "recomputed" in line]
    assert len(refused) == 2 and all("another key" in line for line in refused), lines


def test_feature_entries_huge_or_of_the_previous_format_are_recomputed(
    digits_folder, cnn_file, tmp_path, monkeypatch
):
    """Issue 21 item 6 (a huge entry was read whole before its checksum was checked) and a
    cache written before the format change, through a feature-extraction run; a dead
    writer's part file is gone after the next run."""
    cache = tmp_path / "cache"
    kw = {**RUN, "strategy": "feature", "cache_dir": str(cache), "verbose": 0}

    def train():
        lines: list[str] = []
        graft.train(digits_folder, backbone=str(cnn_file), log=lines.append, **kw)
        return [line for line in lines if line.startswith("Feature cache")]

    assert all("computed" in line for line in train())
    entries = sorted(cache.glob("*.npy"), key=lambda p: len(np.load(p)))
    assert len(entries) == 2
    val, train_entry = entries
    with open(train_entry, "r+b") as handle:
        handle.truncate(8 << 30)  # 8 GiB (sparse)
    index = val.with_suffix(".json")
    old = {"sha256": "0" * 64, "shape": list(np.load(val).shape), "format": 1}
    index.write_text(json.dumps(old))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    part = cache / f"{train_entry.name}.{store._HOST}.{dead.pid}.part"
    part.write_bytes(b"half")
    read: list[int] = []
    real = store._read
    monkeypatch.setattr(store, "_read", lambda fd, n: read.append(n) or real(fd, n))
    lines = train()
    assert not part.exists()
    (huge,) = [line for line in lines if train_entry.name in line and "recomputed" in line]
    assert "size does not fit" in huge
    (older,) = [line for line in lines if val.name in line and "recomputed" in line]
    assert "cache format 1" in older and f"format {store.FORMAT}" in older
    assert max(read) <= store.CHUNK and sum(read) < 1 << 20  # nothing read whole
    assert train_entry.stat().st_size < 1 << 20  # rewritten at its size
    assert all("reused" in line for line in train())


def test_the_feed_gives_each_phase_its_inputs():
    """Frozen-backbone phases: the head on cached features; phases the activation cache
    serves: its top; every other phase: the full model on the images."""
    from types import SimpleNamespace

    from graft.training.feed import ACTIVATIONS, FEATURES, FULL, Feed, Inputs

    features = Inputs("head", "feature batches", "feature val", None, FEATURES)
    acts = SimpleNamespace(
        serves=lambda i: i == 2, inputs=lambda: Inputs("top", "rows", None, 3, ACTIVATIONS)
    )
    frozen, partial = SimpleNamespace(backbone_frozen=True), SimpleNamespace(backbone_frozen=False)
    feed = Feed("model", "images", "val images", features, acts)
    assert feed.inputs(1, frozen) is features
    assert feed.inputs(2, partial).target == "top" and feed.inputs(2, partial).steps == 3
    assert feed.inputs(3, partial) == Inputs("model", "images", "val images", None, FULL)
    assert Feed("model", "images").inputs(1, frozen).kind == FULL


_KILLED_IN_THE_PASS = """
import os, signal, sys
from graft.training import activations
real = activations.bottom_pass
def bottom_pass(*args):
    batches = real(*args)
    yield next(batches)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the activation pass
activations.bottom_pass = bottom_pass
from graft import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_kill_9_in_the_activation_pass_leaves_no_part_file_behind(
    digits_folder, cnn_file, tmp_path
):
    """Issue 21, also seen: a kill -9 during the activation pass left *.part files forever."""
    cache = tmp_path / "cache"
    args = [
        "train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool",
        "--strategy", "finetune", "--unfreeze", "blocks:1", "--epochs", "1",
        "--batch-size", "8", "--cache-dir", str(cache), "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_THE_PASS, *args], env=env, capture_output=True
    )
    assert killed.returncode == -9
    assert list((cache / "activations").glob("*.part"))  # what the dead writer left
    lines = _train(digits_folder, cnn_file, cache)
    assert "reused" not in lines[-1]
    assert not list((cache / "activations").glob("*.part"))
