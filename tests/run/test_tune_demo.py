"""`ptuning tune` end to end on the synthetic demo task (offline, CPU): a 2×2 grid for each of three rows, three seeds.

The choice is made on validation data only: the same tune with the test split's labels flipped chooses the same
point of every grid, from the same validation accuracies, while its test figures turn upside down. The tables give
the chosen point, the 95% intervals and the Holm-adjusted comparison with tuned full fine-tuning.

A few minutes on two cores: marked `slow` (outside `make test`; `make test-slow` and CI run it).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.report import stats
from ptuning.run import tune as tune_mod
from ptuning.testing import demo as demo_mod
from ptuning.testing.synthetic import build, one_thread
from tests.conftest import JOBS

pytestmark = pytest.mark.slow

ROWS = {
    "full_ft": "title: Full fine-tuning\nrow: 1\nmethod: {name: full, implementation: hand}\nlr: 1.0e-4\n"
               "sweep: {lr: [1.0e-6, 1.0e-4], weight_decay: [0.0, 0.01]}\n",
    "adapter_8": "title: Adapter, hand-written\nrow: 5\nmethod: {name: adapter, implementation: hand, bottleneck: 8}\n"
                 "lr: 1.0e-3\nsweep: {lr: [1.0e-5, 1.0e-3], bottleneck: [1, 8]}\n",
    "lora_8": "title: LoRA, hand-written\nrow: 8\nmethod: {name: lora, implementation: hand, rank: 8, alpha: 4}\nlr: 1.0e-3\n"
              "sweep: {lr: [1.0e-5, 1.0e-3], rank: [1, 8]}\n",
}
#: the quick demo's settings, with a held-out validation split carved from its 800 training reviews
SETTINGS = {**demo_mod.COMMON, **demo_mod.PROFILES["quick"].settings, "heldout_size": 200}


@pytest.fixture(scope="module")
def task(tmp_path_factory, cache_dir):
    """(jobs folder, the task's data folder, the same with the test labels flipped)."""
    root = tmp_path_factory.mktemp("tune-demo")
    assets = build(demo_mod.PROFILES["quick"].recipe, root / "backbone", echo=lambda line: None)
    poisoned = root / "poisoned"
    shutil.copytree(assets.data_dir, poisoned)
    lines = (poisoned / "test.jsonl").read_text().splitlines()
    flipped = [json.dumps({**json.loads(line), "label": 1 - json.loads(line)["label"]}) for line in lines]
    (poisoned / "test.jsonl").write_text("\n".join(flipped) + "\n")
    jobs = root / "jobs"
    jobs.mkdir()
    defaults = {**SETTINGS, "model": str(assets.model_dir), "dataset": str(assets.data_dir)}
    text = (JOBS / "_defaults.yaml").read_text()
    lines = []
    for line in text.splitlines():
        key = line.split(":", 1)[0]
        lines.append(f"{key}: {json.dumps(defaults[key])}" if key in defaults and not line.startswith((" ", "#")) else line)
    (jobs / "_defaults.yaml").write_text("\n".join(lines) + "\n")
    for name, body in ROWS.items():
        (jobs / f"{name}.yaml").write_text(body)
    return jobs, assets.data_dir, poisoned


def tune(jobs, out, *extra):
    with one_thread():
        return CliRunner().invoke(main, ["--jobs-dir", str(jobs), "tune", *ROWS, "--seeds", "0,1,2", "--budget-epochs", "1",
                                         "--device", "cpu", "--output-dir", str(out), *extra],
                                  env={"HF_HUB_OFFLINE": "1", "COLUMNS": "200"}, catch_exceptions=False)


def test_tune_chooses_on_validation_only_and_reports_intervals_and_holm(task, tmp_path):
    jobs, data, poisoned = task
    clean = tune(jobs, tmp_path / "clean")
    assert clean.exit_code == 0, clean.output + clean.stderr
    flipped = tune(jobs, tmp_path / "flipped", "--dataset", str(poisoned))
    assert flipped.exit_code == 0, flipped.output + flipped.stderr

    summaries = [json.loads((tmp_path / name / tune_mod.TUNE_FILE).read_text())["jobs"] for name in ("clean", "flipped")]
    for name in ROWS:
        a, b = summaries[0][name], summaries[1][name]
        assert len(a["grid"]) == 4 and a["search_seeds"] == [0] and a["seeds"] == [0, 1, 2]
        assert a["grid"] == b["grid"]  # the search never read the test split: the same validation accuracies, exactly
        assert a["chosen"] == b["chosen"] == tune_mod.choose({p: v["validation_accuracy"] for p, v in a["grid"].items()})
    # the learning rates too small to learn anything in 100 steps lose on validation
    assert all("lr=1e-5" not in summaries[0][name]["chosen"] for name in ("adapter_8", "lora_8"))
    assert "lr=1e-6" not in summaries[0]["full_ft"]["chosen"]

    # ... while the test split really was read for the figures: the flipped labels turn them upside down
    for name in ROWS:
        chosen = summaries[0][name]["chosen"]
        for seed in (0, 1, 2):
            runs = [json.loads((tmp_path / folder / name / chosen / f"heldout-seed{seed}" / "result.json").read_text())
                    for folder in ("clean", "flipped")]
            assert runs[0]["selected_epoch"] == runs[1]["selected_epoch"]  # chosen on validation: the same epoch
            assert runs[0]["reported_accuracy"] >= 80 and runs[1]["reported_accuracy"] <= 20, (name, seed)

    # the tables: the chosen point, the intervals, the Holm-adjusted comparison with tuned full fine-tuning
    text = (tmp_path / "clean" / "TUNE.md").read_text()
    assert text in clean.output
    table = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                                           if re.match(r"^\| \d+ ", line))}
    assert set(table) == set(ROWS)
    for name, cells in table.items():
        assert cells[2] == f"{summaries[0][name]['chosen']} (of 4)"
        assert re.fullmatch(r"\d+\.\d ± \d+\.\d \(n=3\)", cells[4]) and re.fullmatch(r"\[\d+\.\d, \d+\.\d\]", cells[5])
    for name in ("adapter_8", "lora_8"):
        assert re.fullmatch(r"[+-]?\d+\.\d, p(=\d\.\d{3}|<0\.001) \(Holm (\d\.\d{3}|<0\.001), paired\): (differs|within noise)",
                            table[name][9]), table[name][9]
    assert table["full_ft"][9] == "–"
    # the adjusted p-values are Holm's over the two rows compared, from the runs' own figures
    results = {name: [json.loads((tmp_path / "clean" / name / summaries[0][name]["chosen"] / f"heldout-seed{s}" / "result.json")
                                 .read_text()) for s in (0, 1, 2)] for name in ROWS}
    expected = stats.compare_runs({n: r for n, r in results.items()}, results["full_ft"])
    for name in ("adapter_8", "lora_8"):
        assert table[name][9] == expected[name].text()
