"""Fitting: the precision actually used, and resuming from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from mnist_optimizers import backend, files, fit, runtime
from mnist_optimizers.architecture import ModelConfig
from mnist_optimizers.model import build_model

from .conftest import random_images


def test_mixed_bfloat16_falls_back_to_float32_without_bf16_instructions(
    monkeypatch, caplog
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    show_gpus(monkeypatch, [])
    assert fit.effective_precision("mixed_bfloat16") == "float32"
    assert "this one has none; training in float32 instead" in caplog.text
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert fit.effective_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert fit.effective_precision("float32") == "float32"


@pytest.mark.parametrize(
    ("cpuinfo", "fast"),
    [("vendor_id : AuthenticAMD\nflags : avx2 avx512f avx512_bf16\n", True),
     ("vendor_id : GenuineIntel\nflags : avx2 avx512f avx512_bf16\n", False),
     ("vendor_id : GenuineIntel\nflags : avx512_bf16 amx_bf16 amx_tile\n", True),
     ("vendor_id : GenuineIntel\nflags : avx2 avx512f\n", False),
     ("Features : fp asimd bf16 i8mm\n", True), ("", False)],
    ids=["amd-avx512-bf16", "intel-avx512-bf16", "intel-amx", "intel-plain", "arm-bf16", "none"],
)  # fmt: skip
def test_bfloat16_is_fast_on_amx_amd_and_arm_not_on_intel_avx512_alone(
    monkeypatch, cpuinfo: str, fast: bool
) -> None:
    monkeypatch.setattr(runtime, "cpuinfo", lambda: cpuinfo)
    assert runtime.cpu_bf16_is_fast() is fast
    assert runtime.cpu_has_bf16() is (cpuinfo.count("bf16") > 0)


class FakeGpu:
    """A GPU as either backend lists it: TensorFlow's PhysicalDevice and its details, or
    JAX's Device (platform, id, device_kind, compute_capability as "9.0")."""

    def __init__(self, index: int, capability: tuple[int, int] | None, model: str | None) -> None:
        self.name, self.platform, self.id = f"/physical_device:GPU:{index}", "gpu", index
        self.device_kind = model
        self.compute_capability = ".".join(map(str, capability)) if capability else None
        self.details = {"device_name": model, "compute_capability": capability}
        self.details = {key: value for key, value in self.details.items() if value}


def show_gpus(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> None:
    """Make the backend of this process list ``gpus`` (none: the CPU alone), as its own
    device listing would."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: list(gpus))
        monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: d.details)
    else:
        import jax

        cpus = jax.local_devices(backend="cpu")  # not jax.devices: patched by an earlier call
        monkeypatch.setattr(jax, "devices", lambda *args: list(gpus) or cpus)


@pytest.mark.parametrize(
    ("cpu", "gpus", "expected"),
    [(True, [], "mixed_bfloat16"), (False, [], "float32"), (True, [(7, 5)], "float32"),
     (False, [(8, 0)], "mixed_bfloat16"), (True, [(9, 0), (7, 0)], "float32")],
    ids=["bf16-cpu", "plain-cpu", "old-gpu", "ampere-gpu", "mixed-gpus"],
)  # fmt: skip
def test_auto_precision_is_bfloat16_only_where_the_hardware_computes_it(
    monkeypatch, caplog, cpu: bool, gpus: list[tuple[int, int]], expected: str
) -> None:
    monkeypatch.setattr(runtime, "cpu_bf16_is_fast", lambda: cpu)
    show_gpus(monkeypatch, [FakeGpu(i, c, "NVIDIA") for i, c in enumerate(gpus)])
    assert fit.effective_precision("auto") == expected
    assert "instead" not in caplog.text  # auto is not a request that failed: no warning


def test_a_run_names_the_gpu_it_trains_on_and_the_cpu_without_one(monkeypatch) -> None:
    """The GPU path, tested on a CPU: both backends place a model on the first GPU they see,
    and the stages name that one (tag train.device) the same way; with none, the CPU."""
    show_gpus(monkeypatch, [FakeGpu(0, (9, 0), "NVIDIA H200"), FakeGpu(1, (9, 0), "NVIDIA H200")])
    assert runtime.training_device() == "GPU:0 (NVIDIA H200, compute capability 9.0)"
    assert fit.effective_precision("auto") == "mixed_bfloat16"  # compute capability 9.0
    show_gpus(monkeypatch, [FakeGpu(0, None, None)])
    assert runtime.training_device() == "GPU:0"  # the backend knows nothing more of it
    show_gpus(monkeypatch, [])
    assert runtime.training_device().startswith("CPU (")


def train_tiny(checkpoint: Path | None) -> list[np.ndarray]:
    """One epoch of a tiny CNN on random images, seeded; its final weights."""
    data = random_images(train=32, val=8)
    keras.utils.set_random_seed(0)
    config = ModelConfig(((4,),), kernel_size=3, pool_size=2, dense_units=(8,), num_classes=10)
    model = build_model(config, (28, 28, 1))
    with mlflow.start_run():
        fit.fit_model(model, keras.optimizers.Adam(), data, 1, 8, checkpoint=checkpoint)
    return model.get_weights()


def test_a_checkpoint_that_does_not_load_is_discarded_and_training_starts_over(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend.deterministic_ops()
    uninterrupted = train_tiny(None)
    folder = project / ".checkpoints" / "adam-42-0123456789abcdef"
    train_tiny(folder)
    weights = folder / "epoch-1.weights.h5"
    weights.write_bytes(weights.read_bytes()[:300])  # cut short, as by a full disk

    retrained = train_tiny(folder)

    assert f"checkpoint {weights} does not load" in caplog.text
    assert "discarded, training starts from the first epoch" in caplog.text
    for got, expected in zip(retrained, uninterrupted, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert weights.exists()  # the new run's own checkpoint


def test_checkpoints_are_not_counted_among_the_outputs_a_stopped_stage_replaced(
    project: Path,
) -> None:
    """A stage with `train.resume: true` stopped mid-training has written checkpoints only:
    it must say "no output written", not list its checkpoint files as replaced outputs."""
    files.WRITTEN.clear()
    folder = project / ".checkpoints" / "adam-42-0123456789abcdef"
    train_tiny(folder)
    assert (folder / "epoch-1.weights.h5").exists() and (folder / fit.HISTORY_FILE).exists()
    assert files.WRITTEN == []
    files.write_text_atomic(project / "reports" / "a.md", "a")  # an output still counts
    assert files.WRITTEN == [project / "reports" / "a.md"]
    files.WRITTEN.clear()
