"""No host-device sync in the hot paths (issue 21): one training step of each stage and one step of each
sampler read nothing back from the device and copy nothing to it in a blocking way.

Without a GPU the device is played by ``meta`` and every such call is counted by patching
(`host_syncs.count_host_syncs`); on a CUDA machine the same steps run under
``torch.cuda.set_sync_debug_mode("error")``. Before this issue the steps made 8 (teacher), 32 and 37
(balanced and fast distillation), 8, 6 and 7 (teacher DDIM, balanced and fast PeRFlow) such calls:
`bool(drop_reference.all())`, the NFE count's `.tolist()`, blocking `.to(device)` of the CPU draws.
"""

from __future__ import annotations

import pytest
import torch
from host_syncs import count, count_host_syncs, cuda_sync_errors, format_counts

from pipelines.model import FadaModel, host_flags
from pipelines.model_config import get_preset


def test_training_and_sampling_steps_make_no_host_device_sync():
    found = count("meta")
    assert set(found) == {"teacher", "distill balanced", "distill fast", "teacher DDIM", "balanced PeRFlow",
                          "fast PeRFlow"}  # fmt: skip
    assert not any(found.values()), "\n".join(format_counts(found))


def test_the_counter_sees_the_calls_that_wait_for_the_device():
    on_device = torch.ones(3, device="meta")
    with count_host_syncs() as calls:
        bool(on_device.all())
        on_device.tolist()
        torch.ones(2).to("meta")  # a blocking upload
        torch.ones(2).to("meta", non_blocking=True)
        torch.tensor([1.0], device="meta")
        bool(torch.ones(2).all())  # the host's own tensors cost nothing
    kinds = sorted(kind for kind, _site in calls)
    assert kinds == [".__bool__()", ".tolist()", "blocking .to(device)", "torch.tensor(data, device=...)"], calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_step_syncs_under_cuda_sync_debug_mode():
    errors = cuda_sync_errors()
    assert len(errors) == 6 and not any(errors.values()), errors


def test_drop_flags_live_on_the_host_and_count_nfe():
    assert host_flags(True, 3).tolist() == [True] * 3
    assert host_flags([False, True], 2).device.type == "cpu"
    assert host_flags(torch.tensor([[True], [False]]), 2).tolist() == [True, False]
    torch.manual_seed(0)
    config = get_preset("tiny")
    model = FadaModel.from_config(config).eval()
    b, f, s = 4, config.frames_per_clip, config.sample_size
    noisy = torch.randn(b, f, config.latent_channels, s, s)
    reference = model.reference_features(torch.randn(1, config.latent_channels, s, s))
    tokens = model.audio_tokens(torch.randn(1, f, config.audio_window_size, config.audio_feature_dim))
    drop_audio, drop_reference = torch.tensor([False, True, True, False]), torch.tensor([False, False, True, False])
    with torch.no_grad():
        mixed = model.denoise(noisy, 500.0, tokens, reference, drop_audio, drop_reference)
        model.reset_counters()
        per_sample = [model.denoise(noisy[i : i + 1], 500.0, tokens, reference, drop_audio[i], drop_reference[i])
                      for i in range(b)]  # fmt: skip
    assert model.nfe_counter == 4
    torch.testing.assert_close(mixed, torch.cat(per_sample), rtol=1e-4, atol=1e-5)
    model.reset_counters()
    with torch.no_grad():
        model.denoise(noisy, torch.full((b,), 500.0), tokens, reference, drop_audio, drop_reference)
    assert model.nfe_counter == 3  # three distinct (audio, reference) states in one forward
