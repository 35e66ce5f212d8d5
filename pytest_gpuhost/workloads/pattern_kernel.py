"""The HBM pattern test as two CUDA kernels per pattern (fill, check), compiled at run time by NVRTC.

Why: with torch ops a pattern costs 2.5 to 4.5 passes over memory (a bool temporary per compare, an
in-place subtract for address-in-address) and only answers "any mismatch?". These kernels compute
each expected word in registers, so every pattern is one write and one read of the tested memory;
the read counts the wrong words exactly (one atomic per warp that saw any) and keeps the first
few (index, value) in a small device buffer, so a failed pattern is also located in that read.

No host compiler is needed: NVRTC (from the CUDA wheels beside torch, or the system's CUDA)
compiles the source to PTX, the driver (``libcuda.so.1``, which the container toolkit mounts)
loads it and the kernels run on torch's current stream, through ctypes. Standard library and
torch only, like the sibling workloads. Every NVRTC and driver call is checked; a library,
symbol, compile, load or self-test failure raises ``KernelUnavailable`` with the reason, and the
caller (``memory.py``) then runs its torch path instead.

The words (``expected_word`` is the Python mirror of ``want<K>`` in ``WORD_SOURCE``), by the 32-bit
word index ``i`` from the start of the tested memory:

- zeros, ones, alternating: 0x00000000, 0xFFFFFFFF, 0x55555555;
- walking-ones: ``1 << (i % 32)``;
- address: every 8-byte word holds its own 64-bit byte offset (little-endian halves), unique
  over the whole memory (no 32-bit wrap);
- random: ``mix32(i, seed)``, an integer hash of the 64-bit index and the seed.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import time
from typing import Any

PATTERN_CODES = {"zeros": 0, "ones": 1, "alternating": 2, "walking-ones": 3, "address": 4, "random": 5}
CONSTANT_WORDS = {"zeros": 0x00000000, "ones": 0xFFFFFFFF, "alternating": 0x55555555}
MASK32 = 0xFFFFFFFF
THREADS = 256  # per block
BLOCKS_PER_SM = 8  # 2048 threads per SM: full occupancy on Hopper, enough loads in flight
SELF_TEST_WORDS = 4096 + 3  # a tail of 3 words runs the kernels' scalar path too
SELF_TEST_FIRST = 2**32 - 2048  # word indices cross 2**32: the 64-bit index arithmetic is used
SELF_TEST_SEED = 0x5EED1234
NVRTC_NAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so")
DRIVER_NAMES = ("libcuda.so.1", "libcuda.so")
SYSTEM_CUDA = ("/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64")

# -- the words, in C++ (shared by the kernels and the CPU test) and in Python ---------------------

WORD_SOURCE = r"""
#ifndef GPUHOST_FN
#define GPUHOST_FN __device__ __forceinline__
#endif
typedef unsigned int u32;
typedef unsigned long long u64;

