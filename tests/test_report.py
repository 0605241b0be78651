"""The benchmark report: verdicts against the best baseline, the trade-off table and
figure, memory to serve both settings, selection labelling, chosen hyper-parameters, and
a torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pacsim.bench.report import (
    chosen_table,
    memory_bytes,
    memory_table,
    selection_header,
    tradeoff_table,
    verdict,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]

# (pair, n) -> method -> (mean target RMSE, forgetting = source after / before)
CELLS = {
    ("near", 10): {"scratch": (3.0, 2.0), "finetune": (1.05, 2.0), "head": (1.2, 1.5),
                   "l2sp": (1.0, 1.8), "bitfit": (1.1, 1.6), "pac-paper": (1.0, 1.02),
                   "pac": (0.9, 1.0)},
    ("near", 100): {"scratch": (2.0, 2.0), "finetune": (0.5, 2.0), "head": (0.8, 1.5),
                    "l2sp": (0.52, 1.8), "bitfit": (0.6, 1.6), "pac-paper": (0.55, 1.02),
                    "pac": (0.5, 1.0)},
    # pac-paper beats every baseline here: it must not count as "the best baseline"
    ("far", 10): {"scratch": (2.0, 3.0), "finetune": (1.0, 3.0), "head": (1.5, 2.5),
                  "l2sp": (1.1, 2.9), "bitfit": (1.3, 2.0), "pac-paper": (0.8, 1.0),
                  "pac": (1.2, 1.0)},
    # head alone is within 5 % of the best target error with forgetting <= 1.05x
    ("far", 100): {"scratch": (1.5, 3.0), "finetune": (1.0, 3.0), "head": (1.02, 1.04),
                   "l2sp": (1.05, 2.9), "bitfit": (1.3, 2.0), "pac-paper": (1.3, 1.0),
                   "pac": (1.2, 1.0)},
    ("zeta", 10): {"finetune": (1.0, 2.0), "pac": (1.0, 1.0)},
}
SUMMARY = [{"name": "net.0.weight", "shape": [80, 100], "numel": 8000, "essential": 1600,
            "essential_share": 0.2},
           {"name": "net.2.weight", "shape": [1, 1], "numel": 1, "essential": 1,
            "essential_share": 1.0}]


def _records(selection=None) -> list[dict]:
    out = []
    for (pair, n), methods in CELLS.items():
        for method, (err, forget) in methods.items():
            for seed, wiggle in ((0, 0.99), (1, 1.01)):  # the mean over seeds is exact
                rec = {"pair": pair, "method": method, "n_target": n, "seed": seed,
                       "status": "ok", "target": {"rmse": err * wiggle, "nrmse": err / 10,
                                                  "max_error": 3 * err, "r2": 0.5},
                       "source_before": {"rmse": 2.0, "nrmse": 0.2},
                       "source_after": {"rmse": 2.0 * forget, "nrmse": 0.2 * forget},
                       "zero_shot": {"rmse": 5.0, "nrmse": 0.5}, "trainable": 10,
                       "steps": 500, "seconds": 0.1, "device": "cpu",
                       "versions": {"pacsim": "x"}}
                pac = method in ("pac", "pac-paper")
                if pac:
                    rec["pac"] = {"allocated_source_rmse": 2.0 * forget, "summary": SUMMARY}
                if pair == "near":  # recorded memory
                    rec["n_params"] = 10000
                    rec["memory_bytes"] = 41500 if pac else 80000
                elif pair == "far":  # computed from n_params
                    rec["n_params"] = 10000
                if selection is not None:
                    sel = selection(rec)
                    if sel is not None:
                        rec["selection"] = sel
                out.append(rec)
    out.append({"pair": "near", "method": "l2sp", "n_target": 10, "seed": 2, "status": "error",
                "error": "ValueError: boom"})
    return out


def _write(tmp_path: Path, records: list[dict]) -> Path:
    out = tmp_path / "res"
    out.mkdir()
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _section(text: str, pair: str) -> str:
    start = text.index(f"\n## {pair}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_verdict_thresholds():
    assert [verdict(r) for r in (0.5, 0.989, 0.99, 1.0, 1.01, 1.011, 3.0)] == \
        ["wins", "wins", "ties", "ties", "ties", "loses", "loses"]


def test_report_verdicts_tradeoff_memory_figures(tmp_path):
    out = _write(tmp_path, _records())
    text = write_report(out).read_text()
    start = text.index("## Summary")
    summary = text[start:text.index("\n## ", start)]
    # every n, against the best of the five baselines (never pac-paper)
    assert ("- **near**: n=10: PAC wins (0.90x the best baseline, l2sp); n=100: PAC ties "
            "(1.00x the best baseline, finetune). pac-paper ties at n=10 (1.00x); loses at "
            "n=100 (1.10x).") in summary
    assert ("- **far**: n=10: PAC loses (1.20x the best baseline, finetune); n=100: PAC loses "
            "(1.20x the best baseline, finetune). pac-paper wins at n=10 (0.80x); loses at "
            "n=100 (1.30x).") in summary
    assert "- **zeta**: n=10: PAC ties (1.00x the best baseline, finetune)." in summary
    assert ("- **PAC overall** (pacsim's recipe, `pac`): wins at 1, ties at 2 and loses at 2 of "
            "the 5 (pair, n) combinations against the best baseline") in summary
    assert "(`pac-paper`): wins at 1, ties at 1 and loses at 2 of the 4" in summary
    assert summary.index("PAC overall") < summary.index("paper's recipe overall")
    assert ("head at 1, pac-paper at 1, pac at 3 of the 5 (pair, n) combinations; never "
            "scratch, finetune, l2sp, bitfit.") in summary
    # the compact table, pair x n
    assert "| pair | method | n=10 | n=100 |" in summary
    assert "| near | pac | **0.90 wins** | 1.00 ties |" in summary
    assert "| near | pac-paper | 1.00 ties | 1.10 loses |" in summary
    assert "| far | pac | 1.20 loses | 1.20 loses |" in summary
    assert "| zeta | pac | 1.00 ties | - |" in summary
    assert "zeta | pac-paper" not in summary

    models = text[text.index("## Source models"):text.index("## Forgetting")]
    assert "| near | ? | 2 | 0.2 |" in models  # records without a config: model "?"

    near, far, zeta = (_section(text, p) for p in ("near", "far", "zeta"))
    # trade-off table: exactly one method qualifies in each of these cells
    assert "| 10 | 0.9 (pac) | pac | pac |" in near
    assert "| 100 | 0.5 (finetune) | pac | pac |" in near  # a tie: canonical order
    assert "| 10 | 0.8 (pac-paper) | pac-paper | pac-paper |" in far
    assert "| 100 | 1 (finetune) | head | finetune, head, pac |" in far
    # memory: recorded (near), computed from n_params (far), absent (zeta)
    assert "| pac | 10,000 | 40.5 KiB | 1.04x |" in near
    assert "| finetune | 10,000 | 78.1 KiB | 2.00x |" in near
    assert "| pac-paper | 10,000 | 40 KiB | 1.03x |" in far
    assert "| scratch | 10,000 | 78.1 KiB | 2.00x |" in far
    assert "Memory to serve both settings: not in these records" in zeta
    # what was there before stays
    assert "Hyper-parameters: fixed budget, no selection, for every method." in text
    assert "## Chosen hyper-parameters" not in text
    assert "## Failed cells" in text and "ValueError: boom" in text
    assert "| near | 2 | 4 (2.00x) |" in text  # forgetting table: source model, scratch
    for name in ("near_tradeoff.png", "far_tradeoff.png", "zeta_tradeoff.png",
                 "near_error_vs_n.png", "forgetting.png", "near_pac_layers.png"):
        assert (out / "figures" / name).stat().st_size > 1000, name
        assert f"figures/{name}" in text
    assert not list(out.glob(".*.tmp"))


def test_tradeoff_rows_and_memory_numbers():
    recs = _records()
    rows = {(r["pair"], r["n"]): r for r in tradeoff_table(recs)}
    assert rows[("far", 100)]["qualify"] == ["head"]
    assert rows[("far", 100)]["points"]["head"] == pytest.approx((1.04, 1.02))
    assert rows[("near", 10)]["qualify"] == ["pac"] and rows[("near", 10)]["best"] == "pac"
    by = {(r["pair"], r["method"]): r for r in recs if r["status"] == "ok"}
    assert memory_bytes(by[("near", "pac")]) == 41500
    assert memory_bytes(by[("far", "pac")]) == 40000 + 1001  # ceil(8001 / 8) mask bytes
    assert memory_bytes(by[("far", "l2sp")]) == 80000
    assert memory_bytes(by[("zeta", "pac")]) is None


def _cv(rec, mode="cv"):
    i = rec["seed"] + 2 * (rec["n_target"] == 100)
    chosen = ({"lam": 0.0, "subspace": "last"} if i < 3 else {"lam": 0.01, "subspace": "all"}) \
        if rec["method"] == "pac" else {"lr": 0.001}
    return {"mode": mode, "folds": 5, "chosen": chosen, "steps": (100, 200, 300, 1500)[i],
            "cv_loss": 0.1}


def test_verdicts_compare_methods_on_the_same_seeds():
    """A baseline that fails on a hard seed is not averaged over the easy ones: ratios,
    verdicts and trade-off points use the seeds where every method finished, and say so."""
    from pacsim.bench.report import comparisons, summary_lines

    def rec(method, seed, rmse, status="ok"):
        return {"pair": "p", "method": method, "n_target": 10, "seed": seed,
                "status": status, "target": {"rmse": rmse},
                "source_before": {"rmse": 1.0}, "source_after": {"rmse": 1.0}}

    records = [rec("pac", 0, 1.0), rec("pac", 1, 1.0), rec("pac", 2, 5.0),
               rec("finetune", 0, 1.2), rec("finetune", 1, 1.2),
               rec("finetune", 2, float("nan"), status="error")]
    row, = comparisons(records)
    assert row["pac"] == pytest.approx(1.0 / 1.2) and (row["seeds"], row["of"]) == (2, 3)
    text = "\n".join(summary_lines(records))
    assert "PAC wins (0.83x the best baseline, finetune; on the 2 of 3 seeds where every " \
        "method finished)" in text, text
    assert tradeoff_table(records)[0]["points"]["pac"][1] == pytest.approx(1.0)
    apart = [rec("pac", 0, 1.0), rec("finetune", 1, 1.2)]  # no seed both finished
    assert comparisons(apart) == []
    assert "- **Not compared** (no seed where every method finished): p n=10." in \
        summary_lines(apart)
    records[-1] = rec("finetune", 2, 6.0)  # all finished: no caveat, all three seeds
    row, = comparisons(records)
    assert row["pac"] == pytest.approx((7.0 / 3) / (8.4 / 3)) and row["seeds"] == 3
    assert "of 3 seeds" not in "\n".join(summary_lines(records))


def test_selection_wording():
    assert selection_header(_records()) == \
        "Hyper-parameters: fixed budget, no selection, for every method."
    assert selection_header(_records(lambda r: {"mode": "fixed", "chosen": {}, "steps": 500})) \
        == "Hyper-parameters: fixed budget, no selection, for every method."
    assert selection_header(_records(_cv)) == (
        "Hyper-parameters: K-fold CV on target samples only (K = 5) and the final retrain's "
        "state at the chosen step, for every method.")
    best = selection_header(_records(lambda r: {**_cv(r), "final": "best"}))
    assert best.endswith("(K = 5) and the final retrain's lowest-loss epoch, for every method.")
    some = _records(lambda r: {**_cv(r), "final": "best" if r["seed"] == 0 else "last"})
    ok = [r for r in some if r["status"] == "ok"]
    n_best = sum(r["seed"] == 0 for r in ok)
    assert f"lowest-loss epoch in {n_best} of {len(ok)} cells" in selection_header(some)
    oracle = selection_header(_records(lambda r: _cv(r, "oracle")))
    assert "oracle" in oracle and "test data" in oracle
    # a mix: pac-paper on the fixed budget (an old record has no selection field)
    mixed = selection_header(_records(lambda r: None if r["method"] == "pac-paper" else _cv(r)))
    assert mixed.startswith("Hyper-parameters differ between methods: ")
    assert "pac-paper: fixed budget, no selection;" in mixed
    assert "pac: K-fold CV on target samples only (K = 5) and the final retrain's state" in mixed
    assert "finetune: K-fold CV on target samples only (K = 5) and the final retrain's state " \
        "at the chosen step;" in mixed
    within = selection_header(_records(lambda r: _cv(r) if r["seed"] else None))
    assert "finetune: mixed (K-fold CV on target samples only (K = 5) and the final " \
        "retrain's state at the chosen step in " in within


def test_chosen_hyperparameters_in_report(tmp_path):
    recs = [r for r in _records(lambda r: None if r["method"] == "pac-paper" else _cv(r))
            if r["pair"] == "near"]
    table = chosen_table(recs)
    assert "| near | pac | 4 | lam=0 (3/4), subspace=last (3/4) | 250 (100-1500) |" in table
    assert "| near | finetune | 4 | lr=0.001 (4/4) | 250 (100-1500) |" in table
    assert not any("pac-paper" in line for line in table)
    text = write_report(_write(tmp_path, recs)).read_text()
    assert "Hyper-parameters differ between methods: " in text
    assert "## Chosen hyper-parameters" in text
    assert "| near | pac | 4 | lam=0 (3/4), subspace=last (3/4) | 250 (100-1500) |" in text
    assert "## Failed cells" in text


def _imports_torch(code: str) -> bool:
    run = subprocess.run([sys.executable, "-c", code + "import pacsim.bench.report; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip() == "True"


@pytest.mark.slow
def test_import_pacsim_bench_report_does_not_import_torch():
    assert not _imports_torch("import sys; ")


def test_report_counts_each_cell_once_after_a_rerun(tmp_path):
    from pacsim.bench.results import append_record, latest, read_results

    old = {"pair": "p", "method": "pac", "n_target": 10, "seed": 0, "status": "error",
           "error": "x"}
    new = dict(old, status="ok")
    other = dict(old, seed=1)
    for r in (old, other, new):
        append_record(tmp_path, r)
    assert latest(read_results(tmp_path)) == [other, new]


def test_ratio_interval_is_a_paired_bootstrap_over_seeds():
    from pacsim.bench.report import MIN_SEEDS, ratio_interval

    base = [1.0, 2.0, 4.0, 8.0, 3.0]
    # PAC 10 % worse on every seed: every resample gives 1.1, however unequal the seeds
    lo, hi = ratio_interval([1.1 * b for b in base], base)
    assert lo == pytest.approx(1.1) and hi == pytest.approx(1.1)
    # worse on some seeds, better on others: the interval holds the ratio of means and 1
    a = [0.8, 2.6, 3.4, 9.5, 2.7]
    lo, hi = ratio_interval(a, base)
    assert lo < 1 < hi and lo <= sum(a) / sum(base) <= hi
    assert ratio_interval(a, base) == (lo, hi)  # deterministic
    assert ratio_interval([1.0] * (MIN_SEEDS - 1), [1.0] * (MIN_SEEDS - 1)) is None
    assert ratio_interval([0.5, 0.6, float("nan")], [1.0, 1.0, 1.0]) is None  # no ratio
    with pytest.raises(ValueError, match="paired"):
        ratio_interval([1.0, 2.0, 3.0], [1.0, 2.0])


def test_report_gives_seed_noise_intervals_from_three_seeds(tmp_path):
    from pacsim.bench.report import summary_lines, verdict_table

    def rec(pair, method, seed, rmse):
        return {"pair": pair, "method": method, "n_target": 10, "seed": seed,
                "status": "ok", "target": {"rmse": rmse},
                "source_before": {"rmse": 1.0}, "source_after": {"rmse": 1.0}}

    records = []
    for seed, (clear, noisy) in enumerate([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (4.0, 4.0)]):
        records += [rec("clear", "finetune", seed, clear),
                    rec("clear", "pac", seed, 1.2 * clear),
                    rec("noisy", "finetune", seed, noisy),
                    rec("noisy", "pac", seed, noisy * (1.3 if seed % 2 else 0.8))]
    table = "\n".join(verdict_table(records))
    assert "| clear | pac | 1.20 loses (1.20-1.20) |" in table
    noisy_cell = table.split("| noisy | pac | ")[1].split(" |")[0]
    lo, hi = (float(v) for v in noisy_cell.split("(")[1].rstrip(")").split("-"))
    assert lo < 1 < hi
    text = "\n".join(summary_lines(records))
    assert ("- **Seed noise** (95% paired bootstrap interval over seeds of the ratio to the "
            "best baseline; a rough guide with a few seeds): `pac` clearly better at 0, "
            "clearly worse at 1 of 2 (within the noise: noisy n=10).") in text
    # two seeds: no interval, no seed-noise line
    two = [r for r in records if r["seed"] < 2]
    assert "(" not in "\n".join(verdict_table(two)).split("|---|")[-1]
    assert "Seed noise" not in "\n".join(summary_lines(two))


def test_report_answers_which_method_first_with_profiles(tmp_path):
    def cv(rec):  # CV losses that rank like the test errors: auto picks the best cell
        return {"mode": "cv", "cv_loss": rec["target"]["rmse"], "interior": True}

    out = _write(tmp_path, _records(cv))
    text = write_report(out).read_text()
    first = text.split("\n")[2]
    assert first.startswith("- **Safest single method: `"), first
    section = _section(text, "Which method to use")
    assert "| method | geometric mean | worst | worst at | problems |" in section
    assert "![performance profile](figures/performance_profile.png)" in section
    assert (out / "figures" / "performance_profile.png").stat().st_size > 0
    assert "| auto |" in section and "Cells whose final choice is still at an edge" in section


def test_report_marks_pairs_whose_planned_cells_have_not_all_finished(tmp_path):
    out = _write(tmp_path, _records())
    (out / "machine.json").write_text(json.dumps({"planned": {"near": 100, "far": 2}}))
    text = write_report(out).read_text()
    ok_near = sum(1 for r in _records() if r["pair"] == "near" and r["status"] == "ok")
    assert f"**Incomplete**: cells finished of those planned, per pair: near ({ok_near} of " \
           "100);" in text


def test_memory_ratio_is_against_one_network_in_its_own_bytes():
    # an FNO's complex spectral weights take 8 bytes each: 100 parameters, 600 bytes
    def rec(method, mem, **extra):
        return {"pair": "p", "method": method, "n_target": 10, "seed": 0, "status": "ok",
                "n_params": 100, "memory_bytes": mem, **extra}

    rows = memory_table([rec("finetune", 1200, network_bytes=600),
                         rec("pac", 640, network_bytes=600)], "p")
    assert rows[2].endswith("| 2.00x |") and rows[3].endswith("| 1.07x |")
    # older records without network_bytes: half of what a baseline keeps
    rows = memory_table([rec("finetune", 1200), rec("pac", 640)], "p")
    assert rows[3].endswith("| 1.07x |")
    # nothing but the parameter count: float32
    rows = memory_table([rec("pac", 640)], "p")
    assert rows[2].endswith("| 1.60x |")
