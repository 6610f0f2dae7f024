"""The baseline: the tutorial's plain Keras script, for `benchmarks.run` to time against.

It trains the same CNN the way the tutorial does: load the data as uint8 arrays, `X / 255.0`
(float64), `to_categorical` labels, `model.fit(..., validation_split=0.1, batch_size=128)`.
Keras' `mnist.load_data()` would download MNIST; this reads the same IDX files from
data/raw instead, the only change, so that it runs offline.

    python -m benchmarks.plain_keras --epochs 5 --optimizer adam --out plain.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np


def load_data(raw: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """What `keras.datasets.mnist.load_data()` returns, read from the IDX files."""

    def idx(name: str, offset: int) -> np.ndarray:
        return np.frombuffer(gzip.decompress((raw / name).read_bytes()), np.uint8, offset=offset)

    x_train = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    x_test = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    return (x_train, idx("train-labels-idx1-ubyte.gz", 8)), (
        x_test,
        idx("t10k-labels-idx1-ubyte.gz", 8),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import keras
    from keras import layers

    (X_train, y_train), _ = load_data(args.raw)
    X_train = X_train.reshape(-1, 28, 28, 1) / 255.0
    y_train = keras.utils.to_categorical(y_train, 10)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer=args.optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(
        X_train, y_train, batch_size=128, epochs=args.epochs, validation_split=0.1, verbose=2
    )
    fit_seconds = time.perf_counter() - start
    result = {
        "fit_seconds": fit_seconds,
        "train_images": int(len(X_train) * 0.9),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
    }
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
