"""Each fast-path step against the plain path on the tiny model, with the tolerance each step is held to.

Tolerances (tiny Qwen2.5-VL, float32 reference, features of unit-scale RMS):
- exact steps (trim tail, padding, SDPA vs eager, compile): max |diff| <= 1e-4;
- bfloat16 weights and activations: per-token cosine >= 0.99, relative error <= 5e-2;
- int8 weights (torchao or torch.ao): per-token cosine >= 0.98, relative error <= 0.1.
"""

import copy
import dataclasses

import pytest
import torch
from models_fixtures import make_policy, sensor, tiny_config, tiny_qwen_dir, views  # noqa: F401

from models.config import ConfigError
from models.fast_path import (
    FastPathConfig,
    FastVLM,
    feature_difference,
    load_extractor,
    pad_to_multiple,
    prepare_model,
    trim_after_last_image,
)
from models.quantize import QuantizationError, quantize_vlm, resolve_backend, torchao_available
from models.vlm import VLFeatureExtractor

EXACT_ATOL = 1e-4
INSTRUCTION = "Insert the needle into the target."
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def extractor(tiny_qwen_dir):  # noqa: F811
    return VLFeatureExtractor.from_pretrained(tiny_config(tiny_qwen_dir).vlm)


@pytest.fixture(scope="module")
def images():
    return views(seed=3)


@pytest.fixture(scope="module")
def reference(extractor, images):
    features, meta = extractor.extract(images, INSTRUCTION)
    return features


def model_copy(extractor) -> VLFeatureExtractor:
    return VLFeatureExtractor(
        copy.deepcopy(extractor.hf_model),
        extractor.config,
        processor=extractor.processor,
        tokenizer=extractor.tokenizer,
        image_processor=extractor.image_processor,
    )


def test_plain_fast_path_is_the_plain_path(extractor, images, reference):
    features, meta = FastVLM(extractor).extract(images, INSTRUCTION)
    assert torch.equal(features, reference)
    assert meta.tokens_per_view == [16] * 5


def test_trimming_the_prompt_tail_keeps_the_vision_features(extractor, images, reference):
    plain = FastVLM(extractor)
    trimmed = FastVLM(extractor, FastPathConfig(trim_tail=True))
    features, _ = trimmed.extract(images, INSTRUCTION)
    plain.extract(images, INSTRUCTION)
    assert trimmed.last_sequence_length < plain.last_sequence_length
    assert (features - reference).abs().max() <= EXACT_ATOL


def test_trim_never_cuts_all_token_selection(extractor, images):
    full = FastVLM(extractor, FastPathConfig(token_selection="all"))
    trimmed = FastVLM(extractor, FastPathConfig(token_selection="all", trim_tail=True))
    a, _ = full.extract(images, INSTRUCTION)
    b, _ = trimmed.extract(images, INSTRUCTION)
    assert a.shape == b.shape and (a - b).abs().max() <= EXACT_ATOL


@pytest.mark.parametrize("multiple", [64, 256])
def test_padding_to_static_shapes_keeps_the_features(extractor, images, reference, multiple):
    padded = FastVLM(extractor, FastPathConfig(trim_tail=True, pad_to_multiple=multiple))
    features, _ = padded.extract(images, INSTRUCTION)
    assert padded.last_sequence_length % multiple == 0
    assert (features - reference).abs().max() <= EXACT_ATOL


def test_trim_and_pad_helpers_on_token_tensors():
    ids = torch.tensor([[5, 9, 9, 6, 7, 8]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == 9).long(),
    }
    trimmed = trim_after_last_image(inputs, image_token_id=9)
    assert trimmed["input_ids"].tolist() == [[5, 9, 9]]
    padded = pad_to_multiple(trimmed, 4, pad_token_id=0)
    assert padded["input_ids"].tolist() == [[5, 9, 9, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0]]
    assert pad_to_multiple(padded, 4, 0) is padded


