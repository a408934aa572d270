"""Plain-Keras scratch reference (no graft import): the fair-baseline tests compare with it.

The network of graft's demo (:func:`build_cnn`, a copy of ``graft.api.demo.build_source_model``:
3 x Conv-BN(0.9)-ReLU(-MaxPool), global average pooling, a softmax Dense) trained from scratch with
``model.fit`` on arrays: 40 epochs, batch 16, Adam 1e-3, inputs scaled to [0, 1], no
validation split. graft's ``scratch`` row on the same data should be within noise of it.

    >>> from plain_keras import digits_split, plain_keras_scratch   # doctest: +SKIP
    >>> xtr, ytr, xte, yte = digits_split(per_class=10, seed=0)           # doctest: +SKIP
    >>> plain_keras_scratch(xtr, ytr, xte, yte, seed=0, epochs=40)        # doctest: +SKIP
    0.94...
"""

from __future__ import annotations

import numpy as np

TARGET_CLASSES = (5, 6, 7, 8, 9)


def digits_rgb(size: int = 32):
    """scikit-learn's digits as ``size`` px RGB uint8 images (0-255) and their labels
    (the same recipe as ``graft.api.demo.digits_rgb``)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).clip(0, 255).astype("uint8")
    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in small]
    )
    return np.repeat(big[..., None], 3, axis=-1), digits.target.astype("int32")


def build_cnn(num_classes: int, size: int = 32):
    """The demo's CNN (``graft.api.demo.build_source_model``): 3 x Conv-BN(0.9)-ReLU,
    max-pooling after the first two, global average pooling, softmax Dense."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    x = inputs
    for i, filters in enumerate((64, 128, 256), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(
            x
        )
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="source_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="source_head")(x)
    return keras.Model(inputs, outputs, name="digits_source_cnn")


def digits_split(per_class: int = 10, seed: int = 0, classes=TARGET_CLASSES):
    """(x_train, y_train, x_test, y_test): 32 px RGB uint8 digits, labels 0..k-1.

    ``per_class`` images of each class are sampled (with ``seed``) for training; every
    other image of those classes is the test set (846 images for digits 5-9, 10/class).
    """
    x, y = digits_rgb()
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in classes:
        idx = rng.permutation(np.flatnonzero(y == label))
        train_idx += list(idx[:per_class])
        test_idx += list(idx[per_class:])
    remap = {c: i for i, c in enumerate(classes)}
    relabel = np.vectorize(remap.get)
    tr, te = np.asarray(train_idx), np.asarray(test_idx)
    return x[tr], relabel(y[tr]).astype("int32"), x[te], relabel(y[te]).astype("int32")


def plain_keras_scratch(
    x_train, y_train, x_test, y_test, seed: int = 0, epochs: int = 40, batch_size: int = 16
) -> float:
    """Test accuracy of the demo CNN trained from scratch with plain ``model.fit``.

    Images are raw 0-255 arrays (N, 32, 32, 3); they are scaled to [0, 1] here.
    """
    import keras

    keras.utils.set_random_seed(seed)
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    model = build_cnn(num_classes, int(np.shape(x_train)[1]))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    xtr = np.asarray(x_train, "float32") / 255.0
    xte = np.asarray(x_test, "float32") / 255.0
    model.fit(xtr, y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return float(model.evaluate(xte, y_test, verbose=0, return_dict=True)["accuracy"])


if __name__ == "__main__":
    xtr, ytr, xte, yte = digits_split()
    print([round(plain_keras_scratch(xtr, ytr, xte, yte, seed=s), 4) for s in (0, 1, 2)])
