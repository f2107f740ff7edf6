"""Linear probes (``finetuning_type: linear_probe``) and LP-FT (``lp_ft: true``).

References: scikit-learn's ``LogisticRegression`` (what CoOp's lpclip fits), lpclip's C search and LP++'s training
loop written again in the reference repositories' own style (nn.Linear classifier, a blend vector whose gradient is
never cleared, numpy-style log10 bisection)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import base_args, i2t_args, read_json
from hypothesis import given, settings
from hypothesis import strategies as st
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from transformers import CLIPModel

from llamafactory.clip_finetune.methods import saved_run
from llamafactory.clip_finetune.methods.probe.head import HEAD_FILE, LinearHead, save_head
from llamafactory.clip_finetune.methods.probe.solvers import C_GRID, fit_logistic, fit_lpp, search_c
from llamafactory.clip_finetune.train.arguments import check_clip_args


def blobs(n_per_class=12, classes=4, dim=8, seed=0, spread=1.5):
    """Overlapping Gaussian classes on the unit sphere (not separable: every C has a finite optimum)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=g)
    x = means.repeat_interleave(n_per_class, 0) + spread * torch.randn(classes * n_per_class, dim, generator=g)
    return F.normalize(x, dim=-1), torch.arange(classes).repeat_interleave(n_per_class)


@pytest.mark.parametrize("c", [0.05, 1.0, 20.0])
def test_logistic_probe_equals_scikit_learn(c):
    x, y = blobs()
    ours = fit_logistic(x, y, 4, c)
    reference = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x.double().numpy(), y.numpy())
    probs = F.softmax(F.linear(x.double(), ours.weight.double(), ours.bias.double()), -1).numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(x.double().numpy()), atol=2e-4)
    np.testing.assert_allclose(ours.weight.numpy(), reference.coef_, atol=2e-3)  # W is unique (penalized)


def test_zero_shot_probe_stays_at_the_zero_shot_classifier_when_c_is_small_and_leaves_it_when_large():
    x, y = blobs()
    center = 10 * F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    near = fit_logistic(x, y, 4, 1e-7, center)
    assert torch.allclose(near.weight, center, atol=1e-4)
    far = fit_logistic(x, y, 4, 1e3, center)
    assert (far.weight - center).norm() > 1.0


def lpclip_search(score, steps):
    """CoOp's lpclip/linear_probe.py search, step by step as it is written there (acc per C through ``score``)."""
    acc_list = [score(c) for c in [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]]
    c_peak = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6][int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = c_peak
    for _ in range(steps):
        acc_left, acc_right = score(c_left), score(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2), st.integers(0, 8), st.floats(-6, 6))
def test_c_search_follows_lpclip(coarseness, decimals, steps, optimum):
    """A validation accuracy that peaks near ``optimum`` (log10 C), rounded so that ties happen: the search picks the
    C lpclip picks, and scores each C once."""

    def score(c):
        return round(-abs(math.log10(c) - optimum) / coarseness, decimals)

    calls = []
    ours, _ = search_c(lambda c: calls.append(c) or score(c), steps)
    assert math.isclose(ours, lpclip_search(score, steps), rel_tol=1e-9)
    assert len(calls) == len(set(calls)) and set(C_GRID) <= set(calls)


def lpp_reference(features, labels, text_weights, shots, epochs, val_features, val_labels):
    """FewShot-CLIP-Strong-Baseline's LinearProbe_P2.forward, its helpers inlined (text_weights: [dim, classes]),
    the classifier's bias started at zero (the reference leaves nn.Linear's random one)."""
    classes = int(features.shape[0] / shots)
    one_hot = F.one_hot(labels, classes).float()
    classifier = torch.nn.Linear(features.shape[1], classes, bias=True)
    classifier.weight.data = one_hot.t() @ features
    classifier.bias.data.zero_()
    lr_temp = (4 * features.shape[0]) / torch.linalg.eigvalsh((features.t() @ features).double()).max().item()
    z_s = features @ text_weights  # compute_centroids_alpha: one_hot * z_s elementwise, over each class's count
    centroids_alpha = (one_hot * z_s / one_hot.sum(0, keepdim=True)).sum(0)
    init_alpha = torch.mean(250 / shots * (centroids_alpha.double() * shots))
    alpha_vec = (init_alpha * torch.ones(1, classes)).float().requires_grad_(True)
    lr_alpha = features.shape[0] / (max(torch.sum(torch.pow(features @ text_weights, 2), dim=0)) * 4)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    best_acc, best = 0.0, None
    for epoch in range(epochs):
        logits = classifier(features) + torch.ones(features.shape[0], 1) @ alpha_vec * (features @ text_weights)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        logits_val = classifier(val_features) + torch.ones(len(val_features), 1) @ alpha_vec * (
            val_features @ text_weights
        )
        acc_val = np.mean(logits_val.argmax(dim=1).numpy() == val_labels.numpy()) * 100.0
        if acc_val >= best_acc:
            best_acc = acc_val
            best = (
                classifier.weight.detach().clone(),
                classifier.bias.detach().clone(),
                alpha_vec.detach()[0].clone(),
            )
    return best, best_acc / 100


