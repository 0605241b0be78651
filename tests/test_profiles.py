"""Which method to use: ``auto`` derived from the cells' CV losses, ratios to the
per-problem best baseline and performance profiles, on hand-made records."""

from __future__ import annotations

import copy

import pytest

from pacsim.bench.profiles import (
    TAUS,
    auto_records,
    edge_cells,
    first_lines,
    performance_profile,
    problem_means,
    ratio_summary,
    ratios_to_best,
    selection_cost,
)


def _rec(pair, method, n, seed, rmse, cv, **sel):
    return {"pair": pair, "method": method, "n_target": n, "seed": seed, "status": "ok",
            "target": {"rmse": rmse}, "seconds": 2.0,
            "selection": {"mode": "cv", "cv_loss": cv, "configs": 4, "trainings": 12,
                          "interior": True, "edges": [], **sel}}


# two problems, two seeds; test errors and CV losses chosen by hand
TABLE = {  # (pair, n) -> method -> [(rmse, cv) per seed]
    ("a", 10): {"finetune": [(2.0, 0.5), (2.0, 0.5)], "head": [(1.0, 0.6), (1.0, 0.4)],
                "pac": [(1.1, 0.45), (1.1, 0.45)]},
    ("b", 10): {"finetune": [(1.0, 0.2), (1.0, 0.2)], "head": [(3.0, 0.3), (3.0, 0.3)],
                "pac": [(1.2, 0.1), (1.4, 0.3)]},
}


def _records():
    return [_rec(p, m, n, s, rmse, cv) for (p, n), by in TABLE.items()
            for m, vals in by.items() for s, (rmse, cv) in enumerate(vals)]


def test_auto_picks_the_lowest_cv_loss_per_cell_and_never_reads_test_errors():
    recs = _records()
    auto = {(r["method"], r["pair"], r["seed"]): r for r in auto_records(recs)}
    assert auto[("auto", "a", 0)]["auto"]["pick"] == "pac"    # 0.45 < 0.5 < 0.6
    assert auto[("auto", "a", 1)]["auto"]["pick"] == "head"   # 0.4
    assert auto[("auto", "b", 0)]["auto"]["pick"] == "pac"
    assert auto[("auto", "b", 1)]["auto"]["pick"] == "finetune"
    assert auto[("auto", "a", 1)]["target"]["rmse"] == 1.0
    assert auto[("auto-keep-source", "a", 1)]["auto"]["pick"] == "pac", "PAC methods only"
    assert set(auto[("auto", "a", 0)]["auto"]["cv_loss"]) == {"finetune", "head", "pac"}
    # poisoned test errors change the reported error, never the pick
    poisoned = copy.deepcopy(recs)
    for r in poisoned:
        r["target"]["rmse"] = 1e3 if r["method"] == "pac" else r["target"]["rmse"]
    again = {(r["method"], r["pair"], r["seed"]): r["auto"]["pick"]
             for r in auto_records(poisoned)}
    assert again == {k: r["auto"]["pick"] for k, r in auto.items()}
    # a cell without a CV loss (fixed budget) is never a candidate
    fixed = [dict(r, selection={"mode": "fixed"}) if r["method"] == "pac" else r
             for r in recs]
    assert all(r["auto"]["pick"] != "pac" for r in auto_records(fixed)
               if r["method"] == "auto")


def test_ratios_profiles_and_the_first_lines_are_exact_on_a_hand_made_table():
    recs = _records() + auto_records(_records())
    means = problem_means(recs)
    assert means[("a", 10)] == {"finetune": 2.0, "head": 1.0, "pac": 1.1,
                                "auto": pytest.approx(1.05), "auto-keep-source": 1.1}
    ratios = ratios_to_best(means)  # best baseline: head on a (1.0), finetune on b (1.0)
    assert ratios["pac"] == {("a", 10): pytest.approx(1.1), ("b", 10): pytest.approx(1.3)}
    rows = {r["method"]: r for r in ratio_summary(ratios)}
    assert rows["pac"]["geomean"] == pytest.approx((1.1 * 1.3) ** 0.5)
    assert rows["pac"]["worst"] == pytest.approx(1.3) and rows["pac"]["worst_at"] == ("b", 10)
    assert rows["head"]["worst"] == pytest.approx(3.0)
    prof = performance_profile(means, ["finetune", "head", "pac"], TAUS)
    at = {t: i for i, t in enumerate(TAUS)}
    assert prof["finetune"][at[1.0]] == 0.5 and prof["head"][at[1.0]] == 0.5
    assert prof["pac"][at[1.0]] == 0.0 and prof["pac"][at[1.1]] == 0.5
    assert prof["pac"][at[1.3]] == 1.0 and prof["finetune"][at[1.975]] == 0.5
    assert prof["finetune"][at[2.0]] == 1.0 and prof["head"][at[3.0]] == 1.0
    lines = first_lines(recs)
    assert lines[0].startswith("- **Safest single method: `pac`**, 1.196x")
    assert "1.30x at worst (b n=10)" in lines[0]
    assert any(line.startswith("- **`auto`**") for line in lines)


def test_edges_and_selection_cost_are_reported_per_cell_and_method():
    recs = _records()
    recs[0]["selection"].update(interior=False, edges=["lr=0.01 at the top of its grid "
                                                       "(the extension limit)"])
    edges = edge_cells(recs + auto_records(recs))
    assert edges == ["`a|finetune|10|0`: lr=0.01 at the top of its grid (the extension "
                     "limit)"], "derived auto records are not listed twice"
    cost = {c["method"]: c for c in selection_cost(recs)}
    assert cost["finetune"]["interior"] == 0.75 and cost["pac"]["interior"] == 1.0
    assert cost["head"]["trainings"] == 12 and cost["head"]["seconds"] == 2.0


def test_a_failed_method_is_the_worst_never_left_out_and_a_nan_best_is_skipped():
    means = {("a", 10): {"scratch": float("nan"), "finetune": 1.0, "pac": 0.8},
             ("b", 10): {"scratch": 2.0, "finetune": 1.0, "pac": float("inf")},
             ("c", 10): {"scratch": 0.0, "finetune": 0.0, "pac": 0.5}}
    ratios = ratios_to_best(means)
    assert ratios["pac"][("a", 10)] == pytest.approx(0.8)   # best finite baseline: 1.0
    assert ratios["scratch"][("a", 10)] == float("inf")
    assert ratios["finetune"][("c", 10)] == 1.0 and ratios["pac"][("c", 10)] == float("inf")
    rows = {r["method"]: r for r in ratio_summary(ratios)}
    assert rows["pac"]["worst"] == float("inf") and rows["pac"]["worst_at"] == ("b", 10)
    assert ratio_summary(ratios)[0]["method"] == "finetune", "a failure is never safest"
    prof = performance_profile(means, ["scratch", "finetune", "pac"], TAUS)
    assert prof["pac"][0] == pytest.approx(1 / 3) and prof["finetune"][0] == pytest.approx(2 / 3)


def test_a_registered_extra_method_is_a_baseline_of_the_ratios_and_the_report():
    """A method outside the built-in list (e.g. ``lora``) counts as a baseline: it can be a
    problem's best, it is ranked, and it is never an ``auto`` candidate (auto searches
    the default methods, as ``select("auto")`` does)."""
    from pacsim.bench.report import comparisons

    recs = _records() + [_rec("a", "lora", 10, s, 0.5, 0.01) for s in (0, 1)]
    ratios = ratios_to_best(problem_means(recs))
    assert ratios["pac"][("a", 10)] == pytest.approx(2.2), "lora (0.5) is a's best baseline"
    assert ratios["pac"][("b", 10)] == pytest.approx(1.3), "b has no lora: finetune stays"
    assert ratios["lora"] == {("a", 10): 1.0}
    rows = {(r["pair"], r["n"]): r for r in comparisons(recs)}
    assert rows[("a", 10)]["best"] == "lora" and rows[("b", 10)]["best"] == "finetune"
    assert all(r["auto"]["pick"] != "lora" for r in auto_records(recs))
    assert any("`lora`" in line or "`pac`" in line for line in first_lines(recs))
    assert "lora" in {c["method"] for c in selection_cost(recs)}
