"""``torch_compile: true`` for every kind of method (full, PEFT LoRA, VPT deep prompts, CLIP-Adapter, CoOp's
context slots): the compiled run trains and evaluates as the eager one does, on CPU through inductor."""

import shutil

import pytest
import torch
from conftest import base_args, read_json
from llamafactory.train.tuner import run_exp


METHODS = {
    "full": {},
    "lora": {"finetuning_type": "lora"},
    "vpt_deep": {"finetuning_type": "prompt", "prompt_deep": True},
    "adapter": {"finetuning_type": "adapter"},
    "coop": {"finetuning_type": "coop"},
}


def losses(folder):
    return [row["loss"] for row in read_json(folder / "trainer_state.json")["log_history"] if "loss" in row]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="inductor needs a C++ compiler")
@pytest.mark.parametrize("method", list(METHODS))
def test_a_compiled_run_trains_as_the_eager_run(tmp_path, method, capfd):
    keys = dict(image_size=32, max_steps=3, dataloader_num_workers=0, **METHODS[method])
    run_exp(base_args(tmp_path / "eager", **keys))
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    run_exp(base_args(tmp_path / "compiled", **keys, torch_compile=True))
    assert counters["stats"]["unique_graphs"] > 0  # it did compile
    assert not counters["graph_break"], dict(counters["graph_break"])  # and traced the model without breaks
    assert torch.allclose(
        torch.tensor(losses(tmp_path / "compiled")), torch.tensor(losses(tmp_path / "eager")), rtol=1e-3
    )
    eager, compiled = (read_json(tmp_path / name / "all_results.json") for name in ("eager", "compiled"))
    assert compiled["eval_accuracy"] == pytest.approx(eager["eval_accuracy"], abs=0.011)  # at most two test images
    assert "Backend compiler exception" not in capfd.readouterr().err  # traced whole, no fallback to eager pieces