def test_eager_attention_matches_sdpa(extractor, images, reference):
    ex = model_copy(extractor)
    done = prepare_model(ex.hf_model, FastPathConfig(attn_implementation="eager"), "cpu")
    assert done["attn_implementation"] == "eager"
    features, _ = FastVLM(ex).extract(images, INSTRUCTION)
    assert (features - reference).abs().max() <= EXACT_ATOL


def test_bfloat16_is_close_to_float32(extractor, images, reference):
    ex = model_copy(extractor)
    prepare_model(ex.hf_model, FastPathConfig(dtype="bfloat16"), "cpu")
    assert next(ex.hf_model.parameters()).dtype == torch.bfloat16
    features, _ = FastVLM(ex, FastPathConfig(dtype="bfloat16")).extract(images, INSTRUCTION)
    diff = feature_difference(reference, features.float())
    assert diff["cosine_min"] >= 0.99
    assert diff["relative_error"] <= 5e-2


def test_bounded_pixels_cut_tokens_per_view(extractor, images):
    fast = FastVLM(extractor, FastPathConfig(min_pixels=56 * 56, max_pixels=56 * 56))
    features, meta = fast.extract(images, INSTRUCTION)
    assert meta.tokens_per_view == [4] * 5
    assert features.shape == (20, extractor.config.hidden_size)


def test_pooled_selection_keeps_only_the_pooled_tokens(extractor, images):
    fast = FastVLM(extractor, FastPathConfig(token_selection="pooled", trim_tail=True))
    features, meta = fast.extract(images, INSTRUCTION)
    grid = extractor.config.pooled_grid
    assert features.shape == (5 * grid**2, extractor.config.hidden_size)
    plain_pooled, _ = FastVLM(extractor, FastPathConfig(token_selection="pooled")).extract(
        images, INSTRUCTION
    )
    assert (features - plain_pooled).abs().max() <= EXACT_ATOL


def test_int8_dynamic_torch_ao_is_close_to_float(extractor, images, reference):
    ex = model_copy(extractor)
    assert quantize_vlm(ex.hf_model, "int8_dynamic", backend="torch.ao") == "torch.ao"
    assert "Linear" in type(ex.hf_model.model.language_model.layers[0].mlp.up_proj).__name__
    assert type(ex.hf_model.model.language_model.layers[0].mlp.up_proj) is not torch.nn.Linear
    features, _ = FastVLM(ex).extract(images, INSTRUCTION)
    diff = feature_difference(reference, features)
    assert diff["cosine_min"] >= 0.98
    assert 0 < diff["relative_error"] <= 0.1  # quantised, so not bit-identical


@pytest.mark.skipif(not torchao_available(), reason="torchao is not installed")
@pytest.mark.parametrize("method", ["int8_weight_only", "int8_dynamic"])
def test_torchao_int8_is_close_to_float(extractor, images, reference, method):
    ex = model_copy(extractor)
    assert quantize_vlm(ex.hf_model, method, backend="torchao") == "torchao"
    features, _ = FastVLM(ex).extract(images, INSTRUCTION)
    diff = feature_difference(reference, features)
    assert diff["cosine_min"] >= 0.98
    assert diff["relative_error"] <= 0.1


def test_quantization_backend_choice():
    assert resolve_backend("none") == "none"
    with pytest.raises(ValueError):
        resolve_backend("int3")
    with pytest.raises(QuantizationError, match="needs torchao"):
        resolve_backend("int4_weight_only", backend="torch.ao")
    assert resolve_backend("int8_dynamic", device_type="cpu") == "torch.ao"
    if not torchao_available():
        assert resolve_backend("int8_dynamic") == "torch.ao"
        with pytest.raises(QuantizationError, match="needs torchao"):
            resolve_backend("int8_weight_only")


def test_torch_ao_refuses_bfloat16_models(extractor):
    ex = model_copy(extractor)
    ex.hf_model.to(torch.bfloat16)
    with pytest.raises(QuantizationError, match="float32"):
        quantize_vlm(ex.hf_model, "int8_dynamic", backend="torch.ao")


