"""Frozen evaluation helpers: BatchNorm statistics re-estimated on clean images."""

from __future__ import annotations

import pytest
import torch

from conftest import RGB32, build_small_task
from ssl_bench.evaluate import recalibrated_batchnorm


def test_recalibrated_batchnorm_uses_the_given_images_and_restores_the_task():
    task = build_small_task("denoising", RGB32).eval()
    first_norm = task.backbone.stages[0][1]
    first_norm.running_mean.fill_(100.0)  # statistics of some other input distribution
    before = {k: v.clone() for k, v in task.state_dict().items()}
    images = (torch.rand(40, 3, 32, 32) * 255).to(torch.uint8)

    with recalibrated_batchnorm(task, images, batch_size=20, device=torch.device("cpu")):
        conv = task.backbone.stages[0][0]
        with torch.no_grad():
            expected = conv(task.normalize(images.float() / 255)).mean(dim=(0, 2, 3))
        torch.testing.assert_close(first_norm.running_mean, expected, rtol=1e-4, atol=1e-5)
        assert not first_norm.training and first_norm.momentum is None
    after = task.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # training is unaffected
    assert first_norm.momentum == 0.1


def test_recalibration_is_a_no_op_without_batchnorm():
    task = build_small_task("mae", RGB32).eval()  # a ViT: LayerNorm only
    images = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    x = torch.rand(2, 3, 32, 32)
    reference = task.features(x)
    with recalibrated_batchnorm(task, images, batch_size=2, device=torch.device("cpu")):
        torch.testing.assert_close(task.features(x), reference)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reevaluating_a_run_reproduces_its_metrics(tmp_path, monkeypatch, precision):
    """``ssl-bench evaluate`` rebuilds the run's data, protocol and trained task: with
    the run's own settings it gives the run's own numbers, exactly (the same kernels on
    the same inputs: the task is evaluated in the layout training leaves it in, whose
    fp32 features differ from another layout's by ~1e-8, enough to flip a k-NN vote)."""
    import json

    from ssl_bench.cli import main

    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    assert main(["run", "--task", "denoising", "--epochs", "1", "--train-subset", "64",
                 "--batch-size", "32", "--evaluators", "knn", "--lowshot", "--no-layer-probes",
                 "--no-step0", "--test-subset", "100", "--eval-train-subset", "200",
                 "--pretext-eval-images", "64", "--precision", precision,
                 "--out", str(out)]) == 0
    (run_dir,) = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert main(["evaluate", str(run_dir), "-o", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["metrics"] == results["metrics"] and same["pretext"] == results["pretext"]
    bn = tmp_path / "bn.json"
    assert main(["evaluate", str(run_dir), "--bn-recalibrate", "-o", str(bn)]) == 0
    assert json.loads(bn.read_text())["metrics"].keys() == same["metrics"].keys()
    assert main(["evaluate", str(tmp_path), "-o", str(tmp_path / "x.json")]) == 2



def test_an_unwritable_output_file_is_one_line_naming_it(tmp_path):
    import pytest

    from ssl_bench.cli import _writing
    from ssl_bench.core.errors import OptionError
    from ssl_bench.core.rundir import atomic_write_json

    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "out.json"  # a file stands where a folder should
    with pytest.raises(OptionError, match=f"-o {target}: cannot write it"):
        with _writing(str(target)):
            atomic_write_json(target, {})
    assert (tmp_path / "file").read_text() == "x"


def test_a_reloaded_task_gives_the_trained_task_s_features_bit_for_bit():
    """The cause of `ssl-bench evaluate` once disagreeing with its run: training leaves
    the task in channels-last, a reloaded checkpoint is contiguous, and the two layouts
    run different convolution kernels (fp32 features ~3e-8 apart, enough to flip a
    k-NN vote). Every evaluation now runs in one layout, so the features are equal."""
    from eval.knn import KNNEvaluator
    from eval.protocol import Protocol
    from ssl_bench.evaluate import EvalData, EvalSettings, evaluate_frozen

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 2
    data = EvalData(images[:32], labels[:32], images[32:], labels[32:], 2, images[32:])
    settings = EvalSettings(batch_size=16, layer_probes=False, layer_dims=64)
    trained = build_small_task("rotation", RGB32).to(memory_format=torch.channels_last)
    reloaded = build_small_task("rotation", RGB32)
    reloaded.load_state_dict(trained.state_dict())  # contiguous, as torch.load gives it
    _, a = evaluate_frozen(trained, data, Protocol({"knn": KNNEvaluator()}), settings, 0,
                           torch.device("cpu"))
    _, b = evaluate_frozen(reloaded, data, Protocol({"knn": KNNEvaluator()}), settings, 0,
                           torch.device("cpu"))
    assert torch.equal(a, b)
