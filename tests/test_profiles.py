"""GPU-model profiles: the shipped files, overrides by ``--gpuhost-profile`` files, and the errors a
malformed file gives (file, line and key), checked against the captures of real H100 and H200 hosts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from captures_support import CAPTURES, DATA

from pytest_gpuhost.options import UsageError
from pytest_gpuhost.profiles import (
    DEFAULT,
    DTYPES,
    FIELDS,
    TABLES,
    ProfileError,
    ProfileSet,
    build_profiles,
    load_profiles,
    shipped_profile_files,
)

PROFILES_DIR = Path(__file__).resolve().parent.parent / "pytest_gpuhost" / "profiles"

# NVML product names and the profile each must select. The first two are from the captures.
KNOWN_NAMES = {
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H200": "h200",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H100 NVL": "h100-nvl",
    "NVIDIA H200 NVL": "h200-nvl",
    "NVIDIA A100-SXM4-40GB": "a100-sxm4-40gb",
    "A100-SXM4-40GB": "a100-sxm4-40gb",
    "NVIDIA A100-SXM4-80GB": "a100-sxm4-80gb",
    "NVIDIA A100-PCIE-40GB": "a100-pcie-40gb",
    "NVIDIA A100 80GB PCIe": "a100-pcie-80gb",
    "NVIDIA L40S": "l40s",
    "NVIDIA L4": "l4",
    "Tesla T4": "t4",
    "NVIDIA A10": "a10",
}
UNPROFILED = ("NVIDIA A10G", "NVIDIA L40", "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3 extra", "")


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return load_profiles()


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def profile_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profiles([path])
    return str(info.value)


# -- the shipped profiles -------------------------------------------------------------------------


@pytest.mark.parametrize(("gpu_name", "key"), sorted(KNOWN_NAMES.items()))
def test_known_gpu_names_select_their_profile(shipped: ProfileSet, gpu_name: str, key: str) -> None:
    profile, reason = shipped.for_gpu(gpu_name)
    assert (profile.key, reason) == (key, None)


def test_no_known_name_matches_two_profiles(shipped: ProfileSet) -> None:
    for gpu_name in KNOWN_NAMES:
        matching = [p.key for p in shipped if p.key != DEFAULT and p.matches(gpu_name)]
        assert len(matching) == 1, (gpu_name, matching)


@pytest.mark.parametrize("gpu_name", UNPROFILED)
def test_an_unknown_model_gets_the_default_and_a_reason(shipped: ProfileSet, gpu_name: str) -> None:
    profile, reason = shipped.for_gpu(gpu_name)
    assert profile.key == DEFAULT
    assert reason is not None
    assert f"no GPU profile matches {gpu_name!r}; using the default profile" in reason
    assert "--gpuhost-profile" in reason


def test_every_shipped_model_is_complete(shipped: ProfileSet) -> None:
    """A model profile states what its datasheet gives; only the default leaves them unset."""
    assert set(shipped.keys()) >= {"default", *KNOWN_NAMES.values()}
    for profile in shipped:
        if profile.key == DEFAULT:
            assert (profile.memory_mib, profile.pcie_generation, profile.power_limit_w) == (None, None, None)
            assert all(profile.tflops.get(dtype) is None for dtype in DTYPES)
            continue
        assert profile.match and profile.name != profile.key
        assert profile.memory_mib and profile.pcie_generation and profile.pcie_width == 16
        assert profile.power_limit_w and 60 <= profile.power_limit_w <= 700
        assert profile.tflops.float32 and profile.tflops.float16
        assert profile.sources[0].endswith("default.toml") and len(profile.sources) == 2


def test_defaults_are_the_guides(shipped: ProfileSet) -> None:
    default = shipped.default
    assert default.temperature_limit_c == 85.0
    assert default.power_load_fraction == 0.9
    assert default.tflops_tolerance == 0.5
    assert default.fan_limit_percent is None
    h100 = shipped["h100-sxm"]
    assert (h100.temperature_limit_c, h100.baseline) == (85.0, default.baseline)  # inherited


def test_tensor_figures_are_dense_not_sparse(shipped: ProfileSet) -> None:
    """Datasheets quote TF32/BF16/FP16 with 2:4 sparsity; the profiles hold half of those."""
    h100 = shipped["h100-sxm"].tflops
    assert (h100.tf32, h100.bfloat16, h100.float16) == (494.7, 989.4, 989.4)
    a100 = shipped["a100-sxm4-80gb"].tflops
    assert (a100.float64, a100.tf32, a100.bfloat16) == (19.5, 156.0, 312.0)
    assert shipped["t4"].tflops.tf32 is None and shipped["t4"].tflops.bfloat16 is None
    for profile in shipped:
        t = profile.tflops
        if t.tf32 and t.bfloat16:
            assert t.bfloat16 == pytest.approx(2 * t.tf32, rel=0.02), profile.key


def test_h100_measurement_clears_the_floor(shipped: ProfileSet) -> None:
    """docs/verification.md run 1: a bf16 matmul reached 690 TFLOP/s on an H100 SXM."""
    floor = shipped["h100-sxm"].min_tflops("bfloat16")
    assert floor is not None and floor < 690 < 989.4
    assert shipped.default.min_tflops("bfloat16") is None
    with pytest.raises(KeyError, match="unknown dtype 'int8'"):
        shipped["h100-sxm"].min_tflops("int8")


def _smi_fields(capture: str) -> list[dict[str, str]]:
    xml = (DATA / capture / "nvidia-smi-q-x.xml").read_text()
    gpus = []
    for block in re.findall(r"<gpu id=.*?</gpu>", xml, flags=re.DOTALL):
        gpus.append(
            {
                "name": re.search(r"<product_name>(.*?)</product_name>", block).group(1),  # type: ignore[union-attr]
                "memory": re.search(r"<fb_memory_usage>\s*<total>(\d+) MiB", block).group(1),  # type: ignore[union-attr]
                "power": re.search(r"<current_power_limit>([\d.]+) W", block).group(1),  # type: ignore[union-attr]
                "gen": re.search(r"<max_link_gen>(\d+)</max_link_gen>", block).group(1),  # type: ignore[union-attr]
                "width": re.search(r"<max_link_width>(\d+)x</max_link_width>", block).group(1),  # type: ignore[union-attr]
            }
        )
    assert gpus
    return gpus


@pytest.mark.parametrize("capture", CAPTURES)
def test_captured_hosts_meet_their_profiles(shipped: ProfileSet, capture: str) -> None:
    """The real H100 and H200 hosts show what their profiles expect."""
    for gpu in _smi_fields(capture):
        profile, reason = shipped.for_gpu(gpu["name"])
        assert reason is None
        low, high = profile.memory_range_mib() or (0, 0)
        assert low <= int(gpu["memory"]) <= high
        assert float(gpu["power"]) == profile.power_limit_w
        assert (int(gpu["gen"]), int(gpu["width"])) == (profile.pcie_generation, profile.pcie_width)
        assert profile.min_load_power_w(float(gpu["power"])) == pytest.approx(630.0)


# -- every value has its source ---------------------------------------------------------------


ASSIGNMENT = re.compile(r"^\s*[A-Za-z0-9_\"'.-]+\s*=")


def _comment(line: str) -> str:
    """The ``# comment`` of a TOML line, outside any string."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[index + 1 :].strip()
    return ""


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_value_names_its_source(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# "), "each file opens with a comment naming its sources"
    assignments = [line for line in lines if ASSIGNMENT.match(line)]
    assert assignments
    for line in assignments:
        comment = _comment(line)
        assert len(comment) >= 10, f"{path.name}: no source comment: {line!r}"
    if path.name != "default.toml":
        text = path.read_text()
        assert "datasheet" in text and "sparsity" in text
        assert re.search(r"\bdense\b|\bDENSE\b", text)


def test_shipped_files_are_package_data() -> None:
    labels = [Path(label).name for label, _ in shipped_profile_files()]
    assert labels == sorted(p.name for p in PROFILES_DIR.glob("*.toml"))
    assert "default.toml" in labels


# -- overrides ----------------------------------------------------------------------------------


def test_an_override_replaces_only_the_fields_it_sets(tmp_path: Path, shipped: ProfileSet) -> None:
    site = write(
        tmp_path,
        """
[h100-sxm]
temperature_limit_c = 80  # our room runs hot

[h100-sxm.tflops]
bfloat16 = 900.0  # measured on our reference node
""",
    )
    profiles = load_profiles([site])
    h100, before = profiles["h100-sxm"], shipped["h100-sxm"]
    assert h100.temperature_limit_c == 80.0
    assert h100.tflops.bfloat16 == 900.0
    assert h100.tflops.float16 == before.tflops.float16 == 989.4
    assert (h100.memory_mib, h100.match, h100.power_limit_w) == (before.memory_mib, before.match, 700.0)
    assert h100.sources[-1] == str(site)
    assert profiles["h200"] == shipped["h200"]


def test_overriding_the_default_reaches_every_model_that_inherits(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        """
[default]
temperature_limit_c = 78  # site policy
fan_limit_percent = 90  # our PCIe cards have fans

[default.baseline]
performance_tolerance = 0.05  # tighter re-checks
""",
    )
    profiles = load_profiles([site])
    for key in ("default", "h100-sxm", "t4"):
        assert profiles[key].temperature_limit_c == 78.0
        assert profiles[key].fan_limit_percent == 90.0
        assert profiles[key].baseline.performance == 0.05
        assert profiles[key].baseline.temperature_c == 5.0
    assert profiles["t4"].tflops_tolerance == 0.3  # a model's own value still wins


def test_a_new_model_is_matched_before_shipped_ones(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        """
[rtx-4090]
name = "GeForce RTX 4090"  # lab box
match = ["NVIDIA GeForce RTX 4090"]  # NVML name
pcie_generation = 4  # spec sheet

[rtx-4090.tflops]
float32 = 82.6  # spec sheet

[h100-special]
match = ["NVIDIA H100 80GB HBM3"]  # a site-specific H100 profile wins over the shipped one
power_limit_w = 500  # capped by the site
memory_mib = "none"  # not checked here
""",
    )
    profiles = load_profiles([site])
    rtx, reason = profiles.for_gpu("nvidia geforce rtx 4090")  # NVML names match case-insensitively
    assert (rtx.key, reason, rtx.pcie_generation, rtx.tflops.float32) == ("rtx-4090", None, 4, 82.6)
    assert rtx.temperature_limit_c == 85.0
    special, _ = profiles.for_gpu("NVIDIA H100 80GB HBM3")
    assert (special.key, special.power_limit_w, special.memory_mib) == ("h100-special", 500.0, None)


def test_none_switches_an_inherited_check_off(tmp_path: Path) -> None:
    site = write(
        tmp_path, '[l40s]\npcie_generation = "none"  # riser card\n\n[l40s.tflops]\nfloat32 = "none"  # n/a\n'
    )
    l40s = load_profiles([site])["l40s"]
    assert (l40s.pcie_generation, l40s.tflops.float32, l40s.min_tflops("float32")) == (None, None, None)
    assert l40s.pcie_width == 16


def test_later_files_override_earlier_ones(tmp_path: Path) -> None:
    first = write(tmp_path, "[a10]\npower_limit_w = 120  # first\n", "first.toml")
    second = write(tmp_path, "[a10]\npower_limit_w = 130  # second\n", "second.toml")
    assert load_profiles([first, second])["a10"].power_limit_w == 130.0
    assert load_profiles([second, first])["a10"].power_limit_w == 120.0


def test_inline_and_dotted_tables_are_accepted(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        "[a10]\ntflops = { float16 = 100.0 }  # inline\nbaseline.power_tolerance = 0.2  # dotted\n",
    )
    a10 = load_profiles([site])["a10"]
    assert (a10.tflops.float16, a10.tflops.float32, a10.baseline.power) == (100.0, 31.2, 0.2)


# -- malformed files: a usage error naming file, line and key ------------------------------------


def test_a_syntax_error_names_file_line_column_and_the_line(tmp_path: Path) -> None:
    message = profile_error(tmp_path, "[h100-sxm]\ntemperature_limit_c = = 80\n")
    assert message.startswith(f"{tmp_path / 'site.toml'}:2:")
    assert "invalid TOML" in message
    assert "'temperature_limit_c = = 80'" in message


def test_a_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    message = profile_error(tmp_path, "[a10]\npcie_width = 16\npcie_width = 8\n")
    assert f"{tmp_path / 'site.toml'}:3:" in message


@pytest.mark.parametrize(
    ("text", "line", "key", "problem"),
    [
        (
            '[h100-sxm]\n\n[h100-sxm.tflops]\nbfloat16 = "fast"  # x\n',
            4,
            "h100-sxm.tflops.bfloat16",
            "got the string 'fast'",
        ),
        (
            "[h100-sxm]\nname = 'x'\ntemprature_limit_c = 80\n",
            3,
            "h100-sxm.temprature_limit_c",
            "did you mean 'temperature_limit_c'",
        ),
        ("[a10]\npower_load_fraction = 1.5\n", 2, "a10.power_load_fraction", "got 1.5"),
        ("[a10]\ntflops_tolerance = 0\n", 2, "a10.tflops_tolerance", "got 0"),
        ("[a10]\npcie_width = 16.0\n", 2, "a10.pcie_width", "expected an integer"),
        ("[a10]\nmemory_mib = true\n", 2, "a10.memory_mib", "got the boolean true"),
        ("[a10]\ntemperature_limit_c = 'none'\n", 2, "a10.temperature_limit_c", "got the string 'none'"),
        ("[a10]\nmatch = 'NVIDIA A10'\n", 2, "a10.match", "expected a list of regular expressions"),
        ("[a10]\nmatch = ['NVIDIA (A10']\n", 2, "a10.match", "invalid regular expression"),
        ("[a10]\ntflops = { float16 = -1 }\n", 2, "a10.tflops.float16", "got -1"),
        ("[a10]\nbaseline.speed = 1\n", 2, "a10.baseline.speed", "unknown key"),
        ("[a10]\n[a10.tflops]\nint8 = 1.0\n", 3, "a10.tflops.int8", "unknown key"),
        ("[a10]\ntflops = 5\n", 2, "a10.tflops", "expected a table [a10.tflops]"),
        ("version = 2\n", 1, "version", "expected a table [version] of profile fields"),
        ("[H100]\nname = 'x'\n", 1, "H100", "lowercase letters, digits and dashes"),
        ("[default]\nmatch = ['.*']\n", 2, "default.match", "no `match`"),
        (
            '[a10]  # see "docs"\n\n[a10.tflops]  # dense\nfloat16 = []  # x\n',
            4,
            "a10.tflops.float16",
            "got an empty list",
        ),
    ],
)
def test_a_bad_value_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, problem: str
) -> None:
    message = profile_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'site.toml'}:{line}: {key}: "), message
    assert problem in message


