import json
import math

import pytest
import yaml
from models_fixtures import tiny_qwen_dir  # noqa: F401

from models import profile_vlm
from models.profile_vlm import RESULT_KEYS, latency_summary, node_params, parse_image_size, recommend

NODE_YAML = profile_vlm.default_node_params_file()


@pytest.mark.parametrize(
    ("p95_ms", "margin", "period_s", "reuse"),
    [
        (1484.0, 0.10, 1.7, 17),  # DESIGN.md: 5 views on the original hardware
        (300.0, 0.0, 0.3, 3),  # single view, no margin: exactly 3 action periods
        (300.0, 0.10, 0.4, 4),  # 330 ms rounds up to the next 100 ms
        (1000.0 / 1.1, 0.10, 1.0, 10),  # lands exactly on a multiple: must not round up a step
        (1000.01 / 1.1, 0.10, 1.1, 11),  # just over a multiple: next step
        (5.0, 0.10, 0.1, 1),  # faster than the action period: one VLM update per tick at most
        (0.0, 0.10, 0.1, 1),
        (99.0, 0.0, 0.1, 1),
        (101.0, 0.0, 0.2, 2),
    ],
)
def test_rule_rounds_p95_plus_margin_up_to_whole_action_periods(p95_ms, margin, period_s, reuse):
    rec = recommend(p95_ms, action_period_s=0.1, margin=margin)
    assert rec.vlm_period_s == pytest.approx(period_s)
    assert rec.vlm_reuse_count == reuse
    assert rec.vlm_update_hz == pytest.approx(1.0 / period_s)
    assert rec.vl_max_age_s == pytest.approx(2 * period_s)
    assert rec.sensor_window == 65


def test_rule_follows_action_period_and_sensor_rate():
    rec = recommend(1484.0, action_period_s=0.05, margin=0.10, sensor_rate_hz=650.0)
    assert rec.vlm_reuse_count == 33  # 1632.4 ms -> 33 x 50 ms
    assert rec.vlm_period_s == pytest.approx(1.65)
    assert rec.sensor_window == 32  # 32.5 samples rounds to even
    assert recommend(10.0, sensor_rate_hz=1000.0).sensor_window == 100


@pytest.mark.parametrize("bad", [{"p95_ms": -1.0}, {"p95_ms": math.nan}, {"p95_ms": 10.0, "margin": -0.1}])
def test_rule_rejects_bad_inputs(bad):
    with pytest.raises(ValueError):
        recommend(**bad)


def test_latency_summary_on_synthetic_timings():
    samples = [i / 1000.0 for i in range(1, 101)]  # 1..100 ms
    summary = latency_summary(samples)
    assert summary["latency_mean_ms"] == pytest.approx(50.5)
    assert summary["latency_p50_ms"] == pytest.approx(50.5)
    assert summary["latency_p95_ms"] == pytest.approx(95.05)
    assert summary["latency_p99_ms"] == pytest.approx(99.01)
    assert summary["achievable_hz"] == pytest.approx(1000.0 / 50.5)
    with pytest.raises(ValueError):
        latency_summary([])


def test_image_size_parsing():
    assert parse_image_size("640x360") == (640, 360)
    with pytest.raises(Exception, match="WIDTHxHEIGHT"):
        parse_image_size("640")


