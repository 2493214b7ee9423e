"""BatchMix: mixup and cutmix on whole batches give images and soft targets that agree with each other, are
reproducible from the generator, and refuse meaningless settings."""

import pytest
import torch

from visionlaunch.config import load_config
from visionlaunch.datasets import BatchMix
from visionlaunch.errors import VisionlaunchError

N, C = 10, 10


def labelled(n=N, h=8, w=8):
    """Sample i is a constant image of value i with label i, so every mixed pixel tells where it came from."""
    labels = torch.arange(n)
    return labels.float().view(n, 1, 1, 1).expand(n, 3, h, w).contiguous(), labels


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_disabled_gives_one_hot_targets_and_the_same_images():
    x, y = labelled()
    out, targets = BatchMix()(x, y, C, gen())
    assert out is x and torch.equal(targets, torch.eye(C)[y])
    assert not BatchMix().enabled and BatchMix(mixup_alpha=0.2).enabled and BatchMix(cutmix_alpha=1.0).enabled


@pytest.mark.parametrize("seed", range(5))
def test_mixup_blends_images_with_the_weights_of_the_targets(seed):
    x, y = labelled()
    out, targets = BatchMix(mixup_alpha=1.0)(x, y, C, gen(seed))
    assert targets.shape == (N, C) and torch.allclose(targets.sum(1), torch.ones(N))
    # Each mixed image is the targets' weighted mean of the source images (values = class indices).
    expected = targets @ torch.arange(C, dtype=torch.float32)
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    assert torch.equal(out.amin(dim=(1, 2, 3)), out.amax(dim=(1, 2, 3)))  # blended everywhere alike
    lam = targets[torch.arange(N), y]
    assert len(set(lam[targets.amax(1) < 1].round(decimals=5).tolist())) <= 1  # one lam for the whole batch


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_pastes_a_box_whose_area_is_the_targets_share(seed):
    x, y = labelled(h=32, w=32)
    out, targets = BatchMix(cutmix_alpha=1.0)(x, y, C, gen(seed))
    assert torch.allclose(targets.sum(1), torch.ones(N))
    for i in range(N):
        values, counts = out[i, 0].unique(return_counts=True)
        share = {int(v): c.item() / out[i, 0].numel() for v, c in zip(values, counts)}
        assert set(share) <= {i, *torch.nonzero(targets[i]).flatten().tolist()}
        for cls, fraction in share.items():
            assert targets[i, cls].item() == pytest.approx(fraction, abs=1e-6)
        torch.testing.assert_close(out[i, 1], out[i, 0])  # the same box in every channel


def test_same_generator_state_same_batch_and_other_seeds_differ():
    x, y = labelled()
    mix = BatchMix(mixup_alpha=0.4, cutmix_alpha=1.0)
    a = mix(x, y, C, gen(3))
    b = mix(x, y, C, gen(3))
    c = mix(x, y, C, gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_with_both_alphas_each_batch_uses_one_of_them():
    x, y = labelled(h=16, w=16)
    mix, g = BatchMix(mixup_alpha=1.0, cutmix_alpha=1.0), gen(0)
    kinds = set()
    for _ in range(40):
        out, _ = mix(x, y, C, g)
        per_image_distinct = max(len(out[i, 0].unique()) for i in range(N))
        kinds.add("cutmix" if per_image_distinct > 1 else "mixup")
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("kwargs", [{"mixup_alpha": -0.1}, {"cutmix_alpha": float("inf")}, {"mixup_alpha": True},
                                    {"cutmix_alpha": "1"}])
def test_bad_alphas_are_refused(kwargs):
    with pytest.raises(VisionlaunchError, match=r"augment\.(mixup|cutmix)_alpha must be a finite number >= 0"):
        BatchMix(**kwargs)


def test_config_refuses_negative_alphas():
    with pytest.raises(VisionlaunchError, match="augment.mixup_alpha"):
        load_config(overrides=["augment.mixup_alpha=-1"])
    assert load_config(overrides=["augment.cutmix_alpha=1.0"]).augment.cutmix_alpha == 1.0
