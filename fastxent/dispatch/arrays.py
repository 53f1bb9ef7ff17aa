"""GPU arrays of the caller's library, seen by the CUDA kernels as Numba device arrays.

One small adapter per library (PyTorch, CuPy, Numba, and host NumPy arrays sent to the GPU with
``backend="cuda"``) answers the few questions the CUDA path asks: the array's dtype name, a
zero-copy Numba view of its storage (``fastxent.core.dtypes``: halves as integers; bfloat16
tensors are read through an ``int16`` view because Numba has no bfloat16 type), new arrays of the
caller's kind (PyTorch's caching allocator for tensors, so that a call does not pay
``cudaMalloc``), the stream to launch on (PyTorch's and CuPy's current stream, Numba's default
stream) and how to hand a result back. No library is imported unless the caller's array comes from it.
"""

import numpy as np

from ..core import dtypes as _dtypes


def cuda_module():
    from numba import cuda
    return cuda


def is_device(obj):
    """True for arrays that live on an NVIDIA GPU (anything exporting
    ``__cuda_array_interface__``, and the arrays of Numba's CUDA simulator)."""
    return hasattr(obj, "__cuda_array_interface__") or type(obj).__name__ == "FakeCUDAArray"


def torch_bfloat16_host(obj):
    """A zero-copy ``ml_dtypes.bfloat16`` NumPy view of a CPU PyTorch bfloat16 tensor (which
    ``np.asarray`` cannot convert); None for anything else."""
    if type(obj).__module__.split(".")[0] != "torch" or getattr(obj, "device", None) is None:
        return None
    import torch
    if obj.dtype != torch.bfloat16 or obj.device.type != "cpu" or obj.requires_grad:
        return None
    import ml_dtypes
    return obj.view(torch.int16).numpy().view(ml_dtypes.bfloat16)


#: Storage dtype of each dtype name on the GPU (Numba has no bfloat16 type).
_STORAGE = {"float32": np.float32, "float64": np.float64, "float16": np.int16,
            "bfloat16": np.uint16, "int64": np.int64}


class _Numba:
    """Numba device arrays (and the simulator's), and the base of the others."""

    kind = "numba"

    def __init__(self, like):
        self.cuda = cuda_module()
        self._stream = None
        self._like = getattr(like, "dtype", None)

    def dtype_name(self, a):
        return _dtypes.name(a.dtype)

    def shape(self, a):
        return tuple(a.shape)

    def view(self, a):
        """Numba device array of ``a``'s storage view (C-contiguous: a copy otherwise)."""
        if not self.is_contiguous(a):
            a = self.contiguous(a)
        store = _dtypes.storage_dtype(a.dtype)
        return a if store == a.dtype else a.view(store)

    def contiguous(self, a):
        out = self.cuda.device_array(a.shape, a.dtype, stream=self.stream())
        out[...] = a  # a device-to-device copy
        return out

    def is_contiguous(self, a):
        return a.is_c_contiguous()

    def empty(self, shape, dname):
        """A new array of the caller's kind, shape and dtype name."""
        if dname == "float16":
            dtype = np.float16
        elif dname == "bfloat16" and _dtypes.name(self._like) == "bfloat16":
            dtype = self._like  # the simulator's arrays can hold ml_dtypes' bfloat16
        else:
            dtype = _STORAGE[dname]
        return self.cuda.device_array(shape, dtype, stream=self.stream())

    def scratch(self, shape, dtype):
        """A Numba device array for the kernels' own use."""
        return self.view(self.empty(shape, _dtypes.name(dtype)))

    def stream(self):
        if self._stream is None:
            self._stream = self.cuda.default_stream()
        return self._stream

    def scalar(self, a):
        return a.reshape(())

    def reshape(self, a, shape):
        return a.reshape(shape)

    def address_range(self, a):
        cai = getattr(a, "__cuda_array_interface__", None)
        start = cai["data"][0] if cai is not None else a.ctypes.data
        return start, start + a.size * a.dtype.itemsize

    def float64(self, a):
        """A contiguous float64 device copy of ``a`` (through the host: meant for small arrays)."""
        host = a.copy_to_host(stream=self.stream()).astype(np.float64)
        return self.cuda.to_device(np.ascontiguousarray(host), stream=self.stream())