@pytest.fixture(scope="module")
def cli_run(tiny_qwen_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("profile")
    argv = [
        "--config", "tiny", "--model-path", str(tiny_qwen_dir), "--num-samples", "3", "--warmup", "1",
        "--views", "2", "--image-size", "112x56", "--json",
        "--save-results", str(out / "result.json"), "--write-config", str(out / "params.yaml"),
    ]  # fmt: skip
    return argv, out


def test_cli_prints_exactly_the_json_with_a_stable_schema(cli_run, capsys):
    argv, out = cli_run
    assert profile_vlm.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout must be the JSON and nothing else
    assert tuple(printed) == RESULT_KEYS
    assert printed == json.loads((out / "result.json").read_text())
    assert printed["config"]["views"] == 2 and printed["config"]["image_size"] == [112, 56]
    assert printed["tokens_per_view"] == 8  # 112x56 -> 8x4 patches -> 4x2 merged tokens
    assert printed["num_tokens"] == 16
    assert printed["num_samples"] == 3
    rec = recommend(printed["latency_p95_ms"], printed["action_period_s"], printed["margin"], 650.0)
    assert printed["recommended_vlm_period_s"] == pytest.approx(rec.vlm_period_s)
    assert printed["recommended_vlm_reuse_count"] == rec.vlm_reuse_count
    assert printed["recommended_sensor_window"] == 65
    assert printed["latency_p50_ms"] <= printed["latency_p95_ms"] <= printed["latency_max_ms"]
    assert printed["peak_memory_mb"] > 0


def test_written_params_use_the_nodes_names_and_follow_the_rule(cli_run):
    _, out = cli_run
    result = json.loads((out / "result.json").read_text())
    written = yaml.safe_load((out / "params.yaml").read_text())
    base = yaml.safe_load(NODE_YAML.read_text())
    changed = {
        ("vlm_node", "vlm_period_s"): result["recommended_vlm_period_s"],
        ("action_expert_node", "action_period_s"): result["action_period_s"],
        ("action_expert_node", "vl_max_age_s"): result["recommended_vl_max_age_s"],
    }
    for (node, name), value in changed.items():
        assert name in base[node]["ros__parameters"], f"{node}.{name} is not a parameter in {NODE_YAML}"
        assert written[node]["ros__parameters"][name] == pytest.approx(value)
    period = written["vlm_node"]["ros__parameters"]["vlm_period_s"]
    assert period / result["action_period_s"] == pytest.approx(result["recommended_vlm_reuse_count"])
    # Everything else is the base file unchanged, so the file is a drop-in --params-file.
    for node, section in base.items():
        for name, value in section["ros__parameters"].items():
            if (node, name) not in changed:
                assert written[node]["ros__parameters"][name] == value


def test_written_params_pass_the_nodes_parameter_checks(cli_run):
    _, out = cli_run
    written = yaml.safe_load((out / "params.yaml").read_text())
    try:
        from insertion_vla_ros.nodes import action_expert_node, vlm_node
    except ImportError as error:  # pragma: no cover - the dev environment has the ROS wheels
        pytest.skip(f"node modules need ROS: {error}")
    for module in (vlm_node, action_expert_node):
        specs = {spec.name: spec for spec in module.PARAMETERS}
        for name, value in written[module.NODE_NAME]["ros__parameters"].items():
            assert name in specs, f"{module.NODE_NAME} does not declare {name}"
            specs[name].check(value)
            if specs[name].minimum is not None and isinstance(value, float):
                assert specs[name].minimum <= value <= specs[name].maximum


def test_node_params_adds_missing_sections():
    from models.fast_path import FastPathConfig

    result = {"recommended_vlm_period_s": 0.4, "action_period_s": 0.1, "recommended_vl_max_age_s": 0.8}
    result["config"] = {"fast_path": FastPathConfig().to_dict()}
    params = node_params(result, {})
    assert params["vlm_node"]["ros__parameters"]["vlm_period_s"] == 0.4
    assert params["action_expert_node"]["ros__parameters"]["vl_max_age_s"] == 0.8


def test_fast_path_becomes_node_parameters_and_layout_steps_are_refused():
    from models.fast_path import FastPathConfig
    from models.profile_vlm import fast_path_node_params

    fast = FastPathConfig(vision_attention="batched", trim_tail=True, pad_to_multiple=64, dtype="bfloat16")
    params = fast_path_node_params(fast.to_dict())
    assert params["vision_attention"] == "batched" and params["static_shapes"] is True
    assert params["vlm_dtype"] == "bfloat16" and params["cuda_streams"] is False
    with pytest.raises(ValueError, match="feature layout"):
        fast_path_node_params(FastPathConfig(max_pixels=1000).to_dict())
    with pytest.raises(ValueError, match="static_shapes"):
        fast_path_node_params(FastPathConfig(pad_to_multiple=32).to_dict())


def test_search_writes_the_fastest_feature_preserving_node_fast_path(tiny_qwen_dir, tmp_path, capsys):  # noqa: F811
    argv = [
        "--config", "tiny", "--model-path", str(tiny_qwen_dir), "--num-samples", "2", "--warmup", "1",
        "--views", "2", "--image-size", "112x56", "--search-fast-path", "--json",
        "--write-config", str(tmp_path / "params.yaml"),
    ]  # fmt: skip
    assert profile_vlm.main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "fastest node fast path:" in captured.err
    timed = [line for line in captured.err.splitlines() if line.startswith("fast path ")]
    assert len(timed) == len(profile_vlm.node_fast_path_candidates("cpu"))
    vlm = yaml.safe_load((tmp_path / "params.yaml").read_text())["vlm_node"]["ros__parameters"]
    fast = printed["config"]["fast_path"]
    assert vlm["vision_attention"] == fast["vision_attention"]
    assert vlm["static_shapes"] == (fast["pad_to_multiple"] == 64)
    assert vlm["cuda_streams"] is False  # CPU: the CUDA-only candidates are not tried
