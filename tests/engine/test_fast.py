"""The fast path: greedy decoding identical to generate for every job's method, length buckets that change
only padding, fast training within bf16 tolerance of the faithful loop, the plan, `run --speed fast`,
`run-all --concurrency 2` and `ptuning bench`. CPU only, tiny models, no timing assertions."""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile

import pytest
import torch
from click.testing import CliRunner
from transformers import T5ForConditionalGeneration

from ptuning import data
from ptuning.cli import main
from ptuning.engine import fast
from ptuning.engine.base import Plan, make_plan
from ptuning.engine.faithful import predict
from ptuning.engine.faithful import make_optimizer, train_epoch
from ptuning.methods import build_method
from ptuning.settings import load_all_jobs, load_job
from ptuning.testing.tiny import tiny_t5_config
from tests.conftest import JOBS

VOCAB = 128
CPU = torch.device("cpu")
JOB_LIST = load_all_jobs(JOBS)


def _model(job, seed=0, scale=1.0):
    """A tiny T5 with the job's method applied and ALL weights randomised (so outputs vary and end at </s>)."""
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(tiny_t5_config(VOCAB))
    method = build_method(job.method, job.implementation, job.knobs)
    model = method.apply(model)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval(), method


def _batch(n_placeholders, batch=16, length=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        real = int(torch.randint(2, length + 1, (1,), generator=g))
        ids[i, real - 1] = 1
        ids[i, real:] = 0
        mask[i, real:] = 0
    zeros = torch.zeros(batch, n_placeholders, dtype=torch.long)
    return torch.cat([zeros, ids], 1), torch.cat([torch.ones_like(zeros), mask], 1)


@pytest.mark.parametrize("job", JOB_LIST, ids=lambda j: j.name)
def test_greedy_decode_token_ids_equal_generate_for_every_job(job):
    model, method = _model(job)
    for seed in range(2):
        ids, mask = _batch(method.placeholder_tokens(), seed=seed)
        mask_before = mask.clone()
        expected = model.generate(input_ids=ids, attention_mask=mask.clone(), max_length=5, do_sample=False, num_beams=1)
        got = fast.greedy_decode(model, ids, mask, max_length=5)
        assert torch.equal(got, expected), (job.name, seed)
        assert torch.equal(mask, mask_before)  # the caller's mask is left alone (OpenDelta grows a clone)
    assert fast.fallback_reason(model) is None


def test_greedy_decode_under_bf16_autocast_equals_generate():
    model, method = _model(load_job("full_ft", JOBS))
    ids, mask = _batch(0, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model.generate(input_ids=ids, attention_mask=mask.clone(), max_length=5, do_sample=False, num_beams=1)
        got = fast.greedy_decode(model, ids, mask, max_length=5)
    assert torch.equal(got, expected)


def test_early_stop_when_every_sequence_ended():
    model, _ = _model(load_job("full_ft", JOBS))
    ids, mask = _batch(0, seed=1)
    boost = torch.zeros(VOCAB)
    boost[1] = 1e4  # </s> (id 1) wins every argmax: generate stops after one token, and so must the greedy loop
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    try:
        expected = model.generate(input_ids=ids, attention_mask=mask.clone(), max_length=5, do_sample=False, num_beams=1)
        got = fast.greedy_decode(model, ids, mask, max_length=5)
    finally:
        handle.remove()
    assert expected.tolist() == [[0, 1]] * ids.shape[0]  # start token, </s>: every sequence ended at the first step
    assert torch.equal(got, expected)


def _dataset(tok, data_dir, placeholders=0, n=24):
    splits = data.load_splits(str(data_dir))
    targets = data.label_token_ids(tok, ["negative", "positive"])
    enc = data.encode_split(splits["test"], tok, 48, n)
    return data.ExamplesDataset(enc, targets, placeholders, 48, tok.pad_token_id, tok.eos_token_id)


@pytest.mark.parametrize("name", ["full_ft", "soft_prompt_10_opendelta", "adapter_8_adapterhub", "lora_8_peft"])
def test_fast_predict_sorted_batches_equal_predict_in_dataset_order(tiny_model, tiny_data_dir, name):
    model, tok = tiny_model
    job = load_job(name, JOBS)
    method = build_method(job.method, job.implementation, job.knobs)
    model = method.apply(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    ds = _dataset(tok, tiny_data_dir, method.placeholder_tokens())
    assert len({len(x) for x in ds.inputs}) > 3  # lengths differ, so sorting reorders
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=data.Collator(tok.pad_token_id))
    model.train()
    expected, golds = predict(model, loader, tok, CPU, max_length=5)
    for batch_size, background in ((5, None), (64, None), (5, True)):  # True: batches made in a thread, as on CUDA
        got, got_golds = fast.fast_predict(model, ds, tok, CPU, batch_size=batch_size, max_length=5, background=background)
        assert got == expected and got_golds == golds
    assert model.training  # mode restored


def test_generation_config_that_is_not_plain_greedy_falls_back_to_generate(tiny_model, tiny_data_dir):
    model, tok = tiny_model
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in fast.fallback_reason(model)
    ds = _dataset(tok, tiny_data_dir, n=12)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=data.Collator(tok.pad_token_id))
    assert fast.fast_predict(model, ds, tok, CPU, batch_size=5)[0] == predict(model, loader, tok, CPU)[0]


class _OverwrittenOutputs:
    """A stand-in for torch.compile(mode="reduce-overhead"): its CUDA graphs' outputs live in memory that the next
    replay overwrites (on a GPU, reading an overwritten output raises; here it reads NaN)."""

    def __init__(self, model):
        self.model, self.last = model, None

    def __call__(self, batch):
        if self.last is not None:
            with torch.no_grad():
                self.last.detach().fill_(float("nan"))
        self.last = self.model(**batch).loss
        return self.last


def test_compiled_losses_are_copied_before_the_next_step_overwrites_them():
    """The fast loop reads its losses back every `sync_every` steps, after later steps ran: a compiled loss must
    be copied out of the graph's output memory first."""
    assert _losses("fp32", True, _OverwrittenOutputs) == _losses("fp32", False)


def test_eval_batches_are_the_sorted_batches_in_order_made_ahead_and_pinned_on_cuda(monkeypatch):
    import threading

    inputs = [[3] * n + [1] for n in (5, 1, 9, 3, 7, 2)]
    chunks = fast.length_sorted_batches([len(x) for x in inputs], 2)
    assert chunks == [[2, 4], [0, 3], [5, 1]]
    expected = [data.Collator(0)([(inputs[i], [1]) for i in c])["input_ids"].tolist() for c in chunks]
    for background in (False, True):
        batches = list(fast.eval_batches(inputs, chunks, 0, CPU, background))
        assert [b["input_ids"].tolist() for b in batches] == expected
    # in the background: made in another thread, each once
    made: list[tuple[int, str]] = []
    collate = data.Collator.__call__
    monkeypatch.setattr(data.Collator, "__call__", lambda self, b: made.append((len(b), threading.current_thread().name)) or collate(self, b))
    batches = fast.eval_batches(inputs, chunks, 0, CPU, True)
    first = next(batches)
    assert first["input_ids"].tolist() == expected[0]
    assert all(name.startswith("ptuning-eval-batches") for _, name in made)
    assert [b["input_ids"].tolist() for b in batches] == expected[1:] and len(made) == 3
    # on CUDA (planned here with pin_memory faked: nothing touches a GPU) every tensor is pinned, in the background
    pinned: list[str] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(threading.current_thread().name) or self)
    made.clear()
    assert [b["input_ids"].tolist() for b in fast.eval_batches(inputs, chunks, 0, torch.device("cuda"))] == expected
    assert len(pinned) == 3 * 3 and all(name.startswith("ptuning-eval-batches") for name in pinned + [n for _, n in made])
    list(fast.eval_batches(inputs, chunks, 0, CPU))  # elsewhere, by default: in this thread, not pinned
    assert len(pinned) == 9 and made[-1][1] == threading.current_thread().name


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 9, 2, 9, 7, 1, 3]
    batches = fast.length_sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)