GPUHOST_FN u32 mix32(u64 i, u32 seed) {
  u32 x = (u32)i ^ ((u32)(i >> 32) * 0x9E3779B1u) ^ (seed * 0x85EBCA6Bu);
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

template <int K> GPUHOST_FN u32 want(u64 i, u32 seed) {
  if (K == 0) return 0x00000000u;
  if (K == 1) return 0xFFFFFFFFu;
  if (K == 2) return 0x55555555u;
  if (K == 3) return 1u << (u32)(i & 31u);
  if (K == 4) {
    const u64 offset = (i >> 1) << 3;  /* the byte offset of the 8-byte word holding word i */
    return (i & 1u) ? (u32)(offset >> 32) : (u32)offset;
  }
  return mix32(i, seed);
}
"""

KERNEL_SOURCE = r"""
template <int K>
__device__ __forceinline__ void fill_words(u32* __restrict__ x, u64 n, u64 first, u32 seed) {
  const u64 step = (u64)gridDim.x * blockDim.x;
  const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  const u64 quads = n >> 2;
  uint4* __restrict__ x4 = reinterpret_cast<uint4*>(x);
  for (u64 q = t; q < quads; q += step) {
    const u64 i = first + (q << 2);
    x4[q] = make_uint4(want<K>(i, seed), want<K>(i + 1, seed), want<K>(i + 2, seed), want<K>(i + 3, seed));
  }
  for (u64 j = (quads << 2) + t; j < n; j += step) x[j] = want<K>(first + j, seed);
}

/* 1 when the word is wrong; the first `slots` wrong words also get (index, value) in result[2..]. */
__device__ __forceinline__ u32 note(u32 got, u32 expected, u64 i, u64* result, u32 slots) {
  if (got == expected) return 0u;
  if (*(volatile u64*)(result + 1) < (u64)slots) {
    const u64 slot = atomicAdd(result + 1, 1ull);
    if (slot < (u64)slots) {
      result[2 + 2 * slot] = i;
      result[3 + 2 * slot] = (u64)got;
    }
  }
  return 1u;
}

template <int K>
__device__ __forceinline__ void check_words(const u32* __restrict__ x, u64 n, u64 first, u32 seed,
                                            u64* result, u32 slots) {
  const u64 step = (u64)gridDim.x * blockDim.x;
  const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  const u64 quads = n >> 2;
  const uint4* __restrict__ x4 = reinterpret_cast<const uint4*>(x);
  u32 bad = 0u;
  for (u64 q = t; q < quads; q += step) {
    const uint4 v = x4[q];
    const u64 i = first + (q << 2);
    bad += note(v.x, want<K>(i, seed), i, result, slots);
    bad += note(v.y, want<K>(i + 1, seed), i + 1, result, slots);
    bad += note(v.z, want<K>(i + 2, seed), i + 2, result, slots);
    bad += note(v.w, want<K>(i + 3, seed), i + 3, result, slots);
  }
  for (u64 j = (quads << 2) + t; j < n; j += step) bad += note(x[j], want<K>(first + j, seed), first + j, result, slots);
  for (int offset = 16; offset > 0; offset >>= 1) bad += __shfl_down_sync(0xFFFFFFFFu, bad, offset);
  if ((threadIdx.x & 31u) == 0u && bad != 0u) atomicAdd(result, (u64)bad);
}

#define GPUHOST_PATTERN(K)                                                                        \
  extern "C" __global__ void gpuhost_fill_##K(u32* x, u64 n, u64 first, u32 seed) {              \
    fill_words<K>(x, n, first, seed);                                                             \
  }                                                                                               \
  extern "C" __global__ void gpuhost_check_##K(const u32* x, u64 n, u64 first, u32 seed,          \
                                               u64* result, u32 slots) {                          \
    check_words<K>(x, n, first, seed, result, slots);                                             \
  }
GPUHOST_PATTERN(0)
GPUHOST_PATTERN(1)
GPUHOST_PATTERN(2)
GPUHOST_PATTERN(3)
GPUHOST_PATTERN(4)
GPUHOST_PATTERN(5)
"""

SOURCE = WORD_SOURCE + KERNEL_SOURCE


def mix32(index: int, seed: int) -> int:
    """``mix32`` of ``WORD_SOURCE``: the random pattern's word (a bijection of the low 32 index bits)."""
    x = (index & MASK32) ^ (((index >> 32) & MASK32) * 0x9E3779B1 & MASK32) ^ ((seed * 0x85EBCA6B) & MASK32)
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def expected_word(pattern: str, index: int, seed: int) -> int:
    """The unsigned 32-bit word at word ``index`` of ``pattern``, as the kernels write it."""
    if pattern in CONSTANT_WORDS:
        return CONSTANT_WORDS[pattern]
    if pattern == "walking-ones":
        return 1 << (index % 32)
    if pattern == "address":
        offset = (index >> 1) << 3
        return (offset >> 32) & MASK32 if index & 1 else offset & MASK32
    if pattern == "random":
        return mix32(index, seed)
    raise ValueError(f"unknown pattern {pattern!r}")


def kernel_names() -> list[str]:
    return [f"gpuhost_{kind}_{code}" for code in PATTERN_CODES.values() for kind in ("fill", "check")]


# -- finding and binding the libraries -------------------------------------------------------------


class KernelUnavailable(Exception):
    """The kernels cannot be used here; the message says why (the caller falls back to torch)."""


class KernelFailed(Exception):
    """A CUDA call failed while the kernels were in use: the GPU or the context is in trouble."""


def open_library(path: str) -> Any:
    """``ctypes.CDLL(path)`` (the boundary the tests replace)."""
    return ctypes.CDLL(path)


