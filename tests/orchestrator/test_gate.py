from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from orchestrator.gate import (
    GATE_FORMAT_VERSION,
    Gate,
    GateConfig,
    GateFileError,
    correct_option_probs,
    make_features,
)
from orchestrator.gate_training import GateObjective, train_gate
from testbed.optimality import fused_accuracy, optimality_report

Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def realizable_posterior(n_prompts: int, seed: int, n_experts: int = 4, dim: int = 5) -> Data:
    """f_n(y|x) = softmax(x W*)_n: the expert posterior is exactly a linear softmax."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_prompts, dim))
    planted = np.random.default_rng(99).normal(size=(dim, n_experts)) * 1.5
    correct = softmax(features @ planted, axis=1)
    option_probs = np.stack([correct, 1.0 - correct], axis=2)
    return features, option_probs, np.zeros(n_prompts, dtype=np.int64)


def planted_rule(n_prompts: int, seed: int) -> Data:
    """Expert 0 is right when feature A is on, expert 1 when feature B is on, expert 2 never."""
    rng = np.random.default_rng(seed)
    feature_b = rng.random(n_prompts) < 0.5
    features = np.column_stack([~feature_b, feature_b, rng.normal(size=(n_prompts, 3))]).astype(
        np.float64
    )
    labels = rng.integers(0, 4, size=n_prompts)
    wrong = (labels + 1 + rng.integers(0, 3, size=n_prompts)) % 4
    right_expert = feature_b.astype(np.int64)
    option_probs = np.zeros((n_prompts, 3, 4))
    rows = np.arange(n_prompts)
    for expert in range(3):
        answer = np.where(right_expert == expert, labels, wrong)
        option_probs[rows, expert, answer] = 0.9
        option_probs[rows, expert, (answer + 2) % 4] = 0.1
    return features, option_probs, labels


def xor_rule(n_prompts: int, seed: int) -> Data:
    """Expert 0 is right when sign(x0) == sign(x1), expert 1 otherwise: not linearly routable."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_prompts, 2))
    same = (features[:, 0] > 0) == (features[:, 1] > 0)
    correct = np.where(same[:, None], [0.95, 0.05], [0.05, 0.95])
    option_probs = np.stack([correct, 1.0 - correct], axis=2)
    return features, option_probs, np.zeros(n_prompts, dtype=np.int64)


@pytest.fixture(scope="module")
def linear_gate() -> Gate:
    features, option_probs, labels = planted_rule(300, seed=0)
    return train_gate(
        features,
        option_probs,
        labels,
        ["a-expert", "b-expert", "never"],
        encoder_name="hashing",
        encoder_dim=3,
        categories=["cat-a", "cat-b"],
    )