# -- length buckets ------------------------------------------------------------------------------


def test_bucket_collator_changes_only_padding_and_not_the_loss():
    rng = random.Random(0)
    batch = [([rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 70))] + [1], [5 + i % 2, 1]) for i in range(6)]
    dynamic = data.Collator(0)(batch)
    bucketed = fast.BucketCollator(0, fast.default_buckets(256), label_length=4)(batch)
    assert fast.default_buckets(256) == (64, 128, 192, 256)
    width = dynamic["input_ids"].shape[1]
    assert bucketed["input_ids"].shape[1] == next(b for b in (64, 128, 192, 256) if b >= width)
    assert torch.equal(bucketed["input_ids"][:, :width], dynamic["input_ids"])
    assert torch.equal(bucketed["attention_mask"][:, :width], dynamic["attention_mask"])
    assert (bucketed["input_ids"][:, width:] == 0).all() and (bucketed["attention_mask"][:, width:] == 0).all()
    assert torch.equal(bucketed["labels"][:, :2], dynamic["labels"]) and (bucketed["labels"][:, 2:] == -100).all()
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config(VOCAB)).eval()  # eval: dropout would draw per padded shape
    with torch.no_grad():
        a, b = model(**dynamic).loss, model(**bucketed).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    longer = [([3] * 300, [5, 1])]  # longer than every bucket: padded to its own length
    assert fast.BucketCollator(0, (64,))(longer)["input_ids"].shape[1] == 300


