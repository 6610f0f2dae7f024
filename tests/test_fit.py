"""Fitting: the precision actually used, and the per-epoch history as CSV."""

from __future__ import annotations

from mnist_optimizers import fit


def test_mixed_bfloat16_falls_back_to_float32_without_bf16_instructions(
    monkeypatch, caplog
) -> None:
    monkeypatch.setattr(fit, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(fit.tf.config, "list_physical_devices", lambda kind=None: [])
    assert fit.effective_precision("mixed_bfloat16") == "float32"
    assert "this one has none; training in float32 instead" in caplog.text
    monkeypatch.setattr(fit, "cpu_has_bf16", lambda: True)
    assert fit.effective_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert fit.effective_precision("float32") == "float32"
