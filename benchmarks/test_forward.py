"""Forward: the mean cross-entropy of integer targets, every contender on the grid."""

WORKLOAD = "forward"


def test_forward(case, measure):
    measure(case)
