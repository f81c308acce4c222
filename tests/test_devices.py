"""Device inventory: NVIDIA product names normalised to the API's type names, declared lists."""

import subprocess

import pytest
from serving import VERI_BOX

from veri_box.devices import InventoryError, build_inventory, type_name


@pytest.mark.parametrize(
    "product, mib, expected",
    [
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("NVIDIA H200", 143771, "H200-141GB"),
        ("NVIDIA L4", 23034, "L4-24GB"),
        ("NVIDIA L40S", 46068, "L40S-48GB"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX4090-24GB"),
        ("NVIDIA RTX 6000 Ada Generation", 49140, "RTX6000Ada-48GB"),
        ("Tesla T4", 15360, "T4-16GB"),
    ],
)
def test_nvidia_names_become_api_type_names(product, mib, expected):
    assert type_name(product, mib) == expected


def test_declared_inventory_counts_indices_in_order():
    inventory = build_inventory("A100-80GB:2,L4-24GB:1", cpu_slots=2, prices={"A100-80GB": 1.5})
    assert {t: d.indices for t, d in inventory.types.items()} == {"A100-80GB": [0, 1], "L4-24GB": [2], "cpu": [0, 1]}
    assert inventory.types["A100-80GB"].price_per_hr == 1.5 and inventory.types["cpu"].price_per_hr == 0.0
    assert build_inventory("none", cpu_slots=0).types == {}


@pytest.mark.parametrize("spec", ["A100", "A100:x", "A100:0", "cpu:2", ":1"])
def test_bad_declarations_are_refused(spec):
    with pytest.raises(InventoryError):
        build_inventory(spec, cpu_slots=1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus", "A100:zero"], "--gpus expects"),
        (["--cpu-slots", "-1"], "--cpu-slots must be 0 or more"),
        (["--price-per-hour", "A100-80GB=cheap"], "is not a number"),
    ],
)
def test_serve_refuses_bad_device_settings(tmp_path, args, message):
    result = subprocess.run(
        [str(VERI_BOX), "serve", "--data-dir", str(tmp_path), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr
