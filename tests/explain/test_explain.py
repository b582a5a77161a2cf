"""Concept explanations, scoring and explain_all on a synthetic Shapes world whose neurons are known.

The fake index hands out records of neurons defined from the ground-truth masks: a red
detector, a blue detector, a circle detector, a red-circle detector, a text neuron on the
word "square" and an inactive one.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neuronwidgets.datasets.shapes import shapes
from neuronwidgets.explain import (
    ConceptExplainer,
    ConceptSimulator,
    Explanation,
    ScoreResult,
    SimulationParseError,
    explain_all,
    pearson,
    score,
)
from neuronwidgets.explain import formula as fm
from neuronwidgets.records import ActivationRecord

GRID = (4, 4)
# neuron -> (category, rule giving (patch map [4, 4], token activations) from a sample and its tokens)
RED, BLUE, CIRCLE, RED_CIRCLE, WORD, DEAD = range(6)


def tokens_of(sample) -> list[str]:
    return [" " + w for w in sample.caption.split()]


def neuron_values(neuron: int, sample, rng) -> tuple[np.ndarray, np.ndarray]:
    pm = sample.patch_masks(*GRID)
    toks = tokens_of(sample)
    noise = rng.uniform(0, 0.05, GRID)
    text = np.zeros(len(toks), np.float32)
    if neuron == RED:
        img = 4.0 * pm["red"] + noise
    elif neuron == BLUE:
        img = 3.0 * pm["blue"] + noise
    elif neuron == CIRCLE:
        img = 2.0 * pm["circle"] + noise
    elif neuron == RED_CIRCLE:
        img = 5.0 * np.minimum(pm["red"], pm["circle"]) + noise
    elif neuron == WORD:
        img = np.zeros(GRID)
        text = np.asarray([2.0 if t.strip() == "square" else 0.0 for t in toks], np.float32) + rng.uniform(0, 0.05, len(toks))
    else:
        img, text = np.zeros(GRID), np.zeros(len(toks), np.float32)
    return img.astype(np.float32), text.astype(np.float32)


CATEGORY = {RED: "visual", BLUE: "visual", CIRCLE: "visual", RED_CIRCLE: "visual", WORD: "text", DEAD: "inactive"}


class FakeIndex:
    """The NeuronIndex interface over records computed from the masks (top by max, random by a fixed draw)."""

    def __init__(self, data, top_k=30, random_k=10, seed=0, path=None, n_neurons=6):
        self.dataset, self.layers, self.n_neurons, self.grid, self.path = data, [0], n_neurons, GRID, path
        self.site, self.model = "act", "fake"
        rng = np.random.default_rng(seed)
        self._records = {}
        self._max = {}
        rand = sorted(rng.choice(len(data), size=random_k, replace=False).tolist())
        for n in range(n_neurons):
            recs = []
            for i, s in enumerate(data):
                img, text = neuron_values(n, s, rng)
                peak = float(max(img.max(), text.max(initial=0)))
                recs.append(ActivationRecord(i, s.id, peak, img, tokens_of(s), text))
            self._max[n] = max(r.activation for r in recs)
            top = sorted(recs, key=lambda r: (-r.activation, r.sample))[:top_k]
            self._records[(0, n, "top")] = [_with_kind(r, "top") for r in top]
            self._records[(0, n, "random")] = [_with_kind(recs[i], "random") for i in rand]

    def records(self, layer, neuron, kind="top"):
        return list(self._records[(layer, neuron, kind)])

    def neuron_max(self, layer, neuron):
        return self._max[neuron] if self._max[neuron] > 0.1 else 0.0

    def categories(self, rule="paper"):
        return pd.DataFrame({"layer": 0, "neuron": range(self.n_neurons), "category": [CATEGORY[n] for n in range(self.n_neurons)]})

    def explanations(self):
        if self.path is None or not (self.path / "explanations.parquet").exists():
            return None
        return pd.read_parquet(self.path / "explanations.parquet")


def _with_kind(r, kind):
    return ActivationRecord(r.sample, r.sample_id, r.activation, r.patch_map, r.text_tokens, r.text_activations, kind)


@pytest.fixture(scope="module")
def world():
    data = shapes(n=180, seed=3)
    return data, FakeIndex(data[:120]), FakeIndex(data[120:], top_k=20, random_k=20, seed=1)


# --- formulas ------------------------------------------------------------------------------
def test_formula_parse_print_evaluate():
    f = fm.parse("Red AND circle OR blue")
    assert f == ("or", ("and", ("term", "red"), ("term", "circle")), ("term", "blue"))
    assert fm.to_text(f) == "(red AND circle) OR blue" and fm.parse(fm.to_text(f)) == f
    assert fm.terms(fm.parse("NOT (a OR b) AND a")) == ["a", "b"]
    vals = {"a": np.array([True, False, True]), "b": np.array([False, False, True])}
    assert fm.evaluate(fm.parse("a AND NOT b"), vals.__getitem__).tolist() == [True, False, False]
    soft = {"a": np.array([0.2, 1.0]), "b": np.array([0.5, 0.1])}
    assert np.allclose(fm.evaluate(fm.parse("a OR b"), soft.__getitem__, soft=True), [0.5, 1.0])
    for bad in ("", "a AND", "(a OR b", "AND a", "a b )"):
        with pytest.raises(ValueError):
            fm.parse(bad)


# --- the concept explainer ------------------------------------------------------------------
@pytest.mark.parametrize("neuron, concept", [(RED, "red"), (BLUE, "blue"), (CIRCLE, "circle"), (RED_CIRCLE, "red AND circle"),
                                             (WORD, "square")])
def test_concept_explainer_finds_the_ground_truth(world, neuron, concept):
    data, index, _ = world
    exp = ConceptExplainer(data[:120]).explain(index, 0, neuron)
    assert fm.canonical(fm.parse(exp.concept)) == fm.canonical(fm.parse(concept)) and exp.text == exp.concept
    assert exp.category == CATEGORY[neuron] and exp.explainer == "concept"
    assert exp.extra["iou"] > 0.5 and exp.exemplars and exp.extra["ranking"][0][0] == exp.concept


def test_concept_explainer_uses_the_index_dataset_and_is_deterministic(world):
    _, index, _ = world
    a = ConceptExplainer().explain(index, 0, RED)
    b = ConceptExplainer().explain(index, 0, RED)
    assert a.to_dict() == b.to_dict()
    ranking = ConceptExplainer(max_terms=1).ranking(index, 0, RED)
    assert ranking["formula"].iloc[0] == "red" and ranking["iou"].is_monotonic_decreasing


def test_inactive_neuron_gets_no_concept(world):
    _, index, _ = world
    exp = ConceptExplainer().explain(index, 0, DEAD)
    assert exp.category == "inactive" and exp.concept is None


# --- the concept simulator --------------------------------------------------------------------
def test_concept_simulator_paints_masks(world):
    data, _, held = world
    rec = held.records(0, RED, "top")[0]
    sim = ConceptSimulator(held)
    red = sim.simulate(Explanation(0, RED, text="red", concept="red"), rec, "image")
    assert red.shape == (16,) and np.allclose(red, 10 * data[120 + rec.sample].patch_masks(4, 4)["red"].ravel())
    # Hand-written text is read through the concept names it mentions.
    assert np.allclose(sim.simulate(Explanation(0, RED, text="Red patches."), rec, "image"), red)
    assert not sim.simulate(Explanation(0, RED, text="nothing known"), rec, "image").any()
    words = sim.simulate(Explanation(0, WORD, category="text", text="square"), rec, "text")
    assert words.tolist() == [10.0 if t.strip() == "square" else 0.0 for t in rec.text_tokens]
    said = sim.simulate(Explanation(0, WORD, category="text", text='the word "square"'), rec, "text")
    assert said.tolist() == words.tolist()
    article = sim.simulate(Explanation(0, WORD, category="text", text="a"), rec, "text")  # an input word, by itself
    assert article.tolist() == [10.0 if t.strip() == "a" else 0.0 for t in rec.text_tokens] and article.any()


# --- scoring -------------------------------------------------------------------------------
def test_score_real_neuron_beats_baseline(world):
    data, index, held = world
    exp = ConceptExplainer(data[:120]).explain(index, 0, RED)
    result = score(exp, index, simulator=ConceptSimulator(held), holdout=held)
    assert isinstance(result, ScoreResult) and result.modality == "image"
    assert result.score >= 0.9 and result.scores["top"] >= 0.9
    assert result.baseline_explanation is not None and result.baseline_explanation.neuron != RED
    assert not ({"red"} & set(fm.terms(fm.parse(result.baseline_explanation.concept))))
    assert result.baseline <= 0.2
    assert result.n_unparsed == 0
    df = result.per_input
    assert set(df.columns) >= {"sample", "sample_id", "kind", "modality", "real", "simulated", "corr"}
    assert set(df["kind"]) == {"top", "random"} and (df["modality"] == "image").all()
    assert len(df) == 40 and df["mixed"].sum() == 40
    # The score is Pearson over all values concatenated, not a mean of per-input scores.
    mixed = df[df["mixed"]]
    assert result.score == pytest.approx(pearson(np.concatenate(list(mixed["real"])), np.concatenate(list(mixed["simulated"]))))
    assert json.dumps(result.summary())


def test_score_text_neuron_and_explicit_baseline(world):
    data, index, held = world
    exp = ConceptExplainer().explain(index, 0, WORD)
    other = Explanation(0, BLUE, category="visual", text="blue", concept="blue")
    result = score(exp, index, simulator=ConceptSimulator(held), holdout=held, baseline=other)
    assert result.modality == "text" and result.score > 0.9
    assert result.baseline_explanation is other and result.baseline <= 0.2
    assert (result.per_input["modality"] == "text").all()
    # Each text input keeps its tokens (the plot shows them on hover), one per value.
    assert all(len(tok) == len(real) for tok, real in zip(result.per_input["tokens"], result.per_input["real"]))


def test_score_mixes_top_and_random_one_to_one(world):
    _, index, held = world
    exp = Explanation(0, RED, text="red", concept="red")
    result = score(exp, index, ConceptSimulator(held), holdout=held, n_top=12, n_random=5, baseline=False)
    df = result.per_input
    assert (df["kind"] == "top").sum() == 12 and (df["kind"] == "random").sum() == 5
    assert (df[df["mixed"]]["kind"].value_counts() == 5).all()
    assert result.baseline_explanation is None and np.isnan(result.baseline)


def test_score_without_holdout_uses_records_the_explainer_did_not_see(world):
    _, index, _ = world
    top = index.records(0, RED, "top")
    exp = Explanation(0, RED, text="red", concept="red", exemplars=[r.sample_id for r in top[:10]])
    result = score(exp, index, ConceptSimulator(index), baseline=False)
    assert not set(result.per_input["sample_id"]) & set(exp.exemplars)
    with pytest.raises(ValueError, match="holdout"):
        score(ConceptExplainer().explain(index, 0, RED), index, ConceptSimulator(index), baseline=False)


class FlakySimulator(ConceptSimulator):
    """Fails to parse on every third input."""

    def __init__(self, data):
        super().__init__(data)
        self.calls = 0

    def simulate(self, explanation, item, modality="image", **kw):
        self.calls += 1
        if item.sample % 3 == 0:
            raise SimulationParseError("bad reply", "garbage")
        return super().simulate(explanation, item, modality, **kw)


def test_unparsed_replies_are_counted_never_zeros(world):
    _, index, held = world
    exp = Explanation(0, RED, text="red", concept="red")
    result = score(exp, index, FlakySimulator(held), holdout=held, baseline=False)
    bad = result.per_input[result.per_input["simulated"].isna()]
    assert result.n_unparsed == len(bad) > 0
    assert bad["corr"].isna().all() and bad["error"].str.contains("bad reply").all()
    ok = result.per_input[result.per_input["simulated"].notna() & result.per_input["mixed"]]
    assert result.score == pytest.approx(pearson(np.concatenate(list(ok["real"])), np.concatenate(list(ok["simulated"]))))


def test_explanation_round_trips():
    exp = Explanation(layer=3, neuron=117, category="visual", text="red patches")
    assert exp.explainer == "manual" and exp.modality == "image"
    full = Explanation(1, 2, "multi-modal", "red", ["a", "b"], "m", "v1", "concept", "red", {"iou": np.float32(0.5)})
    assert Explanation.from_dict(json.loads(json.dumps(full.to_dict()))) == Explanation.from_dict(full.to_dict())
    assert Explanation.from_row(full.to_row()).to_dict() == full.to_dict()
    assert full.modality == "both"
    with pytest.raises(ValueError, match="category"):
        Explanation(0, 0, category="visible")


# --- explain_all -------------------------------------------------------------------------------
class CountingExplainer(ConceptExplainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def explain(self, index, layer, neuron, category=None):
        self.calls += 1
        return super().explain(index, layer, neuron, category)


def test_explain_all_stores_a_table_and_resumes(world, tmp_path):
    data, _, held = world
    index = FakeIndex(data[:120], path=tmp_path)
    first = CountingExplainer()
    table = explain_all(index, neurons=[(0, RED), (0, BLUE)], explainer=first, progress=False)
    assert first.calls == 2 and (tmp_path / "explanations.parquet").exists()
    assert table["text"].tolist() == ["red", "blue"] and table["score"].isna().all()
    again = CountingExplainer()
    table = explain_all(index, explainer=again, simulator=ConceptSimulator(held), holdout=held, progress=False)
    assert again.calls == 3  # CIRCLE, RED_CIRCLE, WORD: RED and BLUE came from the table, DEAD is inactive
    assert set(table["neuron"]) == {RED, BLUE, CIRCLE, RED_CIRCLE, WORD}
    red = table[table["neuron"] == RED].iloc[0]
    assert red["score"] > 0.9 and red["baseline"] < 0.2 and red["baseline_neuron"] != RED
    assert table["error"].isna().all() and (table["n_unparsed"] == 0).all()
    saved = pd.read_parquet(tmp_path / "explanations.parquet")
    assert len(saved) == 5 and json.loads(saved["exemplars"].iloc[0])
    # Everything done: a third run explains and scores nothing.
    third = CountingExplainer()
    explain_all(index, explainer=third, simulator=ConceptSimulator(held), holdout=held, progress=False)
    assert third.calls == 0
    # score() on its own takes its baseline from the table.
    exp = Explanation.from_row(red.to_dict())
    result = score(exp, index, ConceptSimulator(held), holdout=held)
    assert "table" in result.notes[0] and result.baseline_explanation.neuron != RED


def test_explain_all_without_holdout_refuses_at_once_when_nothing_is_held_out(world, tmp_path):
    data, _, _ = world
    index = FakeIndex(data[:120], path=tmp_path)
    reads_all = CountingExplainer()  # top and random records: none left in the index to score on
    with pytest.raises(ValueError, match="holdout=.*include_random=False"):
        explain_all(index, neurons=[(0, RED)], explainer=reads_all, simulator=ConceptSimulator(data), progress=False)
    assert reads_all.calls == 0  # refused before any work
    top_only = CountingExplainer(include_random=False)  # the random records stay held out
    table = explain_all(index, neurons=[(0, RED)], explainer=top_only, simulator=ConceptSimulator(data), progress=False)
    assert top_only.calls == 1 and table["error"].isna().all() and table["score_random"].iloc[0] > 0.5


def test_explain_all_refuses_a_held_out_index_that_does_not_fit_and_rescores_when_it_changes(world, tmp_path):
    data, _, held = world
    index = FakeIndex(data[:120], path=tmp_path)
    sim = ConceptSimulator(data)
    with pytest.raises(ValueError, match="random_k=0"):  # top records all read, no random ones
        explain_all(FakeIndex(data[:120], random_k=0), explainer=CountingExplainer(include_random=False), simulator=sim, progress=False)
    with pytest.raises(ValueError, match="the index itself"):
        explain_all(index, explainer=CountingExplainer(), simulator=sim, holdout=index, progress=False)
    other_layers = FakeIndex(data[120:160])
    other_layers.layers = [1]
    with pytest.raises(ValueError, match="no layer 0"):
        explain_all(index, explainer=CountingExplainer(), simulator=sim, holdout=other_layers, progress=False)
    with pytest.raises(ValueError, match="n_neurons"):
        explain_all(index, explainer=CountingExplainer(), simulator=sim, holdout=FakeIndex(data[120:160], n_neurons=5), progress=False)
    # Scored on a held-out index, then without one: the explanation read every record, so it is explained
    # again with the explainer asked for now and scored on the random records it left alone.
    kw = dict(neurons=[(0, RED)], simulator=sim, progress=False)
    first = explain_all(index, explainer=CountingExplainer(), holdout=held, **kw)
    assert first["score_top"].notna().all() and first["held_out"].iloc[0].startswith("holdout")
    again = CountingExplainer(include_random=False)
    second = explain_all(index, explainer=again, **kw)
    assert again.calls == 1 and second["error"].isna().all() and second["held_out"].iloc[0] == "index"
    assert second["score_top"].isna().all() and second["score_random"].notna().all()
    same = CountingExplainer(include_random=False)
    third = explain_all(index, explainer=same, holdout=held, **kw)  # the held-out records changed: scored again
    assert same.calls == 0 and third["held_out"].iloc[0].startswith("holdout") and third["score_top"].notna().all()
    assert third["score"].iloc[0] != second["score"].iloc[0]


def test_explain_all_explains_again_when_the_explainer_settings_change(world, tmp_path):
    """A table made under other settings (a ConceptExplainer's max_terms, threshold, ...) is not reused as it is."""
    data, _, held = world
    index = FakeIndex(data[:120], path=tmp_path)
    kw = dict(neurons=[(0, RED_CIRCLE), (0, BLUE)], simulator=ConceptSimulator(held), holdout=held, progress=False)
    one_term = CountingExplainer(max_terms=1)
    first = explain_all(index, explainer=one_term, **kw)
    assert one_term.calls == 2 and json.loads(first["explainer_settings"].iloc[0])["max_terms"] == 1
    two_terms = CountingExplainer(max_terms=2)
    second = explain_all(index, explainer=two_terms, **kw)
    assert two_terms.calls == 2 and json.loads(second["explainer_settings"].iloc[0])["max_terms"] == 2
    fresh = explain_all(FakeIndex(data[:120], path=tmp_path / "fresh"), explainer=CountingExplainer(max_terms=2), **kw)
    pd.testing.assert_frame_equal(second.drop(columns="baseline_neuron"), fresh.drop(columns="baseline_neuron"))
    again = CountingExplainer(max_terms=2)
    explain_all(index, explainer=again, **kw)
    assert again.calls == 0
    # Equal settings give the same text in any process: sets sorted, numpy numbers as Python ones.
    from neuronwidgets.explain.batch import _settings_tag

    class Odd(CountingExplainer):
        settings = {"terms": np.int64(2), "words": {"red", "blue", "green"}, 3: (np.float32(0.5), None)}

    assert _settings_tag(Odd()) == '{"3": [0.5, null], "terms": 2, "words": ["blue", "green", "red"]}'
    assert _settings_tag(object()) is None
    # A table from before the column: its explanations are kept (nothing says how they were made).
    old = pd.read_parquet(tmp_path / "explanations.parquet").drop(columns="explainer_settings")
    old.to_parquet(tmp_path / "explanations.parquet", index=False)
    kept = CountingExplainer(max_terms=1)
    table = explain_all(index, explainer=kept, **kw)
    assert kept.calls == 0 and table["explainer_settings"].isna().all()


def test_samples_are_found_by_id_in_a_superset(world):
    data, _, held = world
    # The held-out index counts its samples from 0; the full dataset still finds them by id.
    rec = held.records(0, RED)[0]
    sim = ConceptSimulator(data)
    assert np.array_equal(sim.simulate("red", rec, "image"), ConceptSimulator(held).simulate("red", rec, "image"))
    exp = ConceptExplainer(data).explain(held, 0, RED)
    assert exp.concept == "red"
    from neuronwidgets.explain.data import sample_of

    with pytest.raises(ValueError, match="not in the dataset"):
        sample_of(data[:10], rec)  # its id is past the first ten samples


def test_hand_written_explanation_scores_beside_a_concept_baseline(world):
    _, index, held = world
    exp = Explanation(layer=0, neuron=RED, category="visual", text="red patches")
    result = score(exp, index, simulator=ConceptSimulator(held), holdout=held)
    assert result.score >= 0.9 and result.baseline <= 0.2
    assert result.baseline_explanation.explainer == "concept" and "ConceptExplainer" in result.notes[0]


def test_explain_all_keeps_finished_rows_when_a_worker_fails(world, tmp_path):
    """An unexpected error stops the batch at once (queued neurons are cancelled) and what finished is saved."""
    import threading
    import time

    data, index, _ = world
    calls = []
    lock = threading.Lock()

    class Flaky:
        name = "flaky"
        prompt_version = "v1"

        def explain(self, index, layer, neuron, category=None):
            with lock:
                calls.append(neuron)
            if neuron == 1:
                time.sleep(0.05)
                raise RuntimeError("the explainer broke")
            time.sleep(0.01 if neuron == 0 else 0.3)
            return Explanation(layer, neuron, category="visual", text=f"n{neuron}", explainer="flaky")

    file = tmp_path / "table.parquet"
    with pytest.raises(RuntimeError, match="the explainer broke"):
        explain_all(index, neurons=[(0, n) for n in range(6)], explainer=Flaky(), path=file, progress=False, workers=2)
    saved = pd.read_parquet(file)
    assert (0, 0) in set(zip(saved.layer, saved.neuron)) and saved.loc[saved.neuron == 0, "text"].iloc[0] == "n0"
    assert len(calls) < 6  # the neurons still queued were cancelled, not run


def test_explain_all_does_not_rescore_a_nan_score(world, tmp_path):
    data, index, held = world

    class Constant:
        """A simulator that predicts the same value everywhere: the score is NaN, a result all the same."""

        calls = 0

        def simulate(self, explanation, item, modality="image", **kw):
            Constant.calls += 1
            return np.zeros(item.values(modality).shape)

    file = tmp_path / "table.parquet"
    kw = dict(neurons=[(0, RED)], explainer=ConceptExplainer(data), simulator=Constant(), holdout=held, path=file,
              progress=False, n_top=3, n_random=3)
    first = explain_all(index, **kw)
    assert np.isnan(first["score"].iloc[0]) and first["simulator"].notna().all()
    n = Constant.calls
    explain_all(index, **kw)
    assert Constant.calls == n


def test_concept_search_skips_tokens_that_cannot_be_terms(world):
    """A token such as "f(x)" is left out of the formulas instead of breaking the search."""
    import dataclasses

    data, _, _ = world
    idx = FakeIndex(data[:40], top_k=12, random_k=6)
    for key, recs in idx._records.items():  # the word neuron's word becomes "f(x)"
        idx._records[key] = [dataclasses.replace(r, text_tokens=["f(x)" if w.strip() == "square" else w for w in r.text_tokens])
                             for r in recs]
    exp = ConceptExplainer().explain(idx, 0, WORD)
    assert "(" not in exp.text
    assert fm.is_term("square") and not fm.is_term("f(x") and not fm.is_term("a AND b")


def test_pearson_ignores_non_finite_pairs():
    from neuronwidgets.explain.scoring import pearson

    assert pearson([1, 2, 3, np.inf], [1, 2, 3, 0]) == pytest.approx(1.0)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
