"""One module per params.yaml section that a single stage reads: its settings (a dataclass) and
their validation. A stage imports its own; stages/check_params.py imports them all."""
