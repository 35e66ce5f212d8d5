"""Which GPU frameworks a container's Python has, and whether they see GPUs.

A standalone script, run inside the image under test with the image's own interpreter: the
standard library only, and syntax that Python 3.7 still reads. It prints one JSON object:

    {"torch": "2.8.0+cu128" | null, "cuda_available": true, "device_count": 1,
     "devices": ["NVIDIA H100 80GB HBM3"], "cupy": "13.6.0" | null, "error": null | "..."}

``error`` says why a framework that is installed could not reach the GPUs. The exit code is 0
whenever the JSON was printed; the check decides what the answer means.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def probe_torch(result: dict[str, Any], errors: list[str]) -> None:
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        return
    except Exception as exc:  # a broken install: missing libcudart, wrong glibc
        errors.append(f"torch: {_short(exc)}")
        return
    result["torch"] = str(getattr(torch, "__version__", "unknown"))
    try:
        result["cuda_available"] = bool(torch.cuda.is_available())
        result["device_count"] = int(torch.cuda.device_count()) if result["cuda_available"] else 0
        result["devices"] = [str(torch.cuda.get_device_name(i)) for i in range(result["device_count"])]
        if not result["cuda_available"]:
            errors.append(f"torch: CUDA is not available (torch built for CUDA {torch.version.cuda})")
    except Exception as exc:
        errors.append(f"torch: {_short(exc)}")


def probe_cupy(result: dict[str, Any], errors: list[str]) -> None:
    try:
        cupy: Any = importlib.import_module("cupy")
    except ImportError:
        return
    except Exception as exc:
        errors.append(f"cupy: {_short(exc)}")
        return
    result["cupy"] = str(getattr(cupy, "__version__", "unknown"))
    if result["torch"] is not None and result["cuda_available"]:
        return  # torch already answered
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
        result["device_count"] = max(result["device_count"], count)
        result["cuda_available"] = result["cuda_available"] or count > 0
    except Exception as exc:
        errors.append(f"cupy: {_short(exc)}")


def probe() -> dict[str, Any]:
    result: dict[str, Any] = {
        "torch": None,
        "cuda_available": False,
        "device_count": 0,
        "devices": [],
        "cupy": None,
        "error": None,
        "python": sys.version.split()[0],
    }
    errors: list[str] = []
    probe_torch(result, errors)
    probe_cupy(result, errors)
    if result["torch"] is None and result["cupy"] is None and not errors:
        errors.append("neither torch nor cupy is installed in this Python")
    result["error"] = "; ".join(errors) or None
    return result


def main() -> int:
    print(json.dumps(probe(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
