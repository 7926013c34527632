"""The method chooser sets the specification's decision tree beside the kit's measurement."""
import json
import math

from vla_rl_lib.chooser import MEASURED_FILE, explain, measured_note, measured_ranking
from vla_rl_lib.comparison import COMPARISON_DATASETS, METHODS, method_hparams


def _rows(dataset, scores, key):
    rows = []
    for method, values in scores.items():
        for seed, v in enumerate(values):
            rows.append({"method": method, "dataset": dataset, "seed": seed, "steps": 10,
                         "mean_reward": v if key == "mean_reward" else -50.0,
                         "success_rate": v if key == "success_rate" else math.nan})
    return rows


def test_ranking_and_note_from_a_measurement(tmp_path):
    path = tmp_path / "measured.json"
    rows = (_rows(COMPARISON_DATASETS["stitching"], {"dt": [0.0, 0.0], "iql": [1.0, 0.8], "bc": [0.0, 0.1]},
                  "success_rate")
            + _rows(COMPARISON_DATASETS["expert"], {"iql": [-150.0, -170.0], "bc": [-130.0, -160.0]}, "mean_reward"))
    path.write_text(json.dumps({"rows": rows}))
    ranking = measured_ranking("diverse", path)
    assert [m for m, _, _ in ranking] == ["iql", "bc", "dt"] and abs(ranking[0][1] - 0.9) < 1e-9
    note = measured_note("diverse", path)
    assert "maze-stitch-v0" in note and "dt disagrees" in note  # the tree says DT for diverse data
    # bc -145 +- 15 is best, iql -160 +- 10: level within the spread over seeds
    assert "iql agrees within the spread" in measured_note("expert", path)
    assert measured_ranking("mixed", path) == [] and measured_note("mixed", path) is None


def test_explain_carries_the_shipped_measurement():
    rec = explain(False, dataset_quality="diverse")
    assert rec.method == "dt"
    if MEASURED_FILE.is_file():
        assert rec.measured and "maze-stitch-v0" in rec.measured
    assert explain(True, goal="simple").measured is None


def test_method_settings_per_dataset_family():
    assert set(METHODS) == {"bc", "%bc", "iql", "cql", "td3_bc", "dt"}
    assert method_hparams("iql", "maze-stitch-v0") == {"tau": 0.05, "expectile": 0.9, "temperature": 10.0}
    assert method_hparams("%bc", "pendulum-expert-v0") == {"top_fraction": 0.1}
    assert method_hparams("iql", "maze-stitch-v0", temperature=1.0)["temperature"] == 1.0
