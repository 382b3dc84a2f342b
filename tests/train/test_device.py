"""Device and precision have one definition (``spactor.train.device``), used by the
trainer and by fine-tuning; each names its own setting in an error."""

from __future__ import annotations

import pytest
import torch

from spactor.config import ConfigError
from spactor.evaluation.finetune import EvaluationError
from spactor.train import device as dev
from spactor.train import loop


def test_precision_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dev.autocast_dtype("auto", cpu) is None and dev.autocast_dtype("auto", cuda) is torch.bfloat16
    assert dev.autocast_dtype("bf16", cpu) is torch.bfloat16 and dev.autocast_dtype("fp32", cuda) is None
    with pytest.raises(EvaluationError, match="finetune.precision must be fp32, bf16 or auto, got 'fp16'"):
        dev.autocast_dtype("fp16", cpu, "finetune.precision", EvaluationError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device_names_the_setting():
    with pytest.raises(ConfigError, match="runtime.device: 'cuda' — no CUDA device"):
        dev.resolve_device("cuda")
    with pytest.raises(EvaluationError, match="finetune.device: 'cuda' — no CUDA device"):
        dev.resolve_device("cuda", "finetune.device", EvaluationError)


def test_the_trainer_and_fine_tuning_use_the_same_helpers():
    assert loop.resolve_device is dev.resolve_device and loop.autocast_dtype is dev.autocast_dtype
