"""Determinism and distribution: tf.distribute on TensorFlow, keras.distribution on JAX.

``--deterministic`` turns on TensorFlow's op determinism and deterministic tf.data.
``--distribute mirrored`` trains on all local GPUs (or, with ``--devices N`` on a CPU-only
machine, on N logical CPU devices, which is how it is tested); ``--distribute
multi-worker`` uses ``MultiWorkerMirroredStrategy`` configured by the standard
``TF_CONFIG`` environment variable. ``--batch-size`` is per replica: the global batch is
``batch_size x replicas``.

On JAX, ``--distribute mirrored`` is ``keras.distribution.DataParallel`` over the local
devices (the GPUs; on a CPU-only machine ``--devices N`` makes N host devices, which is
how it is tested), with the same per-replica batch. PyTorch has no Keras distribution
yet, and multi-worker (``TF_CONFIG``) is TensorFlow's: both are refused in one line.
Under ``DataParallel`` only ``fit`` splits its batches (its readers leave out what does
not split evenly); graft's own predictions run outside it (:func:`local`).
"""

from __future__ import annotations

import contextlib

from graft import _backend
from graft.config.names import DISTRIBUTE_MODES
from graft.errors import GraftError

STRATEGIES = DISTRIBUTE_MODES


def enable_determinism() -> None:
    """Make the backend's ops deterministic (same seed, same results, bit for bit).

    TensorFlow: op determinism. JAX: XLA's deterministic GPU ops (a flag read when JAX
    starts its GPU backend; JAX on CPU is deterministic already). torch: its
    deterministic algorithms.
    """
    backend = _backend.name()
    if backend == "jax":
        import os

        flag = "--xla_gpu_deterministic_ops=true"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        return
    if backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def deterministic(dataset):
    """``dataset`` with deterministic element order (``None``, and a reader that is not a
    ``tf.data.Dataset``, pass through: their order is graft's own)."""
    if dataset is None or not hasattr(dataset, "with_options"):
        return dataset
    import tensorflow as tf

    from graft.data.pipelines import with_options

    options = tf.data.Options()
    options.deterministic = True
    return with_options(dataset, options)  # a shuffled reader keeps graft's order


