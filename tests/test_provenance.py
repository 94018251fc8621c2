"""Machine fingerprints and logits hashes (pcl.provenance) against hand-written references."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pcl import provenance

# two processors of a /proc/cpuinfo, written by hand (flags abridged; one distractor per line)
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: avx2 fma avx512f avx512fx avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
vmx flags\t: avx512f_virtual

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_bf16x
"""


def test_cpu_model_and_kernel_flags_from_cpuinfo():
    assert provenance.cpu_model(XEON) == "Intel(R) Xeon(R) Platinum 8488C"
    assert provenance.cpu_model(ZEN4) == "AMD EPYC 9R14 96-Core Processor"
    assert provenance.cpu_flags(XEON) == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                                          "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                                          "amx_int8"]
    assert provenance.cpu_flags(ZEN4) == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                                          "avx512_bf16"]
    assert provenance.cpu_flags("processor\t: 0\n") == []


@pytest.mark.parametrize("text, version", [
    ("PyTorch built with:\n  - GCC 13.3\n  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n", "3.12.0"),
    ("  - oneDNN v3.5.3 (Git Hash abc)\n", "3.5.3"),
    ("- Intel(R) MKL-DNN v3.12.0", "3.12.0"),  # what early env.json files stored
    ("3.12.0", "3.12.0"), ("  - GCC 13.3\n", None), (None, None)])
def test_onednn_version_parsing(text, version):
    assert provenance._version(text) == version


def _env(**machine) -> dict:
    m = {"cpu_model": "AMD EPYC 9R14", "cpu_flags": ["avx2", "avx512_bf16"], "arch": "x86_64",
         "torch": "2.14.1", "onednn": "3.12.0"} | machine
    return {"device_type": "cpu", "precision": "bf16", "threads": 1, "cudnn_benchmark": False,
            "compile": False, "host": "a", "wall_seconds": 3.0, "git_revision": "abc", "machine": m}


def test_fingerprint_key_keys_what_changes_kernels_and_nothing_else():
    base = provenance.fingerprint_key(_env())
    assert len(base) == 12 and int(base, 16) >= 0
    assert provenance.fingerprint_key(_env() | {"host": "b", "wall_seconds": 9.0,
                                                "git_revision": "def"}) == base
    assert provenance.fingerprint_key(_env(onednn="- Intel(R) MKL-DNN v3.12.0 (Git Hash x)")) == base
    changed = [_env(cpu_flags=["avx2", "avx512_bf16", "amx_bf16"]), _env(cpu_model="Intel Xeon"),
               _env(torch="2.15.0"), _env(onednn="3.13.0"), _env() | {"threads": 2},
               _env() | {"precision": "fp32"}, _env() | {"compile": True},
               _env(gpu_name="NVIDIA H200") | {"device_type": "cuda"},
               _env(gpu_name="NVIDIA H200") | {"device_type": "cuda", "cudnn_deterministic": True}]
    keys = [provenance.fingerprint_key(e) for e in changed]
    assert base not in keys and len(set(keys)) == len(keys)
    assert provenance.fingerprint_key(_env() | {"cudnn_deterministic": False}) == base  # CPU
    assert provenance.fingerprint_key(None) is None
    assert provenance.fingerprint_key({"device_type": "cpu"}) is None  # no machine record


def test_this_machine_is_recorded():
    m = provenance.machine("cpu")
    assert m["cpu_model"] and set(m["cpu_flags"]) <= set(provenance.KERNEL_FLAGS)
    assert m["torch"] == torch.__version__ and "gpu_name" not in m
    if m["mkldnn"]:
        assert provenance._version(m["onednn"]) == m["onednn"]


def test_logits_hash_is_the_fp32_bytes_hash():
    x = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    ref = hashlib.sha256(x.numpy().astype(np.float32).tobytes()).hexdigest()[:12]
    assert provenance.logits_hash(x) == ref
    assert provenance.logits_hash(x.t().contiguous().t()) == ref  # layout does not matter
    y = x.clone()
    y[3, 4] = torch.nextafter(y[3, 4], torch.tensor(np.inf))  # one ulp
    assert provenance.logits_hash(y) != ref


def test_summarise_and_describe_name_every_machine():
    xeon = _env(cpu_model="Intel(R) Xeon(R) Platinum 8488C", cpu_flags=["amx_bf16"])
    envs = [_env(), xeon, _env(), None]
    s = provenance.summarise(envs)
    assert s["runs"] == 4 and s["unrecorded"] == 1
    assert [m["runs"] for m in s["machines"]] == [2, 1]
    assert s["machines"][0]["fingerprint"] == provenance.fingerprint_key(_env())
    assert s["machines"][1]["cpu_model"] == "Intel(R) Xeon(R) Platinum 8488C"
    text = provenance.describe(s)
    assert text.startswith("Made on 2 machines") and "AMD EPYC 9R14" in text
    assert "Intel(R) Xeon(R) Platinum 8488C" in text and "1 run records no machine" in text
    one = provenance.describe(provenance.summarise([_env()]))
    assert one.startswith("Made on one machine: AMD EPYC 9R14 (x86_64; avx2, avx512_bf16)")
    assert "bf16 training, 1 thread(s) per run: 1 runs" in one
    assert provenance.describe(provenance.summarise([None])).startswith("No run of the 1")
