"""The verdict on an image's CUDA requirement against the host's driver and GPUs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pytest_gpuhost.criteria.health import Verdict
from pytest_gpuhost.facts.image_cuda import GpuTraits, parse_require_cuda, requirement_met


def judge_image_cuda(
    image: str, env: Mapping[str, str], cuda: str | None, driver: str | None, gpus: Sequence[GpuTraits]
) -> Verdict:
    """The image's NVIDIA_REQUIRE_CUDA is met by this driver on every GPU."""
    v = Verdict()
    raw = env.get("NVIDIA_REQUIRE_CUDA", "")
    v.metric("image", image)
    v.metric("driver_cuda", cuda)
    if env.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true", "yes"):
        v.notes.append(
            f"{image} sets NVIDIA_DISABLE_REQUIRE: the toolkit does not check its CUDA requirement"
        )
        return v
    if not raw.strip():
        v.notes.append(f"{image} declares no NVIDIA_REQUIRE_CUDA: nothing to check")
        return v
    req = parse_require_cuda(raw)
    needed = req.cuda
    v.metric("image_requires_cuda", needed)
    if cuda is None:
        v.skip = "the driver's CUDA version is unknown (neither NVML nor nvidia-smi reported it)"
        return v
    traits = list(gpus) or [GpuTraits(None, None)]
    outcomes = [requirement_met(req, cuda, driver, gpu) for gpu in traits]
    if all(ok is True for ok, _ in outcomes):
        compat = sorted({",".join(map(str, g)) for _, g in outcomes if g and all(c.key != "cuda" for c in g)})
        if compat:
            v.notes.append(
                f"{image} needs CUDA {needed}; it runs through forward compatibility: {' '.join(compat)}"
            )
        return v
    shown = (
        raw if len(raw) <= 80 else raw[:60].rsplit(" ", 1)[0] + f" ... ({len(req.alternatives)} alternatives)"
    )
    if any(ok is False for ok, _ in outcomes):
        v.fail(
            f"{image} needs CUDA {needed or '?'} (NVIDIA_REQUIRE_CUDA={shown}); the driver {driver or '?'} "
            f"provides CUDA {cuda}",
            "its containers fail to start ('requirement error: unsatisfied condition: "
            f"cuda>={needed}'), or CUDA reports 'CUDA driver version is insufficient for CUDA runtime version'",
            f"upgrade the driver to a branch that provides CUDA {needed} or later, or pick an image built "
            f"for CUDA {cuda} or older",
        )
        return v
    v.warn(
        f"cannot decide whether {image} (NVIDIA_REQUIRE_CUDA={shown}) runs on this driver",
        "a constraint names a fact the suite could not read (the GPU's brand or compute capability)",
        f"run `docker run --rm --gpus all {image} nvidia-smi` to see whether the toolkit accepts it",
    )
    return v