def split_cpu(devices: int) -> None:
    """Split the first CPU into ``devices`` logical devices (before TensorFlow starts).

    Raises:
        GraftError: when TensorFlow has already initialised its devices.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    except RuntimeError:
        raise GraftError(
            f"devices={devices}: TensorFlow has already started its devices in this process.",
            hint="set devices before any TensorFlow work (a fresh process, e.g. the CLI).",
        ) from None


def split_jax_cpu(devices: int) -> None:
    """Make ``devices`` host (CPU) devices for JAX (before JAX starts its backends).

    Raises:
        GraftError: when JAX has already started with another number of CPU devices.
    """
    import jax

    if jax.config.jax_num_cpu_devices == devices:
        return
    try:
        jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:
        if len(jax.devices("cpu")) == devices:
            return
        raise GraftError(
            f"devices={devices}: JAX has already started its devices in this process.",
            hint="set devices before any JAX work (a fresh process, e.g. the CLI), or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}.",
        ) from None


def data_parallel(devices: int = 0):
    """``keras.distribution.DataParallel`` over the local devices (JAX's ``mirrored``).

    Args:
        devices: How many devices to use (0: all of the default platform's); on a
            CPU-only machine, that many host devices are made first.

    Returns:
        A ``DataParallel`` over 2 or more devices, or ``None`` when there is one device
        (nothing to split: a plain run).
    """
    if devices:
        split_jax_cpu(devices)
    import keras

    found = keras.distribution.list_devices()
    if devices and devices > len(found):
        raise GraftError(
            f"devices={devices}: JAX sees {len(found)} device(s) ({', '.join(found)}).",
            hint=f"use devices {len(found)} or fewer (0: all of them).",
        )
    chosen = found[: devices or len(found)]
    if len(chosen) < 2:
        return None
    return keras.distribution.DataParallel(devices=chosen)


def _other_backend(name: str, devices: int):
    """``strategy`` on a backend other than TensorFlow (see the module's docstring)."""
    backend = _backend.name()
    if name == "none":
        if devices and backend == "jax":
            split_jax_cpu(devices)
        return None
    if name not in STRATEGIES:
        raise GraftError(
            f"Unknown distribute mode: {name!r}. Received: distribute={name}",
            hint=f"expected {', '.join(STRATEGIES)}.",
        )
    if name == "mirrored" and backend == "jax":
        return data_parallel(devices)
    if name == "mirrored":
        raise GraftError(
            f"distribute=mirrored runs on TensorFlow and JAX, not on {backend}.",
            hint="run with KERAS_BACKEND=jax (pip install 'keras-graft[jax]'), or drop "
            "--distribute.",
        )
    raise GraftError(
        f"distribute=multi-worker (TF_CONFIG) needs TensorFlow; the backend here is {backend}.",
        hint="pip install 'keras-graft[tensorflow]' and run with KERAS_BACKEND=tensorflow, "
        "or use distribute=mirrored on one machine.",
    )


def is_keras_distribution(strategy) -> bool:
    """Whether ``strategy`` is Keras's own (``keras.distribution``), not tf.distribute's."""
    return type(strategy).__module__.startswith("keras")


def strategy(name: str, devices: int = 0):
    """The strategy for ``--distribute`` (``None`` for ``none``).

    Args:
        name: ``none``, ``mirrored`` or ``multi-worker``.
        devices: Logical CPU devices to create when there is no GPU (0: do not split).

    Returns:
        A ``tf.distribute.Strategy`` on TensorFlow, a ``keras.distribution.DataParallel``
        on JAX, or ``None``.
    """
    if _backend.name() != "tensorflow":
        return _other_backend(name, devices)
    if name == "none":
        if devices:
            split_cpu(devices)
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if devices and not gpus:
        split_cpu(devices)
    if name == "mirrored":
        if gpus:
            names = [f"/gpu:{i}" for i in range(devices or len(gpus))]
        else:
            cpus = tf.config.list_logical_devices("CPU")
            names = [d.name for d in cpus[: devices or len(cpus)]]
        return tf.distribute.MirroredStrategy(
            devices=names, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi-worker":
        import json
        import os

        if "TF_CONFIG" not in os.environ:
            raise GraftError(
                "distribute=multi-worker needs the TF_CONFIG environment variable.",
                hint='set TF_CONFIG=\'{"cluster": {"worker": [...]}, "task": '
                '{"type": "worker", "index": I}}\' on every worker.',
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as exc:
            raise GraftError(f"TF_CONFIG is not valid JSON: {exc}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise GraftError(
        f"Unknown distribute mode: {name!r}. Received: distribute={name}",
        hint=f"expected {', '.join(STRATEGIES)}.",
    )


def describe(strategy, per_replica: int) -> str:
    """One line for the run output: strategy, replicas and the global batch size."""
    info = summary(strategy, per_replica)
    return (
        f"Distribution: {info['strategy']} over {info['replicas']} replica(s) "
        f"({', '.join(info['devices'])}); global batch {info['global_batch']} = "
        f"{per_replica} per replica x {info['replicas']}"
    )


def summary(strategy, per_replica: int) -> dict:
    """The distribution facts recorded in ``metrics.json``."""
    if is_keras_distribution(strategy):
        devices = [str(d) for d in strategy.device_mesh.devices.flatten()]
        return {
            "strategy": type(strategy).__name__,
            "replicas": len(devices),
            "devices": devices,
            "per_replica_batch": per_replica,
            "global_batch": per_replica * len(devices),
        }
    replicas = strategy.num_replicas_in_sync
    devices = list(getattr(strategy.extended, "worker_devices", ()))
    return {
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "devices": devices,
        "per_replica_batch": per_replica,
        "global_batch": per_replica * replicas,
    }


def _local_symbolic_build(self, iterator=None, data_batch=None):
    """Keras's ``_maybe_symbolic_build`` without its cross-worker ``reduce``.

    Keras 3 peeks at one distributed batch and averages it with ``strategy.reduce``
    before building the optimizer and metrics symbolically; under
    ``MultiWorkerMirroredStrategy`` that reduce fails ("Attempt to convert a value
    (PerReplica...)", keras-team/keras#20585). Only the batch's shapes matter for a
    symbolic build, so the first local replica's batch serves. The peek still makes one
    iterator, as Keras's does (resume relies on that count).
    """
    import keras
    import tensorflow as tf

    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = next(it)
            break
    strategy = self.distribute_strategy

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    data_batch = keras.tree.map_structure(local, data_batch)
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_scalars(original):
    """Keras's ``reduce_per_replica`` with a cross-worker mean that accepts scalars.

    Under multi-worker Keras reduces every log with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on the scalar loss ("Invalid reduction dimension 0 for input with 0
    dimensions"); ``axis=None`` averages the replicas' values as intended.
    """

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)
        import keras

        return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)

    return reduce_per_replica


@contextlib.contextmanager
def keras_workarounds(strategy):
    """Patches Keras needs to train under ``strategy`` (only multi-worker needs any)."""
    # The one place graft patches Keras's private trainer: TensorFlow-only, so it sits
    # behind the TensorFlow seam and not in core/keras_compat (tests/test_distribute.py
    # trains two workers through it). The patches live only while the strategy trains.
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    reduce = tf_trainer.reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _local_symbolic_build
    tf_trainer.reduce_per_replica = _reduce_scalars(reduce)
    try:
        yield
    finally:
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build
        tf_trainer.reduce_per_replica = reduce


def keras_distribution():
    """Keras's current global distribution (``None`` when there is none)."""
    import keras

    return keras.distribution.distribution()


@contextlib.contextmanager
def local():
    """Keras's own global distribution (JAX's ``DataParallel``) unset for the block.

    graft's own predictions inside a run (input-scaling and cut measurements, the
    feature and activation caches, AdaBN and precise BN, evaluations between phases)
    run here: the weights are replicated on every device, so a forward pass needs no
    data split to be right, and ``DataParallel`` would refuse a batch that does not
    divide by its devices (jax's ``IndivisibleError`` on a last, smaller batch).
    Outside the distribution the input is not sharded, so any batch size works.
    Padding the batch instead would need every caller to pad and crop, and would be
    wrong where a forward pass reads batch statistics (AdaBN, precise BN). Only
    ``fit`` trains under the distribution (its readers split evenly, see
    :meth:`Distribution.batch_multiple`). A no-op without a Keras distribution
    (tf.distribute splits uneven batches itself).
    """
    import keras

    current = keras.distribution.distribution()
    if current is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def undistributed(model):
    """A copy of ``model`` with plain variables, made outside any strategy.

    A model built under a strategy keeps it: ``predict_on_batch`` then returns one
    output per replica and the saved model carries mirrored variables. The trained
    values are copied into a clone built outside the scope for evaluation and saving.
    The clone is not compiled (the run compiles it for shipping): cloning a compiled
    model would rebuild its optimizer from its config, which a ``MultiOptimizer`` with
    a Python selector (fine-tuning's per-group rates) cannot do.
    """
    import keras

    compiled = model.compiled
    model.compiled = False  # clone_model compiles the clone from a compiled model's config
    # Keras's own distribution is global while set: the clone is built with none.
    keras_distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        plain = keras.models.clone_model(model)
    finally:
        model.compiled = compiled
        keras.distribution.set_distribution(keras_distribution)
    plain.set_weights(model.get_weights())
    return plain


class Distribution:
    """One adapter for how a run is distributed, so callers never branch on a strategy.

    Args:
        strategy: A ``tf.distribute.Strategy``, or ``None`` for a plain run.
    """

    def __init__(self, strategy=None):
        self.strategy = strategy

    @classmethod
    def from_settings(cls, name: str, devices: int = 0) -> Distribution:
        """The distribution of ``distribute=name`` (see :func:`strategy`)."""
        return cls(strategy(name, devices))

    def __repr__(self) -> str:
        return f"Distribution({type(self.strategy).__name__ if self.strategy else 'none'})"

    @property
    def replicas(self) -> int:
        if self.strategy is None:
            return 1
        if is_keras_distribution(self.strategy):
            return int(self.strategy.device_mesh.devices.size)
        return self.strategy.num_replicas_in_sync

    @property
    def batch_multiple(self) -> int:
        """Every training batch's size must be a multiple of this: JAX's ``DataParallel``
        splits the batch axis evenly over its devices (a last batch of 1 image on 2 devices
        fails with jax's ``IndivisibleError``), so a feed drops or pads a last partial
        batch that is not. tf.distribute splits unevenly: 1."""
        return self.replicas if is_keras_distribution(self.strategy) else 1

    def scope(self):
        """The strategy's scope (a no-op context for a plain run)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self, per_replica: int) -> str | None:
        return describe(self.strategy, per_replica) if self.strategy is not None else None

    def summary(self, per_replica: int) -> dict | None:
        return summary(self.strategy, per_replica) if self.strategy is not None else None

    def local(self):
        """Graft's own predictions: outside Keras's distribution (see :func:`local`)."""
        return local()

    def workarounds(self):
        """Keras patches the strategy needs while fitting (see :func:`keras_workarounds`)."""
        if self.strategy is None or is_keras_distribution(self.strategy):
            return contextlib.nullcontext()  # Keras's own distribution needs none
        return keras_workarounds(self.strategy)

    def finished(self, model):
        """The trained model, undistributed (see :func:`undistributed`)."""
        return undistributed(model) if self.strategy is not None else model
