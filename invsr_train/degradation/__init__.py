"""The training degradation, one job per module: `config`, `sampling`, `ops`, `jpeg`, `pipeline`.

The public API (and the design notes) stay at `invsr_train.degradations`, which re-exports these.
"""
