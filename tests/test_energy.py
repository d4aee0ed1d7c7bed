"""Energy model: spec §11.2 T4 vectors, counting conventions, validation, table and JSON."""

import dataclasses
import json
import math

import pytest

from lava_spikedattn.energy import (
    E_AC_PJ,
    E_MAC_PJ,
    E_NEURON_STEP_PJ,
    LayerActivity,
    ann_energy_pj,
    energy_report,
    pj_to_mj,
    snn_energy_pj,
)


def layer(name="fc", **kw):
    args = {"macs": 1e6, "fan_in": 100, "spike_rate": 0.2, "active_steps": 10}
    args.update(kw)
    return LayerActivity(name, **args)


LAYERS = [
    layer("qkv", macs=3e6, fan_in=96, spike_rate=0.3, active_steps=12, ann_density=0.6),
    layer("fc1", macs=4e6, fan_in=96, spike_rate=0.25, active_steps=8, ann_density=0.5),
    layer(
        "fc2",
        macs=4e6,
        fan_in=384,
        spike_rate=0.1,
        active_steps=20,
        ann_density=0.3,
        included_in_official=False,
    ),
    layer("head", macs=1e5, fan_in=768, spike_rate=0.5, active_steps=1),
]


def test_constants():
    assert pytest.approx(4.6) == E_MAC_PJ
    assert pytest.approx(0.9) == E_AC_PJ
    assert pytest.approx(16.4) == E_NEURON_STEP_PJ


def test_t4_spikesim_energy():
    assert snn_energy_pj(layer()) == pytest.approx(2_866_875, rel=1e-12)


def test_t4_ann_energy():
    assert ann_energy_pj(layer(ann_density=1.0)) == pytest.approx(14_650_000, rel=1e-12)


def test_t4_synop_ann_energy_mj():
    # 4.369 G MACs × 4.6 pJ = 20.097 mJ (the log's 20.098 comes from the unrounded MAC count).
    assert round(pj_to_mj(4.369e9 * E_MAC_PJ), 3) == 20.097


def test_formula_terms_scale():
    base = snn_energy_pj(layer())
    # r and p enter linearly: doubling both doubles the energy.
    assert snn_energy_pj(layer(spike_rate=0.4, active_steps=20)) == pytest.approx(
        2 * base
    )
    assert snn_energy_pj(layer(spike_rate=0, active_steps=0)) == 0
    # With no input activity only the per-neuron memory term of the ANN remains: E_mem·N.
    assert ann_energy_pj(layer(ann_density=0)) == pytest.approx(5.0 * 1e4)


def test_official_vs_complete_differ_by_excluded_layers():
    complete = energy_report(LAYERS, counting="complete")
    official = energy_report(LAYERS, counting="official")
    assert [x.activity.name for x in complete.layers] == ["qkv", "fc1", "fc2", "head"]
    assert [x.activity.name for x in official.layers] == ["qkv", "fc1", "head"]
    excluded = [x for x in LAYERS if not x.included_in_official]
    assert complete.ann_total_pj - official.ann_total_pj == pytest.approx(
        sum(ann_energy_pj(x) for x in excluded), rel=1e-12
    )
    assert complete.snn_total_pj - official.snn_total_pj == pytest.approx(
        sum(snn_energy_pj(x) for x in excluded), rel=1e-12
    )


def test_report_totals_ratio_saving():
    report = energy_report(LAYERS)
    assert report.counting == "complete"
    assert report.ann_total_pj == pytest.approx(sum(ann_energy_pj(x) for x in LAYERS))
    assert report.snn_total_pj == pytest.approx(sum(snn_energy_pj(x) for x in LAYERS))
    assert report.ratio == pytest.approx(report.snn_total_pj / report.ann_total_pj)
    assert report.saving == pytest.approx(1 - report.ratio)
    for entry in report.layers:
        assert entry.ann_pj == ann_energy_pj(entry.activity)
        assert entry.snn_pj == snn_energy_pj(entry.activity)


def test_report_accepts_generator():
    assert (
        energy_report(x for x in LAYERS).ann_total_pj
        == energy_report(LAYERS).ann_total_pj
    )


@pytest.mark.parametrize("counting", ["", "Official", "all", None])
def test_invalid_counting(counting):
    with pytest.raises(ValueError, match="counting"):
        energy_report(LAYERS, counting=counting)


def test_report_rejects_non_layer_and_empty():
    with pytest.raises(ValueError, match="LayerActivity"):
        energy_report([LAYERS[0], {"macs": 1}])
    with pytest.raises(ValueError, match="ratio"):
        energy_report([])
    with pytest.raises(ValueError, match="ratio"):
        energy_report([LAYERS[2]], counting="official")


@pytest.mark.parametrize(
    "field,value",
    [
        ("macs", -1.0),
        ("macs", math.nan),
        ("fan_in", 0.0),
        ("fan_in", -3.0),
        ("fan_in", math.inf),
        ("spike_rate", -0.1),
        ("spike_rate", math.inf),
        ("active_steps", -1.0),
        ("active_steps", math.nan),
        ("ann_density", -0.5),
        ("ann_density", 1.5),
        ("macs", "1e6"),
        ("spike_rate", True),
        ("included_in_official", 1),
        ("name", ""),
    ],
)
def test_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(layer(), **{field: value})


def test_spike_rate_above_one_allowed_and_frozen():
    x = layer(spike_rate=2.5, macs=10, fan_in=4, active_steps=0)
    assert isinstance(x.macs, float) and x.spike_rate == 2.5
    assert x.neurons == 2.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        x.macs = 1.0


def test_table_contents():
    report = energy_report(LAYERS, counting="official")
    text = report.table()
    assert "official" in text
    for name in ("qkv", "fc1", "head", "total"):
        assert name in text
    assert "fc2" not in text
    assert f"{pj_to_mj(report.ann_total_pj):.6f}" in text
    assert f"{pj_to_mj(report.snn_total_pj):.6f}" in text
    assert f"ratio {report.ratio:.4f}" in text
    assert f"saving {100 * report.saving:.1f} %" in text


def test_json_contents():
    report = energy_report(LAYERS)
    data = json.loads(json.dumps(report.to_json()))
    assert data["counting"] == "complete"
    assert data["constants_pj"] == {"add": 0.9, "mul": 3.7, "mem": 5.0}
    assert [x["name"] for x in data["layers"]] == ["qkv", "fc1", "fc2", "head"]
    assert data["layers"][2]["included_in_official"] is False
    assert data["layers"][0]["ann_pj"] == report.layers[0].ann_pj
    assert data["ann_total_pj"] == report.ann_total_pj
    assert data["snn_total_mj"] == pytest.approx(report.snn_total_pj / 1e9)
    assert data["ratio"] == report.ratio
    assert data["saving"] == report.saving
