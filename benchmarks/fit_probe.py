"""One timed `fit` of the pipeline's CNN on the processed data, for `benchmarks.run` to compare
thread settings and input paths side by side.

    python -m benchmarks.fit_probe --images 20000 --intra 1 --inter 1 --out probe.json
    python -m benchmarks.fit_probe --input tf.data --out probe.json
    python -m benchmarks.fit_probe --backend jax --precision mixed_bfloat16 --epochs 2 --out p.json

`--intra/--inter 0` leaves TensorFlow's default; `--pipeline-threads` sizes the threads the way
the train stage does (mnist_optimizers.runtime), from the cores and $PIPELINE_JOBS. The
backend's and precision's effect is measured per epoch (`epoch_seconds`): the first epoch
includes compiling the step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

INPUTS = ("arrays", "tf.data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/processed/mnist_cnn"))
    parser.add_argument("--images", type=int, default=0, help="first N training images; 0: all")
    parser.add_argument("--val-images", type=int, default=0, help="first N validation images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--intra", type=int, default=0)
    parser.add_argument("--inter", type=int, default=0)
    parser.add_argument("--pipeline-threads", action="store_true")
    parser.add_argument("--input", choices=INPUTS, default="arrays")
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.backend == "jax" and (args.intra or args.inter or args.input == "tf.data"):
        parser.error("--intra, --inter and --input tf.data are TensorFlow's")

    os.environ["KERAS_BACKEND"] = args.backend  # before Keras loads
    import keras

    from mnist_optimizers.files import load_arrays
    from mnist_optimizers.architecture import validate_model
    from mnist_optimizers.model import build_model
    from mnist_optimizers.params import load_params
    from mnist_optimizers.paths import PARAMS_FILE
    from mnist_optimizers.runtime import configure_threads

    threads = configure_threads() if args.pipeline_threads else None
    if args.backend == "tensorflow":
        import tensorflow as tf

        if args.intra:
            tf.config.threading.set_intra_op_parallelism_threads(args.intra)
        if args.inter:
            tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(42)
    x_train, y_train, x_val, y_val = load_arrays(args.data, "x_train", "y_train", "x_val", "y_val")
    if args.images:
        x_train, y_train = x_train[: args.images], y_train[: args.images]
    if args.val_images:
        x_val, y_val = x_val[: args.val_images], y_val[: args.val_images]
    config = validate_model(load_params(PARAMS_FILE)["workloads"]["mnist_cnn"]["model"])
    model = build_model(config, x_train.shape[1:])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if args.input == "tf.data":
        train = (
            tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=42, reshuffle_each_iteration=True)
            .batch(128)
            .prefetch(tf.data.AUTOTUNE)
        )
        val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(128)
        fit_args: dict = {"x": train, "validation_data": val, "shuffle": False}
    else:
        fit_args = {"x": x_train, "y": y_train, "validation_data": (x_val, y_val)}
    epochs = epoch_timer()
    start = time.perf_counter()
    model.fit(
        **fit_args,
        batch_size=None if args.input == "tf.data" else 128,
        epochs=args.epochs,
        verbose=0,
        callbacks=[epochs],
    )
    fit_seconds = time.perf_counter() - start
    if args.backend == "tensorflow":
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
    else:  # XLA's pool follows the CPU affinity (mnist_optimizers.runtime.pin_cores)
        intra, inter = (threads.intra_op, threads.inter_op) if threads else (0, 0)
    result = {
        "fit_seconds": fit_seconds,
        "epoch_seconds": epochs.seconds,
        "train_images": len(x_train) * args.epochs,
        "intra_op": intra,
        "inter_op": inter,
        "backend": args.backend,
        "precision": args.precision,
    }
    args.out.write_text(json.dumps(result))


def epoch_timer():
    """A Keras callback whose `seconds` get each epoch's wall time (Keras loads first)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    return EpochTimer()


if __name__ == "__main__":
    main()
