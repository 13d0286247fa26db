"""Every row on the same features: the headline metrics score each task on its
backbone's pooled output; a task's own representation (a code, μ) is scored besides."""

from __future__ import annotations

import pytest
import torch

from conftest import RGB32, build_small_task
from eval.protocol import Protocol
from ssl_bench.core.registry import EVALUATORS, TASKS
from ssl_bench.evaluate import EvalData, EvalSettings, evaluate_frozen
from ssl_bench.export import evaluated_backbone
from tasks.pixels import PixelIdentity

#: The tasks with a representation of their own, and the option that sets its width.
CODES = {"autoencoder": "code_dim", "sparse-autoencoder": "code_dim",
         "contractive-autoencoder": "code_dim", "vae": "latent_dim"}


def _built(name: str, **options):
    torch.manual_seed(0)
    return build_small_task(name, RGB32, **options).eval()


def test_every_task_is_scored_on_its_pooled_backbone_of_one_width():
    images = torch.rand(4, 3, 32, 32)
    widths = {}
    for name in TASKS.names():
        task = _built(name)
        with torch.no_grad():  # as features() runs: a ViT takes another attention kernel
            pooled = task.backbone(task.normalize(images))  # (4, D)
        assert pooled.shape == (4, task.backbone.num_features), name
        torch.testing.assert_close(task.features(images), pooled, rtol=0, atol=0)
        torch.testing.assert_close(task.features_and_stages(images)[0], pooled, rtol=0, atol=0)
        if not isinstance(task.backbone, PixelIdentity):  # raw pixels: no backbone to share
            widths.setdefault(task.backbone.family, {})[name] = pooled.shape[1]
    # the tiny convnet of width 8 pools to 64 dims; split-brain's two half-width halves too
    assert set(widths["cnn"].values()) == {64}, widths
    assert len(widths["cnn"]) == len(TASKS.names()) - 2  # all but pixels and mae (a ViT)


@pytest.mark.parametrize("name", TASKS.names())
def test_only_the_autoencoders_and_the_vae_have_a_code_besides(name):
    images = torch.rand(4, 3, 32, 32)
    if name not in CODES:
        assert _built(name).task_features(images) is None
        return
    task = _built(name, **{CODES[name]: 12})
    assert task.task_features(images).shape == (4, 12)
    assert evaluated_backbone(task) is task.backbone  # export and --init-from take it


def _eval_data(n_train: int = 40, n_test: int = 20) -> EvalData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n_train + n_test) % 4
    images = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[:, 0] = (labels * 60).to(torch.uint8)[:, None, None]  # a class cue in channel 0
    return EvalData(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], 4,
                    images[n_train:])


def test_at_initialisation_an_autoencoder_scores_as_rotation_and_its_code_comes_besides():
    """Same seed, same backbone, same normalisation: the same headline row at step 0."""
    data = _eval_data()
    protocol = Protocol({"knn": EVALUATORS.get("knn")(ks=(5,)),
                         "linear": EVALUATORS.get("linear")()})
    settings = EvalSettings(batch_size=16, layer_probes=False, layer_dims=4096)
    rotation, _ = evaluate_frozen(_built("rotation"), data, protocol, settings, 0,
                                  torch.device("cpu"))
    auto, test_x = evaluate_frozen(_built("autoencoder"), data, protocol, settings, 0,
                                   torch.device("cpu"))
    assert test_x.shape == (20, 64)
    code = {k: v for k, v in auto["metrics"].items() if k.startswith("code_")}
    assert {k: v for k, v in auto["metrics"].items() if k not in code} == rotation["metrics"]
    assert {"code_knn_top1_k5", "code_linear_top1"} <= code.keys()
    assert not any(k.startswith("code_") for k in rotation["metrics"])
