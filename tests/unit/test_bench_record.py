"""The ``run`` block of every results file (bench/record.py): which CPU family ran it, even where a VM's model name
says only "AMD EPYC" — vendor, family/model/stepping and the ISA flags oneDNN and MKL pick their kernels by."""

from __future__ import annotations

from bench.record import cpu_identity, run_info

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: SomethingElse
"""


def test_an_intel_amx_cpu_is_told_from_the_amd_machines() -> None:
    assert cpu_identity(SAPPHIRE_RAPIDS) == {
        "vendor": "GenuineIntel",
        "family": 6,
        "model": 143,
        "stepping": 8,
        "isa": ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16"],
    }
    assert cpu_identity("") == {"vendor": None, "family": None, "model": None, "stepping": None, "isa": []}


def test_every_results_file_carries_it() -> None:
    machine = run_info()["machine"]
    assert set(machine) >= {"cores", "cpu", "cpu_id", "memory_gib", "python"}
    assert isinstance(machine["cpu_id"], dict)