def load_first(candidates: list[str], what: str) -> tuple[Any, str]:
    """The first of ``candidates`` that loads, and its name; else why none did."""
    errors: list[str] = []
    for candidate in candidates:
        if os.sep in candidate:  # NVRTC loads its builtins by name: preload them from its folder
            for builtins in sorted(
                glob.glob(os.path.join(os.path.dirname(candidate), "libnvrtc-builtins*.so*"))
            ):
                if ".alt." in os.path.basename(builtins):  # the variant NVRTC does not load by name
                    continue
                try:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError:
                    continue
        try:
            return open_library(candidate), candidate
        except OSError as exc:
            errors.append(f"{candidate}: {exc}")
    shown = errors if len(errors) <= 3 else [*errors[:2], "...", errors[-1]]
    tried = "; ".join(shown) if shown else "no candidate"
    raise KernelUnavailable(f"{what} could not be loaded ({len(candidates)} tried; {tried})")


def nvrtc_candidates(torch: Any) -> list[str]:
    """Where NVRTC may be, best first: the CUDA wheels beside torch (the major version torch was
    built with first, since the driver already runs that), then the system's CUDA, then by name."""
    roots: list[str] = []
    torch_dir = os.path.dirname(os.path.abspath(str(getattr(torch, "__file__", "") or ".")))
    for base in [os.path.dirname(torch_dir), *sys.path]:
        if base and base not in roots:
            roots.append(base)
    folders: list[str] = []
    for root in roots:
        folders += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
    folders.append(os.path.join(torch_dir, "lib"))
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            folders.append(os.path.join(os.environ[variable], "lib64"))
    folders += list(SYSTEM_CUDA)
    files: list[str] = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "libnvrtc*.so*"))):
            name = os.path.basename(path)
            if "builtins" not in name and ".alt." not in name and path not in files:
                files.append(path)
    major = str(getattr(getattr(torch, "version", None), "cuda", None) or "").split(".")[0]
    if major:
        files.sort(key=lambda path: 0 if os.path.basename(path).startswith(f"libnvrtc.so.{major}") else 1)
    return files + list(NVRTC_NAMES)


def bind(lib: Any, name: str, restype: Any, argtypes: list[Any], what: str) -> Any:
    """``lib.name`` with its C signature, or ``KernelUnavailable`` when the library lacks it."""
    if not hasattr(lib, name):  # a CDLL looks the symbol up here: no crash on an old library
        raise KernelUnavailable(f"{what} has no {name} (too old, or not the library it claims to be)")
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


c_int_p = ctypes.POINTER(ctypes.c_int)
c_size_p = ctypes.POINTER(ctypes.c_size_t)
c_void_pp = ctypes.POINTER(ctypes.c_void_p)
c_char_pp = ctypes.POINTER(ctypes.c_char_p)


