"""Evaluating a model's logits over corpora bigger than memory: the evaluator, the files it
reads and the ``fastxent eval`` command (docs/design.md#layers)."""
