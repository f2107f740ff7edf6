"""Methods that choose which existing weights train: ABS (angle-based selection) and bias-only (BitFit).

Each test compares the saved model to the starting weights: exactly the intended parameters changed.
"""

import math

import torch
from conftest import TINY_CLIP, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from transformers import TrainerCallback


START = {k: v.float() for k, v in load_file(TINY_CLIP / "model.safetensors").items()}


def changed_keys(output_dir):
    saved = load_file(output_dir / "model.safetensors")
    return {k for k, v in saved.items() if not torch.equal(v.float(), START[k])}


def test_bias_default_trains_every_bias_of_the_image_tower(tmp_path):
    run_exp(base_args(tmp_path, finetuning_type="bias", learning_rate=1e-2))
    expected = {k for k in START if k.endswith(".bias") and k.startswith(("vision_model.", "visual_projection."))}
    assert changed_keys(tmp_path) == expected


def test_bias_terms_include_then_exclude_on_both_towers(tmp_path):
    """The example of the config issue: layer-norm biases, but not the pre/post layer norms."""
    args = i2t_args(
        tmp_path,
        finetuning_type="bias",
        learning_rate=1e-2,
        bias_terms=["layer_norm", "layernorm"],
        bias_terms_exclude=["layernorm"],
    )
    run_exp(args)
    expected = {k for k in START if k.endswith((".layer_norm1.bias", ".layer_norm2.bias"))}
    expected.add("text_model.final_layer_norm.bias")
    assert changed_keys(tmp_path) == expected


def independent_angles(before, after):
    """Angle per module (weight + bias) from two state dicts, written apart from the implementation."""
    modules = sorted({k.rpartition(".")[0] for k in after if k.startswith(("vision_model.", "visual_projection"))})
    angles = {}
    for module in modules:
        keys = [k for k in after if k.rpartition(".")[0] == module]
        a = torch.cat([before[k].double().flatten() for k in keys])
        b = torch.cat([after[k].double().flatten() for k in keys])
        cos = torch.dot(a, b) / (a.norm() * b.norm())
        angles[module] = math.acos(float(cos.clamp(-1, 1)))
    return angles


def test_abs_keeps_top_units_per_group_and_resets_the_rest(tmp_path):
    common = dict(lr_scheduler_type="constant", learning_rate=5e-3, num_shots=2, per_device_train_batch_size=8)
    # 20 images / 8 per step = 3 steps per epoch: the selection comes after step 3.
    warm = tmp_path / "warm"
    run_exp(base_args(warm, num_train_epochs=1, do_eval=False, **common))
    selected = tmp_path / "abs"
    run_exp(base_args(selected, num_train_epochs=2, abs=True, abs_keep=2, abs_warmup_epochs=1, **common))

    at_selection = {k: v.float() for k, v in load_file(warm / "model.safetensors").items()}
    angles = independent_angles(START, at_selection)
    record = read_json(selected / "abs_selection.json")
    assert record["step"] == 3
    recorded = {u["unit"]: u for u in record["units"]}
    assert set(recorded) == set(angles)
    for unit, angle in angles.items():
        assert abs(recorded[unit]["angle"] - angle) < 1e-9
    groups = {"k_proj": [], "v_proj": [], "q_proj": [], "others": []}
    for unit in angles:
        groups[next((g for g in ("k_proj", "v_proj", "q_proj") if g in unit), "others")].append(unit)
    expected_kept = set()
    for members in groups.values():
        expected_kept.update(sorted(members, key=lambda u: -angles[u])[:2])
    assert {u for u, r in recorded.items() if r["kept"]} == expected_kept

    final = load_file(selected / "model.safetensors")
    for key in START:
        unit = key.rpartition(".")[0]
        if unit in expected_kept:
            assert not torch.equal(final[key].float(), at_selection[key]), key  # went on training
        else:
            assert torch.equal(final[key].float(), START[key]), key  # reset to pretrained (or never trained)


class FrozenStateProbe(TrainerCallback):
    """After the selection, frozen parameters must hold no gradient and no optimizer state."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        frozen = [p for n, p in model.named_parameters() if n.startswith("clip.vision_model") and not p.requires_grad]
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.seen.append(
            (
                state.global_step,
                len(frozen),
                all(p.grad is None for p in frozen),
                not any(id(p) in in_optimizer or p in optimizer.state for p in frozen),
            )
        )


def test_abs_with_bias_selects_among_biases_and_frees_frozen_state(tmp_path):
    probe = FrozenStateProbe()
    args = base_args(
        tmp_path,
        finetuning_type="bias",
        abs=True,
        abs_group=False,
        abs_keep=1,
        abs_warmup_epochs=1,
        num_train_epochs=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
    )
    run_exp(args, callbacks=[probe])
    record = read_json(tmp_path / "abs_selection.json")
    assert all(unit["parameters"][0].endswith(".bias") and len(unit["parameters"]) == 1 for unit in record["units"])
    kept = [u for u in record["units"] if u["kept"]]
    assert len(kept) == 1 and kept[0]["angle"] == max(u["angle"] for u in record["units"])
    assert changed_keys(tmp_path) == {kept[0]["parameters"][0]}
    after = [s for s in probe.seen if s[0] > record["step"]]
    assert after and all(n > 0 and no_grad and no_state for _, n, no_grad, no_state in after)


def test_abs_resumed_after_the_selection_keeps_the_same_units_frozen(tmp_path):
    common = dict(
        abs=True,
        abs_keep=1,
        abs_warmup_epochs=1,
        lr_scheduler_type="constant",
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=4,
        do_eval=False,
    )
    run_exp(base_args(tmp_path, max_steps=4, **common))  # selection at step 3, checkpoint at step 4
    assert (tmp_path / "checkpoint-4" / "abs_selection.json").is_file()
    kept = {u["unit"] for u in read_json(tmp_path / "abs_selection.json")["units"] if u["kept"]}
    run_exp(base_args(tmp_path, max_steps=6, **common))  # resumes from checkpoint-4
    final = load_file(tmp_path / "model.safetensors")
    for key in START:
        if key.rpartition(".")[0] not in kept:
            assert torch.equal(final[key].float(), START[key]), key
    assert read_json(tmp_path / "trainer_state.json")["global_step"] == 6
