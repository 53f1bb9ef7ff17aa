"""The mechanisms every layer shares: the formulas compiled for every target, the integer
codes, the dtypes' storage views, the threads. Imports nothing of fastxent above it
(docs/design.md#layers)."""
