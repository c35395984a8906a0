"""`treerl export`: a run's checkpoint as a Hugging Face model folder that from_pretrained loads in
a Python without treerl, with a model card holding the run's config, data and held-out table."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from treerl.cli import main
from treerl.config import config_yaml, load_config
from treerl.models import load_policy
from treerl.rundir import RunDir

LOAD = """import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = AutoTokenizer.from_pretrained(sys.argv[1])(sys.argv[3])["input_ids"]
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor([ids])).logits, sys.argv[2])
"""


def logits(model, tokenizer, text="7+5-8\n"):
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits


@pytest.mark.slow
def test_export_writes_a_model_folder_that_transformers_loads_alone(trained_run, tmp_path):
    """Issue 31 item 9: the newest checkpoint, loaded by plain transformers in a fresh Python (no
    treerl, no Hub), computes what the checkpoint does; the card holds the config, the data and
    the held-out table of step 0 and the exported step."""
    out = tmp_path / "model"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    subprocess.run(
        [sys.executable, "-c", LOAD, str(out), str(tmp_path / "logits.pt"), "7+5-8\n"],
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
        check=True,
        timeout=300,
    )
    checkpoint = RunDir(trained_run).latest_checkpoint()
    expected = logits(*load_policy(str(checkpoint)))
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5)
    card = (out / "README.md").read_text()
    config = yaml.safe_load(card[card.index("```yaml") + 7 : card.rindex("```")])
    assert config == yaml.safe_load((trained_run / "config.yaml").read_text())
    evals = RunDir(trained_run).evals()
    hard = evals["4"]["hard"]
    row = f"| hard | {hard['problems']} | {100 * evals['0']['hard']['accuracy']:.1f} | "
    assert "| level | problems | step 0 | step 4 |" in card and row in card
    assert "## Data" in card and "- task: `arithmetic`" in card
    assert not (out / "trainer_state.pt").exists() and not (out / "manifest.json").exists()


def lora_run(path, adapters):
    """A run directory whose checkpoint step_1 holds LoRA adapters of the embedded model."""
    cfg = load_config(None, ["model.lora.r=4", "model.lora.alpha=8", "train.steps=1"])
    checkpoint = path / "checkpoints" / "step_1"
    checkpoint.mkdir(parents=True)
    for file in adapters.iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    (checkpoint / "trainer_state.pt").write_bytes(b"")  # a checkpoint from before manifests
    (path / "config.yaml").write_text(config_yaml(cfg))
    (path / "eval.json").write_text(json.dumps({"0": {}, "1": {}}))
    return path


def test_a_lora_run_exports_its_adapters_merged(tiny_adapters, tmp_path):
    adapters, adapted = tiny_adapters
    run = lora_run(tmp_path / "run", adapters)
    out = tmp_path / "model"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists()
    assert "sdpa_fp32_on_cpu" not in (out / "config.json").read_text()
    tokenizer = load_policy("tiny")[1]
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(logits(merged, tokenizer), logits(adapted, tokenizer), atol=1e-5)
    assert "LoRA adapters merged" in (out / "README.md").read_text()


def test_export_refuses_in_one_line_and_writes_nothing(tiny_adapters, tmp_path, capsys):
    run = lora_run(tmp_path / "run", tiny_adapters[0])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    assert main(["export", str(run), "--out", str(taken)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "new"), "--step", "7"]) == 2
    assert "has no step_7 to export (checkpoints: step_1)" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "new")]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    manifest = {"adapter_model.safetensors": {"bytes": 1, "sha256": "0"}}
    (run / "checkpoints" / "step_1" / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", str(run), "--out", str(tmp_path / "new")]) == 2
    assert "step_1 is damaged (adapter_model.safetensors has " in capsys.readouterr().err
    assert (run / "checkpoints" / "step_1").is_dir()  # the run is left as it is
    assert not (tmp_path / "new").exists() and [p.name for p in taken.iterdir()] == ["mine.txt"]
