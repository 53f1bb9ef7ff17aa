"""Tunables of the kernels, in one place. Tests may shrink them; users may read them.

Each value says how it was chosen. Change them before the first call: the Numba kernels read
``BLOCK`` when they are compiled (and cache the result on disk).
"""

#: Elements of a row handled as one block by the CPU kernels: the block's maximum and its sum of
#: exponentials are computed back to back, so the block must stay in L1 (48 KiB on the development
#: machine's Zen 5 cores): 2048 float32 values are 8 KiB, leaving room for the gradient's stores.
BLOCK = 2048

#: Rows per thread from which the CPU backend gives each thread whole rows. Below it, rows are cut
#: into chunks so that every thread has work (batch-1 scoring of a 256K vocabulary).
ROWS_PER_THREAD_FOR_ROW_TASKS = 2

#: When rows are cut into chunks: how many tasks to aim for per thread (more evens out the load).
TASKS_PER_THREAD = 4

#: Smallest chunk worth its own task, in elements (32 KiB of float32: a thread's start-up cost is
#: a few microseconds, about the time to stream that much).
MIN_CHUNK = 8 * BLOCK
