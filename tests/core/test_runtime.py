"""seglib.core.runtime: the CPU's bf16 autocast follows the CPU's capability, and says why."""

import pytest
import torch

from seglib.core.runtime import (
    amp_settings,
    cpu_bf16_native,
    precision_note,
    prediction_precision,
)

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU has (or lacks) native bf16: ``native(True)``."""

    def set_(amx: bool, avx512_bf16: bool = False) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return set_


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (True, True)])
def test_auto_uses_bf16_where_the_cpu_computes_it_natively(native, amx, avx512_bf16):
    native(amx, avx512_bf16)
    assert cpu_bf16_native()
    assert amp_settings(CPU, True, "auto") == (torch.bfloat16, None)
    assert amp_settings(CPU, False, "auto") == (torch.bfloat16, None)  # amp is CUDA's switch
    assert "bf16 autocast on the CPU (native bf16" in precision_note(CPU, True, "auto")


def test_auto_stays_fp32_without_native_bf16_and_says_why(native):
    native(False, False)
    assert not cpu_bf16_native()
    assert amp_settings(CPU, True, "auto") == (None, None)
    assert precision_note(CPU, True, "auto") == (
        "training precision: fp32 on the CPU (no native bf16: no AMX or AVX512-BF16)"
    )


@pytest.mark.parametrize("has_native", [True, False])
def test_bf16_and_off_are_obeyed_whatever_the_cpu(native, has_native):
    native(has_native)
    assert amp_settings(CPU, True, "bf16") == (torch.bfloat16, None)
    assert amp_settings(CPU, True, "off") == (None, None)
    assert amp_settings(CPU, True) == (None, None)  # the default of the function: off
    assert precision_note(CPU, True, "off") == "training precision: fp32 on the CPU (cpu_amp='off')"


@pytest.mark.parametrize("has_native", [True, False])
def test_prediction_precision_follows_cpu_amp_eval_on_the_cpu_only(native, has_native):
    native(has_native)
    assert prediction_precision(CPU, "bf16") == "bf16"
    assert prediction_precision(CPU, "off") == "fp32"
    assert prediction_precision(CPU, "auto") == ("bf16" if has_native else "fp32")
    assert prediction_precision(torch.device("cuda"), "bf16") == "fp32"  # CUDA predicts in fp32
    note = precision_note(CPU, True, "off", "bf16")
    assert (
        note == "training precision: fp32 on the CPU (cpu_amp='off'); validation predicts in bf16"
    )


def test_a_bf16_training_step_runs_and_learns_on_the_cpu():
    """The autocast the trainer uses, on a tiny conv net: bf16 outputs, fp32 weights, lower loss."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.zeros(4, 1, 14, 14)
    losses = []
    for _ in range(20):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
            loss = ((out.float() - y) ** 2).mean()
        assert out.dtype is torch.bfloat16
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.dtype is torch.float32 for p in net.parameters())
    assert losses[-1] < 0.5 * losses[0]
