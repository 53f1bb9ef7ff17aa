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

# --- CUDA backend (from H100 measurements, docs/performance-notes.md; not tuned on a GPU yet) ---

#: Rows of at most this many bytes are each handled by one warp (several rows per block); longer
#: rows by a whole block.
CUDA_WARP_ROW_BYTES = 4096

#: Threads per block when a warp owns a row.
CUDA_WARP_BLOCK_THREADS = 256

#: Threads per block, and per row, when a block owns a row: 512 threads with four 8-byte loads in
#: flight each keep 16 KiB per block in flight.
CUDA_BLOCK_THREADS = 512

#: The fused kernel keeps at most this share of L2 in rows in flight, so that each row is still in
#: L2 when its gradient is written (H100: 50 MB of L2).
CUDA_L2_SHARE = 0.6

#: Resident blocks per multiprocessor aimed for by the grid (blocks loop over rows).
CUDA_BLOCKS_PER_SM = 4

#: Threads of the one-block kernels that count the targets and reduce the losses (a power of two,
#: at most 1024).
CUDA_REDUCE_THREADS = 256

#: At most this many blocks for the row kernel (None: ``CUDA_BLOCKS_PER_SM`` per multiprocessor).
#: The tests set it low so that every block loops over several rows.
CUDA_MAX_BLOCKS = None

#: Few rows with many classes are cut into segments of at least this many columns, one block
#: each (batch-1 scoring of a 256K vocabulary: about 60 segments, 8 KiB of bfloat16 each).
CUDA_SPLIT_MIN_COLUMNS = 4096

#: Threads per block of the token-statistics kernel (a power of two, at most 256): a block owns a
#: row at a time.
CUDA_TOKEN_THREADS = 256
