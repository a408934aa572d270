"""Decode rates of the backend-neutral readers: PyDataset (threads, processes) vs Grain.

    KERAS_BACKEND=jax python bench/reader_speed.py --images 256 --workers 2

JPEGs 500x375 (q90, made by ``bench/gpu_whole.py``'s generator) -> Pillow decode, RGB,
bilinear resize to ``--size`` px, uint8 batches of ``--batch``. Each reader is iterated
once over every image after a warm-up pass (its worker start-up is timed separately:
the first batch). Rates in images/s; the serial loop is the one-core baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from gpu_whole import decode, generate  # noqa: E402


def _drain(batches) -> tuple[float, float, int, int]:
    """(seconds to the first batch, seconds in all, images, images of the first batch)."""
    start = time.perf_counter()
    first, images, first_images = None, 0, 0
    for x in batches:
        images += len(x[0] if isinstance(x, tuple) else x)
        if first is None:
            first, first_images = time.perf_counter() - start, images
    return first or 0.0, time.perf_counter() - start, images, first_images


def serial(files, size, batch, workers):
    for i in range(0, len(files), batch):
        yield np.stack([decode(f, size) for f in files[i : i + batch]])


def pool(files, size, batch, workers):
    from multiprocessing import Pool

    from gpu_whole import _decode_star

    with Pool(workers) as p:
        for i in range(0, len(files), batch):
            yield np.stack(p.map(_decode_star, [(f, size) for f in files[i : i + batch]]))


class _Folder:
    """The PyDataset body (module level so worker processes can unpickle it)."""

    def __init__(self, files, size, batch):
        self.files, self.size, self.batch = files, size, batch

    def __len__(self):
        return math.ceil(len(self.files) / self.batch)

    def __getitem__(self, i):
        chunk = self.files[i * self.batch : (i + 1) * self.batch]
        return np.stack([decode(f, self.size) for f in chunk])


def _pydataset(files, size, batch, workers, processes: bool):
    import keras
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    class Folder(_Folder, keras.utils.PyDataset):
        def __init__(self, **kwargs):
            keras.utils.PyDataset.__init__(self, **kwargs)
            _Folder.__init__(self, files, size, batch)

    data = Folder(workers=workers, use_multiprocessing=processes, max_queue_size=8)
    adapter = PyDatasetAdapter(data, shuffle=False)
    yield from adapter.get_numpy_iterator()
    adapter.on_epoch_end()


def pydataset_threads(files, size, batch, workers):
    return _pydataset(files, size, batch, workers, processes=False)


def pydataset_processes(files, size, batch, workers):
    return _pydataset(files, size, batch, workers, processes=True)


def grain_loader(files, size, batch, workers):
    import grain.python as gp
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain reads absl flags; a script has not parsed them
        flags.FLAGS(sys.argv[:1])

    class Decode(gp.MapTransform):
        def map(self, path):
            return decode(path, size)

    sampler = gp.IndexSampler(len(files), gp.NoSharding(), shuffle=False, num_epochs=1, seed=0)
    loader = gp.DataLoader(
        data_source=list(files),
        sampler=sampler,
        operations=[Decode(), gp.Batch(batch, drop_remainder=False)],
        worker_count=workers,
    )
    yield from loader


READERS = {
    "serial (1 core)": serial,
    "multiprocessing.Pool": pool,
    "PyDataset threads": pydataset_threads,
    "PyDataset processes": pydataset_processes,
    "Grain DataLoader": grain_loader,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="/tmp/reader-speed/images")
    opt = parser.parse_args()
    files = generate(Path(opt.data), opt.images, opt.workers)[: opt.images]
    print(f"{len(files)} JPEGs, {opt.size} px, batch {opt.batch}, {opt.workers} workers")
    results = {}
    for name, reader in READERS.items():
        try:
            _drain(reader(files, opt.size, opt.batch, opt.workers))  # warm the page cache
            first, seconds, images, head = _drain(reader(files, opt.size, opt.batch, opt.workers))
        except Exception as exc:  # noqa: BLE001 - a reader that is missing is a row
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:120]} |")
            continue
        assert images == len(files), (name, images)
        steady = (images - head) / max(seconds - first, 1e-9)
        results[name] = {"rate": images / seconds, "steady": steady, "first_batch_s": first}
        print(
            f"| {name} | {images / seconds:,.0f} img/s | after the first batch {steady:,.0f} "
            f"img/s | first batch {first:.2f} s |"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