def test_lp_plus_plus_follows_the_reference_loop():
    x, y = blobs(n_per_class=8, classes=5, dim=16, seed=3)
    xv, yv = blobs(n_per_class=6, classes=5, dim=16, seed=4)
    text = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    ours = fit_lpp(x, y, text, epochs=45, val=(xv, yv))
    (weight, bias, alpha), acc = lpp_reference(x, y, text.t(), 8, 45, xv, yv)
    assert ours.val_accuracy == pytest.approx(acc)
    torch.testing.assert_close(ours.weight, weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias, bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.alpha, alpha, rtol=1e-4, atol=1e-4)


def probe_args(out, **keys):
    defaults = dict(finetuning_type="linear_probe", num_shots=4, val_dataset="fashion_mnist_val", image_size=32)
    return base_args(out, **{**defaults, **keys})


@pytest.mark.slow
@pytest.mark.parametrize("probe_type", ["lpp", "logistic", "zero_shot"])
def test_a_probe_run_saves_a_head_that_evaluates_and_predicts_as_the_run_did(tmp_path, probe_type):
    out = tmp_path / "probe"
    keys = {"probe_epochs": 30} if probe_type == "lpp" else {"probe_search_steps": 2}
    run_exp(probe_args(out, probe_type=probe_type, **keys))
    results = read_json(out / "all_results.json")
    assert "probe_val_accuracy" in results and ("probe_c" in results) == (probe_type != "lpp")
    # the test split is balanced (20 images per class): the mean of the classes' recalls is the accuracy
    assert results["eval_mean_per_class_recall"] == pytest.approx(results["eval_accuracy"])
    assert not (out / "config.json").exists()  # the base checkpoint is not copied: the head names it
    tensors = load_file(str(out / HEAD_FILE))
    assert tensors["weight"].shape == (10, 32) and ("alpha" in tensors) == (probe_type == "lpp")
    saved = saved_run(str(out))
    assert saved["method"] == "linear_probe" and saved["checkpoint"].endswith("tiny-clip")
    again = tmp_path / "again"
    args = probe_args(
        again, model_name_or_path=str(out), do_train=False, do_predict=True, predict_dataset="fashion_mnist_test"
    )
    args.pop("finetuning_type")
    run_exp(args)
    assert read_json(again / "all_results.json")["eval_accuracy"] == results["eval_accuracy"]
    assert read_json(again / "all_results.json")["predict_accuracy"] == results["eval_accuracy"]


@pytest.mark.slow
def test_the_probe_trains_nothing_in_the_backbone_and_beats_chance(tmp_path):
    out = tmp_path / "probe"
    run_exp(probe_args(out, num_shots=16))
    assert read_json(out / "all_results.json")["eval_accuracy"] > 0.3  # 10 classes


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(probe_type="lpp", probe_c=1.0), "probe_c is the regularization of probe_type logistic"),
        (dict(probe_type="logistic", val_dataset=None), "searches its regularization on the validation split"),
        (dict(probe_views=0), "probe_views must be at least 1"),
        (dict(classification_loss="sigmoid"), "trained with cross-entropy"),
        (dict(do_train=False), "set do_train: true"),
        (dict(probe_type="logistic", probe_epochs=50), "probe_epochs counts LP.*'s epochs"),
        (dict(probe_search_steps=3), "probe_search_steps belongs to the search for C"),
        (dict(probe_type="logistic", probe_c=1.0, probe_search_steps=3), "probe_search_steps belongs to the search"),
    ],
)
def test_bad_probe_settings_are_refused(tmp_path, keys, message):
    with pytest.raises(ValueError, match=message):
        check_clip_args(probe_args(tmp_path / "x", **keys))