# -- training --------------------------------------------------------------------------------------


def _losses(precision: str, fast_path: bool, compiled=None):
    rng = random.Random(0)
    pairs = [([rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 30))] + [1], [5, 1]) for _ in range(24)]
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config(VOCAB))
    optimizer = make_optimizer(model.parameters(), 1e-3, 0.01)
    loader = torch.utils.data.DataLoader(pairs, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0),
                                         collate_fn=data.Collator(0))
    losses: list[float] = []
    if fast_path:
        plan = Plan(fast=True, precision=precision, compile=False, graphs=False, eval_batch_size=512, pin_memory=False,
                         fused_adamw=False, sync_every=2)
        loss_fn = fast.LossFn(model)
        if compiled is not None:
            loss_fn.compiled = compiled(model)
        mean = fast.train_epoch(model, loader, optimizer, CPU, plan, on_step=lambda s, v: losses.append(v), loss_fn=loss_fn)
    else:
        mean = train_epoch(model, loader, optimizer, CPU, precision, on_step=lambda s, v: losses.append(v))
    assert mean == pytest.approx(sum(losses) / len(losses))
    return losses


def test_fast_training_matches_the_faithful_loop():
    faithful = _losses("fp32", False)
    assert _losses("fp32", True) == faithful  # same math, same dropout draws: identical
    bf16 = _losses("bf16", True)
    assert len(bf16) == 3
    assert bf16 == pytest.approx(faithful, rel=2e-2)


def test_plan_resolves_auto_per_device():
    job = load_job("full_ft", JOBS)
    cpu = make_plan(job.settings, CPU)
    assert (cpu.fast, cpu.precision, cpu.compile, cpu.eval_batch_size) == (False, "fp32", False, job.settings.eval_batch_size)
    messages = []
    forced = make_plan(job.override(speed="fast", compile=True).settings, CPU, messages.append)
    assert forced.fast and forced.precision == "fp32" and not forced.compile and "CUDA only" in messages[0]
    assert make_plan(job.override(speed="fast", precision="bf16").settings, CPU).precision == "bf16"
    cuda = make_plan(job.settings, torch.device("cuda"))  # planning only: nothing touches a GPU
    assert (cuda.fast, cuda.precision, cuda.eval_batch_size, cuda.fused_adamw, cuda.pin_memory) == (True, "bf16", 256, True, True)
    assert cuda.graphs and not cpu.graphs and not forced.graphs  # CUDA graphs: the fast path's default, on CUDA only
    assert not make_plan(job.override(cuda_graphs=False).settings, torch.device("cuda")).graphs
    assert not make_plan(job.override(compile=True).settings, torch.device("cuda")).graphs  # compile is used instead
    faithful = make_plan(job.override(speed="faithful").settings, torch.device("cuda"))
    assert (faithful.fast, faithful.precision) == (False, "fp32")


# -- command line ------------------------------------------------------------------------------------