class _Host(_Numba):
    """NumPy arrays with ``backend="cuda"``: copied to the GPU, results copied back."""

    kind = "host"

    def dtype_name(self, a):
        return _dtypes.name(np.asarray(a).dtype)

    def shape(self, a):
        return np.shape(a)

    def view(self, a):
        if is_device(a):  # an array this adapter allocated
            return super().view(a)
        a = _dtypes.storage_view(np.ascontiguousarray(a))
        return self.cuda.to_device(a, stream=self.stream())

    def is_contiguous(self, a):
        return True

    def empty(self, shape, dname):
        return self.cuda.device_array(shape, _STORAGE[dname], stream=self.stream())

    def scalar(self, a):
        return float(self.host(a)[0])

    def reshape(self, a, shape):
        return self.host(a).reshape(shape)

    def host(self, a):
        out = a.copy_to_host(stream=self.stream())
        self.stream().synchronize()
        return out

    def float64(self, a):
        return self.cuda.to_device(np.ascontiguousarray(a, dtype=np.float64), stream=self.stream())


class _Torch(_Numba):
    kind = "torch"

    def __init__(self, like):
        super().__init__(like)
        import torch
        self.torch = torch
        self.device = like.device
        self._dtypes = {torch.float32: "float32", torch.float64: "float64",
                        torch.float16: "float16", torch.bfloat16: "bfloat16"}

    def dtype_name(self, a):
        return self._dtypes.get(a.dtype) or str(a.dtype).replace("torch.", "")

    def view(self, a):
        t = self.torch
        a = a.detach()
        if not a.is_contiguous():
            a = a.contiguous()
        half = a.dtype in (t.float16, t.bfloat16)
        v = self.cuda.as_cuda_array(a.view(t.int16) if half else a, sync=False)
        return v.view(np.uint16) if a.dtype == t.bfloat16 else v

    def is_contiguous(self, a):
        return a.is_contiguous()

    def empty(self, shape, dname):
        return self.torch.empty(shape, dtype=getattr(self.torch, dname), device=self.device)

    def stream(self):
        return _external_stream(self.cuda, self.torch.cuda.current_stream(self.device).cuda_stream)

    def address_range(self, a):
        start = a.data_ptr()
        return start, start + a.numel() * a.element_size()

    def float64(self, a):
        return self.view(a.detach().to(self.torch.float64))


class _CuPy(_Numba):
    kind = "cupy"

    def __init__(self, like):
        super().__init__(like)
        import cupy
        self.cupy = cupy

    def view(self, a):
        if not a.flags.c_contiguous:
            a = self.cupy.ascontiguousarray(a)
        return self.cuda.as_cuda_array(a.view(np.int16) if a.dtype == np.float16 else a,
                                       sync=False)

    def is_contiguous(self, a):
        return a.flags.c_contiguous

    def empty(self, shape, dname):
        return self.cupy.empty(shape, dtype=dname)

    def stream(self):
        return _external_stream(self.cuda, self.cupy.cuda.get_current_stream().ptr)

    def address_range(self, a):
        start = a.data.ptr
        return start, start + a.nbytes

    def float64(self, a):
        return self.view(self.cupy.ascontiguousarray(a, dtype=self.cupy.float64))


class _Interface(_Numba):
    """Any other object exporting ``__cuda_array_interface__``: read through Numba, results
    returned as Numba device arrays."""

    kind = "interface"

    def dtype_name(self, a):
        return _dtypes.name(np.dtype(a.__cuda_array_interface__["typestr"]))

    def shape(self, a):
        return tuple(a.__cuda_array_interface__["shape"])

    def view(self, a):
        d = self.cuda.as_cuda_array(a, sync=False)
        if not d.is_c_contiguous():
            d = _Numba.contiguous(self, d)
        return d.view(np.int16) if d.dtype == np.float16 else d

    def is_contiguous(self, a):
        return self.cuda.as_cuda_array(a, sync=False).is_c_contiguous()

    def float64(self, a):
        return super().float64(self.cuda.as_cuda_array(a, sync=False))


_streams = {}


def _external_stream(cuda, ptr):
    """Numba's stream object for a stream pointer, made once per pointer."""
    if not ptr:
        return cuda.default_stream()
    s = _streams.get(ptr)
    if s is None:
        s = _streams[ptr] = cuda.external_stream(ptr)
    return s


def adapter(like):
    """The adapter for the library that the array ``like`` comes from."""
    module = type(like).__module__.split(".")[0]
    if module == "torch":
        return _Torch(like)
    if module == "cupy":
        return _CuPy(like)
    if type(like).__name__ in ("DeviceNDArray", "FakeCUDAArray"):
        return _Numba(like)
    if is_device(like):
        return _Interface(like)
    return _Host(like)