def test_fast_path_config_validation():
    assert FastPathConfig.from_dict({"dtype": "bfloat16", "trim_tail": True}).trim_tail
    with pytest.raises(ConfigError, match="unknown fast_path"):
        FastPathConfig.from_dict({"bf16": True})
    for bad in ({"dtype": "int8"}, {"quantization": "int2"}, {"pad_to_multiple": -1}, {"compile_mode": "x"}):
        with pytest.raises(ConfigError):
            FastPathConfig.from_dict(bad)
    assert FastPathConfig.from_dict(FastPathConfig().to_dict()) == FastPathConfig()


def test_random_weight_builder_gives_the_tiny_architecture(tiny_qwen_dir):  # noqa: F811
    cfg = dataclasses.replace(tiny_config(tiny_qwen_dir).vlm, model_name_or_path="builtin:tiny")
    ex = load_extractor(cfg, random_weights=True, seed=1)
    features, meta = FastVLM(ex).extract(views(seed=1), INSTRUCTION)
    assert features.shape == (80, cfg.hidden_size) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="architecture"):
        load_extractor(dataclasses.replace(cfg, model_name_or_path="/nowhere"), random_weights=True)


def test_feature_difference():
    a = torch.randn(10, 8)
    same = feature_difference(a, a.clone())
    assert same["cosine_min"] == pytest.approx(1.0) and same["relative_error"] == 0.0
    flipped = feature_difference(a, -a)
    assert flipped["cosine_mean"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        feature_difference(a, a[:5])


def test_graphed_head_function_is_what_predict_actions_runs(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir).eval()
    vl = torch.randn(1, 80, policy.vl_hidden_size)
    window = sensor(batch=1, seed=2)
    encoded = policy.encode_vl_features(vl)
    expected = policy.predict_actions(encoded, window, 0.3)
    with torch.no_grad():
        got = policy.head_forward(encoded.latents, window, torch.tensor([0.3]))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_vlm_matches_eager(extractor, images, reference, backend):
    ex = model_copy(extractor)
    prepare_model(ex.hf_model, FastPathConfig(compile=True, compile_backend=backend), "cpu")
    fast = FastVLM(ex, FastPathConfig(trim_tail=True, pad_to_multiple=64))
    features, _ = fast.extract(images, INSTRUCTION)
    assert (features - reference).abs().max() <= EXACT_ATOL
    other, _ = fast.extract(views(seed=4), "Retract.")  # same padded shape: no new graph needed
    assert torch.isfinite(other).all()


@pytest.mark.gpu
@requires_gpu
def test_cuda_graph_action_head_matches_eager(tiny_qwen_dir):  # noqa: F811
    from models.fast_graphs import GraphedActionHead

    policy = make_policy(tiny_qwen_dir).to("cuda").eval()
    encoded = policy.encode_vl_features(torch.randn(1, 80, policy.vl_hidden_size, device="cuda"))
    graphed = GraphedActionHead(policy)
    for seed, age in ((1, 0.0), (2, 0.7)):
        window = sensor(batch=1, seed=seed).cuda()
        expected = policy.predict_actions(encoded, window, age)
        assert torch.allclose(graphed(encoded.latents, window, age), expected, atol=1e-5)


@pytest.mark.gpu
@requires_gpu
def test_pinned_dedicated_stream_matches_plain_on_gpu(tiny_qwen_dir, images):  # noqa: F811
    ex = VLFeatureExtractor.from_pretrained(tiny_config(tiny_qwen_dir).vlm, device="cuda")
    plain, _ = FastVLM(ex).extract(images, INSTRUCTION)
    fast = FastVLM(ex, FastPathConfig(pin_memory=True, dedicated_stream=True, trim_tail=True))
    features, _ = fast.extract(images, INSTRUCTION)
    assert fast.stream is not None
    assert (features - plain).abs().max() <= EXACT_ATOL


def test_gpu_check_exits_with_a_message_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench/gpu_check.py would run the full check")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", "unused.json"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