@pytest.mark.parametrize("variant", ["posterior", "mixture"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_objective_gradient_matches_finite_differences(variant: str, head: str) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(7, 3))
    option_probs = rng.dirichlet(np.ones(4), size=(7, 3))
    option_probs[0, 1] = [0.0, 0.0, 1.0, 0.0]  # a hard answer: exercises the probability floor
    labels = rng.integers(0, 4, size=7)
    config = GateConfig(
        variant=variant,  # type: ignore[arg-type]
        head=head,  # type: ignore[arg-type]
        hidden_units=4,
        l2=0.1,
        target_sharpness=1.7,
        probability_floor=1e-3,
    )
    objective = GateObjective(features, option_probs, labels, config)
    theta = rng.normal(size=objective.n_params)
    _, grad = objective(theta)
    step = 1e-6
    numeric = np.array(
        [
            (objective(theta + step * e)[0] - objective(theta - step * e)[0]) / (2 * step)
            for e in np.eye(objective.n_params)
        ]
    )
    assert np.allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_training_recovers_planted_rule() -> None:
    train = planted_rule(300, seed=0)
    test = planted_rule(200, seed=1)
    gate = train_gate(*train, ["a", "b", "never"])
    weights = gate.weights(test[0], top_k=1)
    chosen = np.argmax(weights, axis=1)
    assert np.mean(chosen == test[0][:, 1].astype(np.int64)) == 1.0
    # The oracle (best single expert per prompt) is right on every prompt; so is the top-1 gate.
    assert fused_accuracy(gate, *test, top_k=1) == 1.0
    # Restricted to S = {b, never}, the weights are a distribution over S only.
    restricted = gate.weights(test[0], np.array([False, True, True]))
    assert np.allclose(restricted.sum(axis=1), 1.0)
    assert np.all(restricted[:, 0] == 0.0)


def test_restriction_is_softmax_over_subset_logits(linear_gate: Gate) -> None:
    features = planted_rule(20, seed=5)[0]
    mask = np.array([True, False, True])
    logits = linear_gate.logits(features)
    expected = np.zeros_like(logits)
    expected[:, mask] = softmax(logits[:, mask], axis=1)
    assert np.allclose(linear_gate.weights(features, mask), expected)
    full = softmax(logits, axis=1)
    conditioned = full * mask / (full * mask).sum(axis=1, keepdims=True)
    assert np.allclose(linear_gate.weights(features, mask), conditioned)


def test_top_k_keeps_largest_and_renormalises(linear_gate: Gate) -> None:
    features = planted_rule(30, seed=6)[0]
    full = linear_gate.weights(features)
    top2 = linear_gate.weights(features, None, top_k=2)
    assert np.all((top2 > 0).sum(axis=1) == 2)
    assert np.allclose(top2.sum(axis=1), 1.0)
    for row_full, row_top in zip(full, top2, strict=True):
        kept = np.flatnonzero(row_top)
        assert set(kept) == set(np.argsort(-row_full)[:2])
        assert np.allclose(row_top[kept], row_full[kept] / row_full[kept].sum())
    assert np.allclose(linear_gate.weights(features, None, top_k=10), full)


def test_top_k_ties_go_to_lower_expert_index() -> None:
    gate = Gate.uniform(["e0", "e1", "e2", "e3"])
    weights = gate.weights(np.zeros((2, 7)), np.array([False, True, True, True]), top_k=2)
    assert np.allclose(weights, [[0.0, 0.5, 0.5, 0.0]] * 2)


def test_weights_reject_bad_arguments(linear_gate: Gate) -> None:
    features = planted_rule(3, seed=7)[0]
    with pytest.raises(ValueError, match="no expert"):
        linear_gate.weights(features, np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="top_k"):
        linear_gate.weights(features, None, top_k=0)
    with pytest.raises(ValueError, match="shape"):
        linear_gate.weights(features, np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="width"):
        linear_gate.logits(features[:, :3])


def test_fuse_is_weighted_mixture() -> None:
    option_probs = np.array([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.6]]])
    fused = Gate.uniform(["a", "b", "c"]).fuse(np.array([[0.5, 0.5, 0.0]]), option_probs)
    assert np.allclose(fused, [[0.5, 0.25, 0.25]])


def test_uniform_gate_gives_equal_weights() -> None:
    gate = Gate.uniform(["a", "b", "c"])
    assert np.array_equal(gate.logits(np.ones((4, 9))), np.zeros((4, 3)))
    assert np.allclose(gate.weights(np.ones((1, 1)), gate.mask(["a", "c"])), [[0.5, 0.0, 0.5]])
    with pytest.raises(KeyError, match="zzz"):
        gate.mask(["zzz"])


def test_make_features_appends_category_one_hot() -> None:
    x = make_features(np.ones((3, 2)), ["b", None, "unknown"], ["a", "b"])
    assert np.array_equal(x, [[1, 1, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0]])


