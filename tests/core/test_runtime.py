"""seglib.core.runtime: the CPU's bf16 autocast follows the CPU's capability, and says why."""

import pytest
import torch

from seglib.core.runtime import (
    amp_settings,
    cpu_bf16_native,
    precision_note,
    prediction_dtype,
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
def test_prediction_dtype_is_bf16_on_the_cpu_where_asked_and_fp32_on_cuda(
    native, monkeypatch, has_native
):
    native(has_native)
    assert prediction_dtype(CPU, "bf16") is torch.bfloat16
    assert prediction_dtype(CPU, "off") is None
    assert prediction_dtype(CPU, "auto") is (torch.bfloat16 if has_native else None)
    # CUDA predicts in fp32 even where training there would autocast to bf16 (no GPU needed)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = torch.device("cuda")
    assert amp_settings(cuda, True) == (torch.bfloat16, None)
    assert [prediction_dtype(cuda, cpu_amp) for cpu_amp in ("bf16", "auto", "off")] == [None] * 3


@pytest.mark.parametrize("label", ["bf16", "fp32"])
def test_the_note_ends_with_the_precision_it_is_given_for_validation(native, label):
    native(True)  # cpu_amp "off" still trains in fp32; the label is the model's, not the CPU's
    note = "training precision: fp32 on the CPU (cpu_amp='off')"
    assert precision_note(CPU, True, "off", label) == f"{note}; validation predicts in {label}"
    assert precision_note(CPU, True, "off", None) == precision_note(CPU, True, "off") == note
    # the label is printed as given, not worked out again from the device (no GPU needed)
    cuda = precision_note(torch.device("cuda"), False, "off", label)
    assert (
        cuda
        == f"training precision: torch.float32 autocast on cuda; validation predicts in {label}"
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