def _invoke(*args, jobs=JOBS):
    return CliRunner().invoke(main, ["--jobs-dir", str(jobs), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


def test_run_with_speed_fast_on_cpu(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "r"
    result = _invoke("run", "lora_8", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir), "--epochs", "1",
                     "--train-limit", "16", "--eval-limit", "12", "--device", "cpu", "--speed", "fast", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "lora_8" / "seed0" / "result.json").read_text())
    assert record["speed"]["path"] == "fast" and record["speed"]["precision"] == "fp32"
    assert "fast path" in result.output


def test_run_all_with_concurrency_two(tmp_path, tiny_model_dir, tiny_data_dir):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for name in ("_defaults", "full_ft", "lora_8"):
        shutil.copy(JOBS / f"{name}.yaml", jobs / f"{name}.yaml")
    out = tmp_path / "results"
    result = _invoke("run-all", "--concurrency", "2", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir),
                     "--epochs", "1", "--train-limit", "8", "--eval-limit", "4", "--device", "cpu", "--output-dir", str(out), jobs=jobs)
    assert result.exit_code == 0, result.output
    for name in ("full_ft", "lora_8"):
        assert json.loads((out / name / "seed0" / "result.json").read_text())["status"] == "completed"
        assert "reported test accuracy" in (out / "logs" / f"{name}.log").read_text()
        assert f"[{name}] reported test accuracy" in result.output
    assert re.search(r"^ +1  Full fine-tuning ", result.output, re.M)  # the table follows
    assert "| full_ft" in (out / "TABLES.md").read_text()  # and the full tables beside the results
    assert "ptuning: 2 runs completed, 0 skipped (already completed), 0 failed;" in result.output  # then the summary


def test_bench_prints_both_paths(tmp_path, monkeypatch):
    out, data = tmp_path / "BENCH.md", tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the bench writes its checkpoint and parameters
    # full_ft first: its trained parameters (a "model" directory) are written beside the saved model the next row loads
    result = _invoke("bench", "--device", "cpu", "--size", "small", "--steps", "2", "--max-length", "32", "--rows", "full_ft,lora_8",
                     "--batch-size", "4", "--eval-reviews", "8", "--output", str(out), "--json", str(data))
    assert result.exit_code == 0, result.output
    text = result.stdout
    for needle in ("| metric | faithful | fast |", "train step", "tokens/s", "TFLOP/s", "6 × parameters", "peak memory",
                   "eval epoch (25k reviews, projected for this CPU and the small model)", "whole table", "CPU measurement",
                   "torch ", "transformers "):
        assert needle in text, needle
    # on a CPU, said first and plainly: these figures are about this CPU and a small model, not a GPU
    assert text.splitlines()[2].startswith("> **A CPU measurement of the `small` model (")
    assert "do not carry over to a GPU" in text and "whole table (10 rows × 10 epochs, projected for this CPU and the small model)" in text
    assert "identical predictions: yes" in text
    assert out.read_text().strip() == text.strip()
    measured = json.loads(data.read_text())
    assert (measured["device"], measured["size"], measured["steps"], measured["eval_reviews"]) == ("cpu", "small", 2, 8)
    assert list(measured["rows"]) == ["full_ft", "lora_8"]
    fast = measured["rows"]["full_ft"]["fast"]
    assert fast["step_seconds"] > 0 and fast["eval_seconds_per_review"] == pytest.approx(fast["eval_seconds"] / 8)
    assert fast["fast_decode_matches_generate"] is True and measured["rows"]["full_ft"]["faithful"]["peak_memory_bytes"] is None
    # a job's time besides train and eval is timed too, and the whole table is made of exactly these parts
    for needle in ("training batch made on the CPU (while the step before runs)", "process start", "saved model loaded, method applied, on the device (once per job)",
                   "checkpoint written (once per epoch)", "trained parameters written (once per job)"):
        assert needle in text, needle
    assert measured["startup_seconds"] > 0
    for path in measured["rows"]["full_ft"].values():
        assert path["load_seconds"] > 0 and path["checkpoint_seconds"] > 0 and path["artifact_seconds"] > 0
        assert 0 < path["collate_seconds"] < path["step_seconds"]
        job = path["load_seconds"] + path["setup_seconds"] + 10 * path["checkpoint_seconds"] + path["artifact_seconds"]
        epoch = 782 * path["step_seconds"] + 25_000 * path["eval_seconds_per_review"]
        assert path["table_seconds"] == pytest.approx(measured["startup_seconds"] + 10 * (10 * epoch + job))
    assert list(scratch.iterdir()) == []  # the bench's own files are gone


