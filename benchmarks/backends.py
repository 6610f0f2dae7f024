"""Does JAX train the CNN as TensorFlow does? The four optimizers' test accuracy on each backend
over the seeds of params.yaml, compared per optimizer by Welch's t-test, Holm-corrected over
the optimizers (as the precision decision did).

Each backend trains in its own clone of the committed project, through `dvc repro` of the
training stages, with `train.backend` set, float32 (the precision is not what is compared) and
the first `SUBSET` training and test images (a full run on JAX takes several times as long as
on TensorFlow on a CPU). The test accuracy of each saved model is then measured in a process on
that model's backend:

    python -m benchmarks.run --only backend_accuracy     # both clones: about 40 minutes here
    python -m benchmarks.backends evaluate --out acc.json  # in a clone: its models' test accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import OPTIMIZERS, WORKLOAD, dvc_command, make_clone, measure, set_params

SUBSET = 5000
BACKENDS = ("tensorflow", "jax")


def backend_clone(workdir: Path, backend: str) -> Path:
    """A clone of the committed project sharing the DVC cache, set to train on ``backend``."""
    clone = make_clone(workdir, backend)
    set_params(clone, train__backend=backend, train__precision="float32",
               compare_workloads=[WORKLOAD], preprocess__subset=SUBSET)  # fmt: skip
    return clone


def seeds(clone: Path) -> list[int]:
    from mnist_optimizers.params import load_params

    return list(load_params(clone / "params.yaml")["train"]["seeds"])


def bench_backend_accuracy(workdir: Path, log: Path) -> dict:
    """Train the four optimizers over the seeds on each backend; their test accuracies and
    the wall time of each backend's `dvc repro`."""
    result: dict = {"subset": SUBSET, "backends": {}}
    for backend in BACKENDS:
        clone = backend_clone(workdir, backend)
        stages = [f"train@{WORKLOAD}-{o}-{s}" for o in OPTIMIZERS for s in seeds(clone)]
        repro = measure(dvc_command("repro", *stages), clone, log)
        out = clone / "accuracy.json"
        command = [sys.executable, "-m", "benchmarks.backends", "evaluate", "--out", str(out)]
        subprocess.run(command, cwd=clone, env=os.environ | {"KERAS_BACKEND": backend},
                       check=True, timeout=1800)  # fmt: skip
        result["backends"][backend] = json.loads(out.read_text()) | {
            "repro_seconds": repro.seconds
        }
    return result


def evaluate(out: Path) -> None:
    """Write {optimizer: {seed: test accuracy}} of the models this clone trained."""
    import keras
    import numpy as np

    from mnist_optimizers.files import load_arrays

    folder = Path("data/processed") / WORKLOAD
    x_test, y_test = load_arrays(folder, "x_test", "y_test")
    accuracy: dict = {"backend": keras.backend.backend(), "test_accuracy": {}}
    for name in OPTIMIZERS:
        for seed in seeds(Path(".")):
            model = keras.saving.load_model(Path("models") / WORKLOAD / f"{name}-{seed}.keras")
            predicted = np.argmax(model.predict(x_test, batch_size=1000, verbose=0), axis=1)
            accuracy["test_accuracy"].setdefault(name, {})[str(seed)] = float(
                np.mean(predicted == y_test)
            )
    out.write_text(json.dumps(accuracy, indent=1))


def compare(result: dict) -> list[dict]:
    """Per optimizer: each backend's mean test accuracy (%), the difference, Welch's p and
    Holm's over the optimizers."""
    from scipy import stats as scipy_stats

    from mnist_optimizers.stats import holm

    tf_acc = result["backends"]["tensorflow"]["test_accuracy"]
    jax_acc = result["backends"]["jax"]["test_accuracy"]
    rows = []
    for name in tf_acc:
        a = [100 * v for v in tf_acc[name].values()]
        b = [100 * v for v in jax_acc[name].values()]
        rows.append({"optimizer": name, "tensorflow": a, "jax": b,
                     "difference": sum(b) / len(b) - sum(a) / len(a),
                     "p": float(scipy_stats.ttest_ind(b, a, equal_var=False).pvalue)})  # fmt: skip
    for row, p_holm in zip(rows, holm([row["p"] for row in rows]), strict=True):
        row["p_holm"] = p_holm
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["evaluate"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    evaluate(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