def test_save_load_round_trip(linear_gate: Gate, tmp_path: Path) -> None:
    path = linear_gate.save(tmp_path / "gate.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["gate.npz"]  # no temporary left behind
    loaded = Gate.load(path)
    assert loaded.metadata == linear_gate.metadata
    features = planted_rule(10, seed=3)[0]
    assert np.array_equal(loaded.logits(features), linear_gate.logits(features))
    meta = loaded.metadata
    assert meta.experts == ("a-expert", "b-expert", "never")
    assert (meta.encoder_name, meta.encoder_dim, meta.categories) == (
        "hashing",
        3,
        ("cat-a", "cat-b"),
    )
    assert (meta.variant, meta.head, meta.train_size) == ("posterior", "linear", 300)
    assert meta.hyperparameters["l2"] == GateConfig().l2
    assert meta.training_loss is not None and meta.created_utc


def test_save_load_round_trip_mlp_and_uniform(tmp_path: Path) -> None:
    features, option_probs, labels = xor_rule(80, seed=0)
    mlp = train_gate(
        features, option_probs, labels, ["x", "y"], config=GateConfig(head="mlp", max_iter=50)
    )
    loaded = Gate.load(mlp.save(tmp_path / "mlp.npz"))
    assert np.array_equal(loaded.logits(features), mlp.logits(features))
    uniform = Gate.load(Gate.uniform(["x", "y"]).save(tmp_path / "uniform.npz"))
    assert uniform.metadata.head == "uniform"


def _rewrite(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _contents(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def test_load_errors_name_file_and_problem(linear_gate: Gate, tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    with pytest.raises(GateFileError, match=r"missing\.npz: gate file not found"):
        Gate.load(missing)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(GateFileError, match=r"garbage\.npz: not a gate file"):
        Gate.load(garbage)

    good = linear_gate.save(tmp_path / "good.npz")
    contents = _contents(good)
    meta = json.loads(str(contents["metadata_json"]))

    no_meta = tmp_path / "no_meta.npz"
    _rewrite(no_meta, {k: v for k, v in contents.items() if k != "metadata_json"})
    with pytest.raises(GateFileError, match=r"no_meta\.npz: not a gate file"):
        Gate.load(no_meta)

    old = tmp_path / "old.npz"
    _rewrite(
        old, {**contents, "metadata_json": np.array(json.dumps({**meta, "format_version": 0}))}
    )
    with pytest.raises(
        GateFileError, match=rf"old\.npz: gate format version 0.*{GATE_FORMAT_VERSION}"
    ):
        Gate.load(old)

    mismatch = tmp_path / "mismatch.npz"
    _rewrite(mismatch, {**contents, "param_w": np.zeros((4, 3))})
    with pytest.raises(GateFileError, match=r"mismatch\.npz: parameter 'w' has shape \(4, 3\)"):
        Gate.load(mismatch)

    extra_expert = tmp_path / "extra_expert.npz"
    meta4 = {**meta, "experts": [*meta["experts"], "fourth"]}
    _rewrite(extra_expert, {**contents, "metadata_json": np.array(json.dumps(meta4))})
    with pytest.raises(GateFileError, match=r"extra_expert\.npz: parameter 'w' has shape"):
        Gate.load(extra_expert)

    no_field = tmp_path / "no_field.npz"
    meta_nofield = {k: v for k, v in meta.items() if k != "experts"}
    _rewrite(no_field, {**contents, "metadata_json": np.array(json.dumps(meta_nofield))})
    with pytest.raises(GateFileError, match=r"no_field\.npz: metadata lacks field 'experts'"):
        Gate.load(no_field)

    for path in (missing, garbage, no_meta, old, mismatch):
        with pytest.raises(GateFileError) as info:
            Gate.load(path)
        assert "\n" not in str(info.value)
    assert zipfile.is_zipfile(good)


def test_optimality_holds_for_realizable_posterior() -> None:
    train = realizable_posterior(400, seed=0)
    heldout = realizable_posterior(200, seed=1)
    subsets = [s for r in (1, 2, 3) for s in itertools.combinations(range(4), r)]
    report = optimality_report(
        *train, subsets, config=GateConfig(l2=1e-8), heldout=heldout, top_k=1
    )
    assert len(report.rows) == 2 * len(subsets)
    # Measured: train max gap ≈ 7e-6 (L-BFGS tolerance); held-out ≈ 1e-3 (finite sample).
    assert abs(report.max_gap("train")) < 1e-4
    assert abs(report.mean_gap("train")) < 1e-5
    assert report.max_gap("heldout") < 1e-2
    for row in report.rows:
        assert abs(row.restricted_accuracy - row.retrained_accuracy) <= 0.02
    assert "train: mean gap" in report.to_text()


def test_optimality_gap_is_visible_when_gate_cannot_represent_posterior() -> None:
    # Experts 0 and 1 split the plane by XOR; expert 2 gives the right option 0.4 everywhere.
    # On {0, 2} the posterior target is an XOR pattern, which a linear gate cannot represent,
    # and the full-set optimum restricted to {0, 2} is not the best linear {0, 2} gate.
    features, two_probs, labels = xor_rule(400, seed=0)
    option_probs = np.concatenate([two_probs, np.tile([0.4, 0.6], (400, 1, 1))], axis=1)
    report = optimality_report(
        features, option_probs, labels, [(0, 1), (0, 2)], config=GateConfig(l2=1e-6), top_k=1
    )
    gaps = {row.subset: row.gap for row in report.rows}
    assert abs(gaps[(0, 1)]) < 1e-4  # symmetric XOR: both gates are uniform on {0, 1}
    assert gaps[(0, 2)] > 1e-2  # measured 4.5e-2 (docs/gate.md)


def test_correct_option_probs_picks_label_column() -> None:
    probs = np.array([[[0.1, 0.9], [0.7, 0.3]]])
    assert np.allclose(correct_option_probs(probs, np.array([1])), [[0.9, 0.3]])
    with pytest.raises(ValueError, match="labels"):
        correct_option_probs(probs, np.array([2]))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="variant"):
        GateConfig(variant="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_sharpness"):
        GateConfig(target_sharpness=0.0)
