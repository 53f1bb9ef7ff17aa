"""Log-sum-exp of every row alone, every contender that has it on the grid."""

WORKLOAD = "logsumexp"


def test_logsumexp(case, measure):
    measure(case)