class Nvrtc:
    """The few NVRTC calls that turn CUDA C++ into PTX."""

    def __init__(self, lib: Any, path: str) -> None:
        self.path = path
        what = f"NVRTC ({path})"
        self.errors = bind(lib, "nvrtcGetErrorString", ctypes.c_char_p, [ctypes.c_int], what)
        self.version_fn = bind(lib, "nvrtcVersion", ctypes.c_int, [c_int_p, c_int_p], what)
        self.create = bind(
            lib,
            "nvrtcCreateProgram",
            ctypes.c_int,
            [c_void_pp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, c_char_pp, c_char_pp],
            what,
        )
        self.compile_fn = bind(
            lib, "nvrtcCompileProgram", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, c_char_pp], what
        )
        self.log_size = bind(lib, "nvrtcGetProgramLogSize", ctypes.c_int, [ctypes.c_void_p, c_size_p], what)
        self.log = bind(lib, "nvrtcGetProgramLog", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p], what)
        self.ptx_size = bind(lib, "nvrtcGetPTXSize", ctypes.c_int, [ctypes.c_void_p, c_size_p], what)
        self.ptx = bind(lib, "nvrtcGetPTX", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p], what)
        self.destroy = bind(lib, "nvrtcDestroyProgram", ctypes.c_int, [c_void_pp], what)
        self.num_archs: Any = None
        self.archs_fn: Any = None
        if hasattr(lib, "nvrtcGetNumSupportedArchs") and hasattr(
            lib, "nvrtcGetSupportedArchs"
        ):  # NVRTC >= 11.2
            self.num_archs = bind(lib, "nvrtcGetNumSupportedArchs", ctypes.c_int, [c_int_p], what)
            self.archs_fn = bind(lib, "nvrtcGetSupportedArchs", ctypes.c_int, [c_int_p], what)

    def _check(self, rc: int, call: str) -> None:
        if rc != 0:
            text = self.errors(rc)
            raise KernelUnavailable(f"{call} failed: {text.decode() if text else f'NVRTC error {rc}'}")

    def version(self) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.version_fn(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return f"{major.value}.{minor.value}"

    def archs(self) -> list[int] | None:
        """The compute capabilities this NVRTC can target (None: it cannot say)."""
        if self.num_archs is None or self.archs_fn is None:
            return None
        count = ctypes.c_int()
        self._check(self.num_archs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
        values = (ctypes.c_int * max(count.value, 1))()
        self._check(self.archs_fn(values), "nvrtcGetSupportedArchs")
        return [int(v) for v in values[: count.value]]

    def compile(self, source: str, arch: int) -> bytes:
        """PTX for ``compute_<arch>``, or ``KernelUnavailable`` with the compiler's log."""
        program = ctypes.c_void_p()
        self._check(
            self.create(ctypes.byref(program), source.encode(), b"gpuhost_patterns.cu", 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            options = [f"--gpu-architecture=compute_{arch}".encode()]
            rc = self.compile_fn(program, len(options), (ctypes.c_char_p * len(options))(*options))
            if rc != 0:
                size = ctypes.c_size_t()
                log = ""
                if self.log_size(program, ctypes.byref(size)) == 0 and size.value > 1:
                    buffer = ctypes.create_string_buffer(size.value)
                    if self.log(program, buffer) == 0:
                        log = buffer.value.decode(errors="replace").strip()
                text = self.errors(rc)
                reason = text.decode() if text else f"NVRTC error {rc}"
                raise KernelUnavailable(
                    f"NVRTC {self.path} could not compile the pattern kernels for compute_{arch}: {reason}: {log[:1500]}"
                )
            size = ctypes.c_size_t()
            self._check(self.ptx_size(program, ctypes.byref(size)), "nvrtcGetPTXSize")
            buffer = ctypes.create_string_buffer(size.value)
            self._check(self.ptx(program, buffer), "nvrtcGetPTX")
            return buffer.raw[: size.value]
        finally:
            self.destroy(ctypes.byref(program))


def pick_arch(device_arch: int, supported: list[int] | None) -> int:
    """The device's compute capability, or the newest one below it that NVRTC knows (PTX for an
    older target runs on a newer GPU, compiled by the driver)."""
    if supported is None or device_arch in supported:
        return device_arch
    older = [a for a in supported if a <= device_arch]
    if not older:
        raise KernelUnavailable(f"NVRTC cannot target compute_{device_arch} (it knows {supported})")
    return max(older)


class Driver:
    """The CUDA driver calls that load PTX and launch it."""

    def __init__(self, lib: Any, path: str) -> None:
        self.path = path
        what = f"the CUDA driver ({path})"
        self.error_name = bind(lib, "cuGetErrorName", ctypes.c_int, [ctypes.c_int, c_char_pp], what)
        self.error_string = bind(lib, "cuGetErrorString", ctypes.c_int, [ctypes.c_int, c_char_pp], what)
        self.fns = {
            "cuInit": bind(lib, "cuInit", ctypes.c_int, [ctypes.c_uint], what),
            "cuDriverGetVersion": bind(lib, "cuDriverGetVersion", ctypes.c_int, [c_int_p], what),
            # the driver's headers map cuCtxGetCurrent to no _v2 variant; the others likewise
            "cuCtxGetCurrent": bind(lib, "cuCtxGetCurrent", ctypes.c_int, [c_void_pp], what),
            "cuModuleLoadData": bind(
                lib, "cuModuleLoadData", ctypes.c_int, [c_void_pp, ctypes.c_char_p], what
            ),
            "cuModuleGetFunction": bind(
                lib, "cuModuleGetFunction", ctypes.c_int, [c_void_pp, ctypes.c_void_p, ctypes.c_char_p], what
            ),
            "cuModuleUnload": bind(lib, "cuModuleUnload", ctypes.c_int, [ctypes.c_void_p], what),
            "cuLaunchKernel": bind(
                lib,
                "cuLaunchKernel",
                ctypes.c_int,
                [ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p, c_void_pp, c_void_pp],
                what,
            ),
        }

    def describe(self, rc: int) -> str:
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        self.error_name(rc, ctypes.byref(name))
        self.error_string(rc, ctypes.byref(text))
        label = name.value.decode() if name.value else f"CUresult {rc}"
        return f"{label} ({text.value.decode()})" if text.value else label

    def call(self, name: str, *args: Any) -> None:
        rc = int(self.fns[name](*args))
        if rc != 0:
            raise KernelFailed(f"{name} failed: {self.describe(rc)}")

    def version(self) -> int:
        value = ctypes.c_int()
        self.call("cuDriverGetVersion", ctypes.byref(value))
        return int(value.value)


# -- the engine ------------------------------------------------------------------------------------


class PatternKernel:
    """Fill and check kernels loaded into torch's CUDA context on one device."""

    def __init__(self, torch: Any, device: Any, driver: Driver, module: ctypes.c_void_p, slots: int) -> None:
        self.torch = torch
        self.device = device
        self.driver = driver
        self.module = module
        self.slots = slots
        self.functions: dict[str, ctypes.c_void_p] = {}
        for name in kernel_names():
            function = ctypes.c_void_p()
            driver.call("cuModuleGetFunction", ctypes.byref(function), module, name.encode())
            self.functions[name] = function
        sms = int(torch.cuda.get_device_properties(device).multi_processor_count)
        self.max_blocks = max(1, sms * BLOCKS_PER_SM)
        # [0] wrong words, [1] slots claimed, then (index, value) of each located wrong word
        self.results = torch.zeros(2 + 2 * slots, dtype=torch.int64, device=device)
        self.info: dict[str, Any] = {"threads": THREADS, "blocks": self.max_blocks, "located_slots": slots}

    @classmethod
    def load(cls, torch: Any, device_index: int, slots: int = 8) -> PatternKernel:
        """Compile, load and self-test the kernels on CUDA device ``device_index``, or say why not."""
        started = time.perf_counter()
        driver = Driver(*load_first(list(DRIVER_NAMES), "the CUDA driver library (libcuda.so.1)"))
        nvrtc = Nvrtc(*load_first(nvrtc_candidates(torch), "NVRTC (libnvrtc)"))
        major, minor = torch.cuda.get_device_capability(device_index)
        arch = pick_arch(int(major) * 10 + int(minor), nvrtc.archs())
        ptx = nvrtc.compile(SOURCE, arch)
        compiled = time.perf_counter()
        device = torch.device("cuda", device_index)
        try:
            driver.call("cuInit", 0)
            torch.empty(1, device=device)  # torch makes its primary context current on this thread
            context = ctypes.c_void_p()
            driver.call("cuCtxGetCurrent", ctypes.byref(context))
            if not context.value:
                raise KernelUnavailable("no current CUDA context after torch initialised the device")
            module = ctypes.c_void_p()
            driver.call("cuModuleLoadData", ctypes.byref(module), ptx)
        except KernelFailed as exc:
            raise KernelUnavailable(f"loading the pattern kernels: {exc}") from exc
        try:
            kernel = cls(torch, device, driver, module, slots)
        except KernelFailed as exc:
            driver.fns["cuModuleUnload"](module)
            raise KernelUnavailable(f"loading the pattern kernels: {exc}") from exc
        loaded = time.perf_counter()
        try:
            kernel.self_test()
        except (KernelFailed, KernelUnavailable) as exc:
            kernel.close()
            raise KernelUnavailable(f"the pattern kernels failed their self-test: {exc}") from exc
        kernel.info.update(
            nvrtc=nvrtc.version(),
            nvrtc_library=nvrtc.path,
            driver_library=driver.path,
            driver_api=driver.version(),
            arch=f"compute_{arch}",
            compile_seconds=round(compiled - started, 3),
            load_seconds=round(loaded - compiled, 3),
            self_test_seconds=round(time.perf_counter() - loaded, 3),
        )
        return kernel

    def _launch(self, name: str, words: Any, params: list[Any]) -> None:
        n = int(words.numel())
        if n == 0:
            return
        if words.dtype != self.torch.int32 or not words.is_contiguous() or words.data_ptr() % 16:
            raise ValueError("the pattern kernels take contiguous, 16-byte aligned int32 tensors")
        quads = (n + 3) // 4
        blocks = max(1, min(self.max_blocks, (quads + THREADS - 1) // THREADS))
        pointers = (ctypes.c_void_p * len(params))(*[ctypes.addressof(p) for p in params])
        stream = ctypes.c_void_p(int(self.torch.cuda.current_stream(self.device).cuda_stream))
        self.driver.call(
            "cuLaunchKernel", self.functions[name], blocks, 1, 1, THREADS, 1, 1, 0, stream, pointers, None
        )

    def fill(self, words: Any, first_word_index: int, pattern: str, seed: int) -> None:
        """Write ``pattern`` over ``words`` (int32 on the device), whose first word has that index."""
        params = [
            ctypes.c_void_p(words.data_ptr()),
            ctypes.c_uint64(int(words.numel())),
            ctypes.c_uint64(first_word_index),
            ctypes.c_uint32(seed & MASK32),
        ]
        self._launch(f"gpuhost_fill_{PATTERN_CODES[pattern]}", words, params)

    def reset(self) -> None:
        """Zero the mismatch counter and the located slots (before a pattern's checks)."""
        self.results.zero_()

    def check(self, words: Any, first_word_index: int, pattern: str, seed: int) -> Any:
        """Count the wrong words of ``words`` into the device counter (no sync); returns the counter,
        which adds up every check since the last ``reset``."""
        params = [
            ctypes.c_void_p(words.data_ptr()),
            ctypes.c_uint64(int(words.numel())),
            ctypes.c_uint64(first_word_index),
            ctypes.c_uint32(seed & MASK32),
            ctypes.c_void_p(self.results.data_ptr()),
            ctypes.c_uint32(self.slots),
        ]
        self._launch(f"gpuhost_check_{PATTERN_CODES[pattern]}", words, params)
        return self.results[0]

    def mismatches(self) -> tuple[int, list[tuple[int, int]]]:
        """Wrong words since ``reset`` and up to ``slots`` of them as (word index, value read), by
        index (syncs). With more wrong words than slots, which ones were kept is not defined."""
        values = [int(v) for v in self.results.tolist()]
        kept = min(values[1], self.slots)
        located = sorted((values[2 + 2 * k], values[3 + 2 * k] & MASK32) for k in range(kept))
        return values[0], located

    def self_test(self) -> None:
        """Every pattern on a small buffer equals ``expected_word``, checks clean, and two flipped
        words are counted and located: the kernels and the Python mirror agree on this device."""
        torch = self.torch
        n, first, seed = SELF_TEST_WORDS, SELF_TEST_FIRST, SELF_TEST_SEED
        words = torch.empty(n, dtype=torch.int32, device=self.device)
        flipped = (5, n - 1)  # one in the uint4 body, one in the scalar tail
        for pattern in PATTERN_CODES:
            self.fill(words, first, pattern, seed)
            got = [v & MASK32 for v in words.tolist()]
            for k, value in enumerate(got):
                wanted = expected_word(pattern, first + k, seed)
                if value != wanted:
                    raise KernelUnavailable(
                        f"the {pattern} fill kernel wrote {value:#010x} at word {first + k}, "
                        f"its definition says {wanted:#010x}"
                    )
            self.reset()
            self.check(words, first, pattern, seed)
            count, located = self.mismatches()
            if count or located:
                raise KernelUnavailable(
                    f"the {pattern} check kernel found {count} wrong word(s) in a clean buffer"
                )
            for k in flipped:
                words[k : k + 1].bitwise_xor_(1 << (k % 32))
            self.reset()
            self.check(words, first, pattern, seed)
            count, located = self.mismatches()
            expect = [(first + k, got[k] ^ (1 << (k % 32))) for k in flipped]
            if count != len(flipped) or located != expect:
                raise KernelUnavailable(
                    f"the {pattern} check kernel reported {count} wrong word(s) at {located}, "
                    f"expected {len(flipped)} at {expect}"
                )
        self.reset()

    def close(self) -> None:
        if self.module.value:
            try:
                self.driver.call("cuModuleUnload", self.module)
            except KernelFailed as exc:
                print(f"pattern kernels: {exc}", file=sys.stderr)
            self.module = ctypes.c_void_p()