def test_probe_keys_and_lp_ft_are_refused_where_they_do_not_apply(tmp_path):
    with pytest.raises(
        ValueError, match="fits a head over the classes: use it with classification, not image_to_text"
    ):
        check_clip_args(i2t_args(tmp_path / "a", finetuning_type="linear_probe"))
    with pytest.raises(ValueError, match="probe_type applies to finetuning_type linear_probe or lp_ft"):
        check_clip_args(base_args(tmp_path / "b", probe_type="logistic"))
    with pytest.raises(ValueError, match="lp_ft finetunes existing weights .* not adapter"):
        check_clip_args(base_args(tmp_path / "c", finetuning_type="adapter", lp_ft=True))
    with pytest.raises(ValueError, match="a trained text tower would get no gradient: set freeze_text_tower: true"):
        check_clip_args(base_args(tmp_path / "e", finetuning_type="clip_lora", lp_ft=True))
    check_clip_args(base_args(tmp_path / "f", finetuning_type="clip_lora", lp_ft=True, freeze_text_tower=True))
    with pytest.raises(ValueError, match="would pair the best checkpoint's weights with the last step's head"):
        best = dict(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch")
        check_clip_args(base_args(tmp_path / "g", lp_ft=True, **best))
    with pytest.raises(ValueError, match="use one of them"):
        check_clip_args(
            base_args(tmp_path / "d", lp_ft=True, wise_ft_alphas=[0.0, 1.0], val_dataset="fashion_mnist_val")
        )


@pytest.mark.slow
def test_a_saved_probe_refuses_data_with_other_classes(tmp_path):
    out = tmp_path / "probe"
    run_exp(probe_args(out, probe_epochs=5))
    args = probe_args(tmp_path / "e", model_name_or_path=str(out), do_train=False, subsample_classes="base")
    args.pop("finetuning_type")
    with pytest.raises(ValueError, match="scores classes"):  # the first half of the classes: not the head's ten
        run_exp(args)


@pytest.mark.slow
def test_lp_ft_starts_from_the_probe_and_trains_head_and_backbone(tmp_path):
    out = tmp_path / "lpft"
    args = base_args(out, lp_ft=True, num_shots=4, image_size=32, probe_epochs=20, val_dataset="fashion_mnist_val")
    run_exp(args)
    results = read_json(out / "all_results.json")
    assert "probe_val_accuracy" in results and "train_loss" in results
    start = tmp_path / "probe"  # the same probe on the same views (LP-FT on full keeps its crop scale: give it)
    run_exp(probe_args(start, probe_epochs=20, crop_scale=[0.08, 1.0]))
    assert read_json(start / "all_results.json")["probe_val_accuracy"] == results["probe_val_accuracy"]
    fitted, trained = load_file(str(start / HEAD_FILE)), load_file(str(out / HEAD_FILE))
    assert fitted["weight"].shape == trained["weight"].shape
    assert not torch.equal(fitted["weight"], trained["weight"])  # the head trained on from the fitted one
    base = CLIPModel.from_pretrained(args["model_name_or_path"])
    tuned = CLIPModel.from_pretrained(str(out))
    assert not torch.equal(base.visual_projection.weight, tuned.visual_projection.weight)
    saved = saved_run(str(out))
    assert saved["method"] == "lp_ft" and saved["checkpoint"] == str(out)
    again = tmp_path / "again"
    eval_args = base_args(again, model_name_or_path=str(out), do_train=False, image_size=32)
    run_exp(eval_args)
    assert read_json(again / "all_results.json")["eval_accuracy"] == results["eval_accuracy"]


def test_a_cut_or_crafted_head_file_is_refused_naming_it(tmp_path):
    fit = fit_logistic(*blobs(classes=3), 3, 1.0)
    header = {"method": "linear_probe", "checkpoint": "x", "classnames": ["a", "b"], "feature_dim": 8}
    save_head(LinearHead(fit), str(tmp_path), {**header, "probe_type": "logistic"})  # 3 rows, 2 classes named
    with pytest.raises(ValueError, match=r"probe_head.safetensors is damaged or not a linear probe's head .*`weight`"):
        saved_run(str(tmp_path))
    path = tmp_path / HEAD_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="probe_head.safetensors is damaged"):
        saved_run(str(tmp_path))