def test_a_new_model_needs_match(tmp_path: Path) -> None:
    message = profile_error(tmp_path, "\n[b200]\npower_limit_w = 1000  # x\n")
    assert message.startswith(f"{tmp_path / 'site.toml'}:2: [b200]: a new model needs `match`")


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--gpuhost-profile .*missing\.toml: cannot read it"):
        load_profiles([tmp_path / "missing.toml"])


def test_profile_errors_are_usage_errors() -> None:
    assert issubclass(ProfileError, UsageError)


def test_without_a_default_there_is_no_profile_set() -> None:
    with pytest.raises(ProfileError, match="no 'default' profile"):
        build_profiles([("x.toml", "[a10]\nmatch = ['NVIDIA A10']\n")])


def test_the_format_tables_agree_with_the_dataclass() -> None:
    """Every TOML key is a Profile field (or a table of them): the docs list these names."""
    from dataclasses import fields

    from pytest_gpuhost.profiles import BaselineTolerance, Profile

    names = {f.name for f in fields(Profile)}
    assert set(FIELDS) <= names
    assert set(TABLES) <= names
    assert {
        f"{name}_tolerance" if name != "temperature_c" else "temperature_tolerance_c"
        for name in (f.name for f in fields(BaselineTolerance))
    } == set(TABLES["baseline"])
    docs = (Path(__file__).resolve().parent.parent / "docs" / "profiles.md").read_text()
    for name in [*FIELDS, *TABLES, *TABLES["baseline"], *DTYPES]:
        assert f"`{name}`" in docs, name
