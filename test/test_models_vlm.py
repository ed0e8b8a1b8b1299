import dataclasses

import numpy as np
import pytest
import torch
from models_fixtures import one_torch_thread, tiny_config, tiny_qwen_dir, views  # noqa: F401
from safetensors.torch import load_file

from models import lora as lora_utils
from models.tiny_qwen import build_tiny_qwen2_5_vl
from models.vlm import VLFeatureExtractor, resolve_attn_implementation


@pytest.fixture(scope="module")
def extractor(tiny_qwen_dir):  # noqa: F811
    return VLFeatureExtractor.from_pretrained(tiny_config(tiny_qwen_dir).vlm)


def with_vlm(extractor, **changes):
    return VLFeatureExtractor(
        extractor.hf_model,
        dataclasses.replace(extractor.config, **changes),
        processor=extractor.processor,
        tokenizer=extractor.tokenizer,
        image_processor=extractor.image_processor,
    )


def test_tiny_build_loads_like_the_real_model_and_is_deterministic(tiny_qwen_dir, tmp_path):  # noqa: F811
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen_dir)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id
    assert processor.tokenizer.chat_template and "<|im_start|>" in processor.tokenizer.chat_template
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen_dir)
    assert model.config.text_config.num_hidden_layers == 2 and model.config.vision_config.depth == 2
    again = build_tiny_qwen2_5_vl(tmp_path / "again", seed=0)
    other = build_tiny_qwen2_5_vl(tmp_path / "other", seed=1)
    first = load_file(str(tiny_qwen_dir / "model.safetensors"))
    second = load_file(str(again / "model.safetensors"))
    third = load_file(str(other / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_feature_shapes_per_token_selection(extractor):
    images = views(0)
    feats, meta = extractor.extract(images, "insert the needle")
    assert feats.shape == (80, 64) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert meta.tokens_per_view == [16] * 5 and meta.num_tokens == 80 and meta.image_grid_thw[0] == [1, 8, 8]
    every, _ = with_vlm(extractor, token_selection="all").extract(images, "insert the needle")
    assert every.shape[0] > 80
    # the vision-token rows of "all" are exactly the "vision" features
    ids = extractor.prepare_inputs([images], ["insert the needle"])["input_ids"][0]
    assert torch.allclose(every[ids == extractor.image_token_id], feats, atol=1e-6)
    pooled, meta = with_vlm(extractor, token_selection="pooled", pooled_grid=2).extract(images, "insert")
    assert pooled.shape == (20, 64) and meta.tokens_per_view == [4] * 5
    half, _ = with_vlm(extractor, feature_dtype="float16").extract(images, "insert the needle")
    assert half.dtype == torch.float16


def test_instruction_precedes_images_so_vision_tokens_see_it(extractor):
    a, _ = extractor.extract(views(0), "insert the needle")
    b, _ = extractor.extract(views(0), "retract the needle")
    c, _ = extractor.extract(views(1), "insert the needle")
    assert a.shape == b.shape
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_pixel_bounds_set_token_count(extractor):
    big = [np.zeros((224, 224, 3), np.uint8)] * 5
    bounded, meta = extractor.extract(big, "x")
    assert meta.tokens_per_view == [16] * 5
    wide, meta = with_vlm(extractor, max_pixels=224 * 224).extract(big, "x")
    assert meta.tokens_per_view == [64] * 5 and wide.shape[0] == 320


def test_pil_fallback_matches_processor_path(tiny_qwen_dir, extractor):  # noqa: F811
    cfg = dataclasses.replace(tiny_config(tiny_qwen_dir).vlm, processor_backend="pil")
    pil = VLFeatureExtractor.from_pretrained(cfg)
    assert pil.processor is None and type(pil.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    images = views(3, size=(100, 130))
    ref = extractor.prepare_inputs([images], ["go"])
    got = pil.prepare_inputs([images], ["go"])
    assert torch.equal(ref["input_ids"], got["input_ids"])
    assert torch.equal(ref["mm_token_type_ids"], got["mm_token_type_ids"])
    assert torch.equal(ref["image_grid_thw"], got["image_grid_thw"])
    a, _ = extractor.extract(images, "go")
    b, _ = pil.extract(images, "go")
    assert a.shape == b.shape and torch.allclose(a, b, atol=0.1)  # resize kernels differ slightly


def test_batch_extraction_matches_single(extractor):
    groups = [views(0), views(1), views(2)]
    instructions = ["insert", "insert the needle slowly", "stop"]
    batched, metas = extractor.extract_batch(groups, instructions)
    assert len(batched) == 3 and len(metas) == 3
    for images, text, feats in zip(groups, instructions, batched):
        single, _ = extractor.extract(images, text)
        assert torch.allclose(single, feats, atol=1e-4)
    every = with_vlm(extractor, token_selection="all")
    lengths = [f.shape[0] for f in every.extract_batch(groups, instructions)[0]]
    assert len(set(lengths)) == 3  # padding removed per sample


@pytest.mark.parametrize(
    "images, message",
    [
        (views(0, n=4), "expected 5 camera views"),
        ([v.astype(np.float32) for v in views(0)], "dtype uint8"),
        ([v[..., 0] for v in views(0)], "HxWx3"),
        ([v[..., :2] for v in views(0)], "HxWx3"),
        (np.zeros((5, 112, 112, 3), np.uint8), "sequence"),
        ([torch.zeros(112, 112, 3)] * 5, "numpy array"),
    ],
)
def test_bad_views_raise_value_error(extractor, images, message):
    with pytest.raises(ValueError, match=message):
        extractor.extract(images, "x")


def test_attention_choice():
    assert resolve_attn_implementation("auto", "cpu") == "sdpa"
    assert resolve_attn_implementation("eager", "cpu") == "eager"


def test_lora_targets_language_model_only_and_starts_as_identity(tiny_qwen_dir):  # noqa: F811
    cfg = tiny_config(tiny_qwen_dir)
    ex = VLFeatureExtractor.from_pretrained(cfg.vlm)
    before, _ = ex.extract(views(0), "go")
    peft_model = lora_utils.apply_lora(ex.hf_model, cfg.lora)
    names = [n for n, _ in peft_model.named_parameters() if lora_utils.is_lora_parameter(n)]
    assert len(names) == 2 * 4 * 2  # 2 layers x q/k/v/o x (A, B)
    assert all("language_model" in n and ".visual." not in n for n in names)
    assert lora_utils.hash_lora_tensors(lora_utils.lora_state_dict(peft_model)) == lora_utils.NO_LORA_HASH
    after, _ = ex.extract(views(0), "go")
    assert torch.equal(before, after)
    lora_utils.freeze_base(peft_model)
    lora_utils.set_lora_trainable(peft_model, True)
    report = lora_utils.trainable_parameter_report({"vlm": peft_model})
    assert report["vlm"]["trainable"] == sum(p.numel() for p in lora_utils.lora_parameters(peft_model))
    assert 0 < report["total"]["percent"] < 100


def test_lora_save_load_and_merge_preserve_features(tiny_qwen_dir, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_qwen_dir)
    ex = VLFeatureExtractor.from_pretrained(cfg.vlm)
    peft_model = lora_utils.apply_lora(ex.hf_model, cfg.lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    adapted, _ = ex.extract(views(0), "go")
    digest = lora_utils.hash_lora_tensors(lora_utils.lora_state_dict(peft_model))
    assert digest != lora_utils.NO_LORA_HASH
    lora_utils.save_lora_adapter(peft_model, tmp_path / "adapter")
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not any(n.startswith("model") for n in names)  # never the base weights
    assert lora_utils.hash_lora_tensors(lora_utils.read_adapter_tensors(tmp_path / "adapter")) == digest
    fresh = VLFeatureExtractor.from_pretrained(cfg.vlm)
    base, _ = fresh.extract(views(0), "go")
    assert not torch.allclose(base, adapted, atol=1e-4)
    reloaded = lora_utils.load_lora_adapter(fresh.hf_model, tmp_path / "adapter")
    assert lora_utils.hash_lora_tensors(lora_utils.lora_state_dict(reloaded)) == digest
    assert torch.equal(fresh.extract(views(0), "go")[0], adapted)
    fresh.hf_model = lora_utils.merge_lora(reloaded)
    merged, _ = fresh.extract(views(0), "go")
    assert not lora_utils.lora_parameters(fresh.hf_model)
    assert torch.allclose(merged, adapted, atol=1e-4)


def test_builtin_tiny_is_built_once_into_the_cache(tmp_path, monkeypatch):
    from models.vlm import resolve_model_path

    monkeypatch.setenv("INSERTION_VLA_CACHE", str(tmp_path))
    first = resolve_model_path("builtin:tiny")
    stamp = (tmp_path / first.split("/")[-1] / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("builtin:tiny") == first
    assert (tmp_path / first.split("/")[-1] / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model_path("/some/dir") == "/some/dir"


def test_random_weight_builder_feeds_the_extractor(tiny_qwen_dir):  # noqa: F811
    from models.tiny_qwen import TINY_ARCHITECTURE, build_random_qwen2_5_vl

    state = torch.random.get_rng_state()
    model, processor, _ = build_random_qwen2_5_vl(TINY_ARCHITECTURE, dtype=torch.float32, max_pixels=12544)
    assert torch.equal(torch.random.get_rng_state(), state)  # building never perturbs the caller's RNG
    ex = VLFeatureExtractor(model, tiny_config(tiny_qwen_dir).vlm, processor=processor)
    feats, meta = ex.extract(views(0), "go")
    assert feats.shape == (80, 64) and meta.tokens_per_view == [16] * 5
