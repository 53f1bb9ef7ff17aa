"""Forward and backward: the loss and its gradient with respect to the logits (fused in
fastxent, out of place and in place; autograd in PyTorch and JAX; written out in NumPy)."""

WORKLOAD = "fwd+bwd"


def test_fused(case, measure):
    measure(case)
