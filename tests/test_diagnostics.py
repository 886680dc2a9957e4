"""The report's diagnostics: how each trained stage ended (budget or early stopping, late best states) and ICL by
demonstration draw, on stage logs shaped as training writes them (a real sweep's: tests/test_sweep.py)."""

import json

from ia2.reporting import diagnostics

CONDITION = json.dumps({"train": {"max_epochs": 10, "max_steps": None}})


def _stage(stage: str, steps: int, epochs: int, best: int, **extra) -> dict:
    history = [{"step": s, "dev_loss": 1.0 / (s + 1)} for s in range(0, steps + 1, 2)]
    return {"stage": stage, "steps": steps, "epochs": epochs, "best_step": best, "history": history, **extra}


def _row(method: str, seed: int, train: list[dict], eval_task: str = "t", n: int = 4) -> dict:
    base = {"model": "m", "n_train": n, "task": "t", "eval_task": eval_task, "condition": CONDITION}
    return base | {"method": method, "seed": seed, "train": train}


def test_a_stage_is_counted_as_ended_by_the_cap_of_its_own_method():
    rows = [
        _row("ia2", 0, [_stage("ia2:icl", 10, 10, 10)]),  # the 10-epoch cap, best at the last check
        _row("ia2", 1, [_stage("ia2:icl", 6, 6, 2)]),  # early stopping, best long before
        _row("ia2-long", 0, [_stage("ia2:icl", 10, 10, 10)]),  # 4× the cap: 10 epochs is early
        _row("ia2-sft", 0, [_stage("ia2:icl", 10, 10, 8), _stage("ce:gold", 2, 2, 0, improved=False)]),
        _row("sft-steps", 0, [_stage("ce:gold", 14, 14, 14)]),  # a fixed number of steps: no cap
        _row("ia2", 0, [_stage("ia2:icl", 10, 10, 10)], eval_task="other"),  # reuses seed 0's adapter
    ]
    got = {(s["method"], s["position"]): s for s in diagnostics.stage_summary(rows)}
    assert list(got) == [("ia2", 1), ("ia2-sft", 1), ("ia2-sft", 2), ("sft-steps", 1), ("ia2-long", 1)]
    assert got["ia2", 1]["seeds"] == 2 and got["ia2", 1]["ended_by_cap"] == 1 and got["ia2", 1]["late_best"] == 1
    assert (got["ia2", 1]["steps_mean"], got["ia2", 1]["steps_min"], got["ia2", 1]["steps_max"]) == (8.0, 6, 10)
    assert got["ia2-long", 1]["ended_by_cap"] == 0 and got["ia2-long", 1]["late_best"] == 1
    assert got["ia2-sft", 1]["late_best"] == 1, "step 8 is the second-to-last check of 0, 2, …, 10"
    assert got["ia2-sft", 2]["stage"] == "ce:gold" and got["ia2-sft", 2]["not_improved"] == 1
    assert got["ia2-sft", 2]["late_best"] == 0, "checks 0 and 2, best at the start: it never improved"
    assert got["sft-steps", 1]["ended_by_cap"] is None and got["sft-steps", 1]["late_best"] is None


def test_icl_by_draw_sets_the_first_draw_beside_the_mean():
    rows = [
        {**_row("icl", 0, []), "accuracy_by_draw": [0.9, 0.7, 0.5]},
        {**_row("icl", 1, []), "accuracy_by_draw": [0.6, 0.6, 0.6]},
    ]
    (d,) = diagnostics.icl_draws(rows)
    assert d["draws"] == 3 and d["seeds"] == 2
    assert abs(d["mean_of_draws"] - 0.65) < 1e-12 and abs(d["first_draw"] - 0.75) < 1e-12
    assert abs(d["spread"] - 0.2) < 1e-12, "(0.4 + 0.0) / 2"


def test_icl_by_draw_of_a_single_seed_has_no_spread_and_writes_as_json():
    """A sweep still running has conditions with one seed; summary.json must still be written."""
    (d,) = diagnostics.icl_draws([{**_row("icl", 0, []), "accuracy_by_draw": [0.9, 0.7, 0.5]}])
    assert d["mean_of_draws_std"] == 0.0 and d["first_draw_std"] == 0.0
    assert json.loads(json.dumps(d)) == d


def test_stages_are_listed_by_n_as_a_number_then_in_the_methods_order():
    rows = [_row(m, 0, [_stage("ce:gold", 2, 2, 2)], n=n) for n in (16, 4) for m in ("sft", "ia2")]
    rows = [{**r, "train": [_stage("ia2:icl", 2, 2, 2)]} if r["method"] == "ia2" else r for r in rows]
    assert [(s["n_train"], s["method"]) for s in diagnostics.stage_summary(rows)] == [
        (4, "sft"), (4, "ia2"), (16, "sft"), (16, "ia2")
    ]  # fmt: skip