def test_bench_concurrency_runs_k_processes_together(tmp_path):
    data = tmp_path / "bench.json"
    result = _invoke("bench", "--device", "cpu", "--size", "small", "--steps", "2", "--max-length", "32", "--rows", "lora_8",
                     "--batch-size", "4", "--eval-reviews", "8", "--concurrency", "2", "--json", str(data))
    assert result.exit_code == 0, result.output
    assert "## lora_8: 2 processes at once (`run-all --concurrency 2`), fast path" in result.stdout
    assert "| training steps/s (all processes) |" in result.stdout and "whole table at --concurrency 2" in result.stdout
    together = json.loads(data.read_text())["concurrent"]
    assert together["concurrency"] == 2 and together["row"] == "lora_8" and "error" not in together
    # all processes' work over the shared wall time: 2 x 2 steps, 2 x 8 reviews
    assert together["aggregate_steps_per_second"] == pytest.approx(4 / together["train_wall_seconds"])
    assert together["aggregate_reviews_per_second"] == pytest.approx(16 / together["eval_wall_seconds"])
    assert len(together["peak_memory_bytes"]) == 2
    single = json.loads(data.read_text())["rows"]["lora_8"]["fast"]
    assert together["fixed_per_row_seconds"] == pytest.approx(single["load_seconds"] + 10 * single["checkpoint_seconds"]
                                                              + single["artifact_seconds"])
    work = 782 / together["aggregate_steps_per_second"] + 25_000 / together["aggregate_reviews_per_second"]
    assert together["table_seconds"] == pytest.approx(together["startup_seconds"] + 100 * work
                                                      + 10 * (together["startup_seconds"] + together["setup_seconds"]
                                                              + together["fixed_per_row_seconds"]) / 2)


def test_file_barrier_waits_for_every_process(tmp_path):
    from ptuning.speed.bench import file_barrier

    first = file_barrier(tmp_path, 0, 2, timeout=0.2)
    with pytest.raises(TimeoutError, match="never reached 'train'"):
        first("train")  # the other process never came
    (tmp_path / "eval.1").touch()
    first("eval")  # it is there: no wait


def test_bench_says_in_one_line_when_a_fresh_process_cannot_start(monkeypatch):
    import subprocess

    from ptuning.errors import PtuningError
    from ptuning.speed.bench import time_startup

    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: real([cmd[0], "-c", "raise SystemExit('no torch here')"], **kw))
    with pytest.raises(PtuningError, match=r"^bench: a fresh Python process could not import ptuning and use cpu \(no torch here\)$"):
        time_startup(torch.device("cpu"))
    monkeypatch.undo()
    assert time_startup(torch.device("cpu")) > 0


def test_bench_with_an_unknown_row_is_one_line_before_anything_is_timed():
    result = _invoke("bench", "--device", "cpu", "--rows", "full_ft,no_such_row", "--steps", "1", "--eval-reviews", "4")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"ptuning: error: no job named 'no_such_row' in {JOBS}; nearest: zero_shot (see `ptuning list`)"


@pytest.mark.parametrize("rows", ["", ",", " , "])
def test_bench_without_rows_is_a_usage_error_before_anything_is_timed(rows):
    result = _invoke("bench", "--device", "cpu", "--rows", rows, "--concurrency", "2", "--steps", "1", "--eval-reviews", "4")
    assert result.exit_code == 2
    assert "Invalid value for '--rows': expected at least one job name such as full_ft,lora_8" in result.stderr
    assert "bench:" not in result.stderr  # nothing was timed


def test_bench_with_a_row_named_twice_is_a_usage_error():
    result = _invoke("bench", "--device", "cpu", "--rows", "full_ft,lora_8,full_ft", "--steps", "1", "--eval-reviews", "4")
    assert result.exit_code == 2
    assert "Invalid value for '--rows': full_ft named more than once in 'full_ft,lora_8,full_ft'" in result.stderr
    assert "bench:" not in result.stderr


@pytest.mark.parametrize("option", ["--output", "--json"])
def test_bench_output_that_cannot_be_written_is_one_line_before_anything_is_timed(tmp_path, option):
    (tmp_path / "a-file").write_text("kept")
    target = tmp_path / "a-file" / "bench.out"
    result = _invoke("bench", "--device", "cpu", "--steps", "1", "--eval-reviews", "4", option, str(target))
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"ptuning: error: {option} {target}: cannot write there ({tmp_path / 'a-file'} is not a directory); "
                                     f"pass {option} with a writable path")
    assert (tmp_path / "a-file").read_text() == "kept"
