"""Determinism and tf.distribute: the TensorFlow-specific parts of running a job.

``--deterministic`` turns on TensorFlow's op determinism and deterministic tf.data.
``--distribute mirrored`` trains on all local GPUs (or, with ``--devices N`` on a CPU-only
machine, on N logical CPU devices, which is how it is tested); ``--distribute
multi-worker`` uses ``MultiWorkerMirroredStrategy`` configured by the standard
``TF_CONFIG`` environment variable. ``--batch-size`` is per replica: the global batch is
``batch_size x replicas``.
"""

from __future__ import annotations

from graft.errors import GraftError

STRATEGIES = ("none", "mirrored", "multi-worker")


def enable_determinism() -> None:
    """Make TensorFlow ops deterministic (same seed, same results, bit for bit)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def deterministic(dataset):
    """``dataset`` with deterministic element order (``None`` passes through)."""
    if dataset is None:
        return None
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


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
            f"--devices {devices}: TensorFlow has already started its devices in this process.",
            hint="set devices before any TensorFlow work (a fresh process, e.g. the CLI).",
        ) from None


def strategy(name: str, devices: int = 0):
    """The ``tf.distribute`` strategy for ``--distribute`` (``None`` for ``none``).

    Args:
        name: ``none``, ``mirrored`` or ``multi-worker``.
        devices: Logical CPU devices to create when there is no GPU (0: do not split).

    Returns:
        A ``tf.distribute.Strategy`` or ``None``.
    """
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
                "--distribute multi-worker needs the TF_CONFIG environment variable.",
                hint='set TF_CONFIG=\'{"cluster": {"worker": [...]}, "task": '
                '{"type": "worker", "index": I}}\' on every worker.',
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as exc:
            raise GraftError(f"TF_CONFIG is not valid JSON: {exc}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise GraftError(f"Unknown --distribute: {name!r}.", hint=f"expected {', '.join(STRATEGIES)}.")


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
    replicas = strategy.num_replicas_in_sync
    devices = list(getattr(strategy.extended, "worker_devices", ()))
    return {
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "devices": devices,
        "per_replica_batch": per_replica,
        "global_batch": per_replica * replicas,
    }
