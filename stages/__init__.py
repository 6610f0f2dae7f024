"""The pipeline's stages, one module each: `python -m stages.<stage>` (see dvc.yaml)."""
