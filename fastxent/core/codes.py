"""The integer codes the layers pass each other, defined once (kernels compile them in as
constants). See docs/design.md#the-shared-mechanisms.
"""

#: what a softmax loss's targets are: none (the log-sum-exp), class indices, or probabilities
NO_TARGETS, INDEX, PROBS = 0, 1, 2

#: what the binary and categorical losses read: logits, probabilities, or a categorical
#: distribution's probabilities
BINARY_LOGITS, BINARY_PROBS, CATEGORICAL = 0, 1, 2

#: the reductions, by name and by code
NONE, SUM, MEAN = 0, 1, 2
REDUCTIONS = {"mean": MEAN, "sum": SUM, "none": NONE}

#: ``targets`` codes of ``token_partials``: the target is not among these columns (another
#: vocabulary shard), or the row is ignored
ABSENT, IGNORED = -1, -2
