"""VL feature cache: hit, miss, fingerprint invalidation, corrupt/partial shards, sharded build, misses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.config import load_model_config
from models.policy import AsyncVLAPolicy
from training.dataset import AlignmentConfig, open_episodes
from training.feature_cache import CacheMissError, FeatureCache, entry_key
from training.features import FeatureSource, build_cache
from training.fixtures import make_synthetic_dataset
from training.trainer import all_feature_refs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cache")
    paths = make_synthetic_dataset(root / "data", num_episodes=2, duration_s=1.2, channels=1026)
    policy = AsyncVLAPolicy(load_model_config("tiny"), load_vlm=True).eval()
    episodes = open_episodes(paths, AlignmentConfig(reuse=17))
    by_name = {ep.name: ep for ep in episodes}
    refs = all_feature_refs(episodes)

    def load(ref):
        return by_name[ref.episode].load_images(ref)

    return root, policy, refs, load


def test_build_hit_and_values_match_the_vlm(setup, tmp_path):
    _, policy, refs, load = setup
    cache = FeatureCache(tmp_path, policy.fingerprint)
    assert cache.get(refs[0]) is None and cache.stats["misses"] == 1
    assert build_cache(
        cache, refs, policy.extract_vl_features_batch, load, batch_size=4, progress=False
    ) == len(refs)
    reopened = FeatureCache(tmp_path, policy.fingerprint)  # a new process sees the committed shards
    assert len(reopened) == len(refs) and reopened.missing(refs) == []
    direct = policy.extract_vl_features(load(refs[3]), refs[3].instruction)
    torch.testing.assert_close(reopened.get(refs[3]), direct, rtol=1e-5, atol=1e-5)
    assert reopened.stats["hits"] == 1
    assert build_cache(reopened, refs, policy.extract_vl_features_batch, load, progress=False) == 0


def test_key_covers_episode_content_frames_instruction_and_fingerprint(setup, tmp_path):
    _, policy, refs, _ = setup
    ref = refs[0]
    base = entry_key(ref, "fp")
    assert entry_key(ref, "fp") == base
    variants = [
        (
            ref.__class__(
                ref.episode + "x", ref.cameras, ref.frame_indices, ref.frame_stamps_ns, ref.instruction
            ),
            "fp",
        ),
        (
            ref.__class__(
                ref.episode,
                ref.cameras,
                ref.frame_indices,
                (ref.frame_stamps_ns[0] + 1,) + ref.frame_stamps_ns[1:],
                ref.instruction,
            ),
            "fp",
        ),
        (ref.__class__(ref.episode, ref.cameras, ref.frame_indices, ref.frame_stamps_ns, "other task"), "fp"),
        (ref, "fp2"),
        (dataclasses.replace(ref, content_id=ref.content_id + "0"), "fp"),  # another recording, same name
    ]
    assert len({entry_key(r, fp) for r, fp in variants} | {base}) == 6


def test_changed_fingerprint_never_serves_old_features(setup, tmp_path):
    _, policy, refs, load = setup
    cache = FeatureCache(tmp_path, policy.fingerprint)
    build_cache(cache, refs[:4], policy.extract_vl_features_batch, load, progress=False)
    # Train the LoRA a little (B != 0): the fingerprint changes and the old entries are all misses.
    lora_b = [p for n, p in policy.vlm_model.named_parameters() if "lora_B" in n]
    old = policy.fingerprint
    saved = [p.detach().clone() for p in lora_b]
    try:
        with torch.no_grad():
            for p in lora_b:
                p.add_(0.01)
        assert policy.fingerprint != old
        changed = FeatureCache(tmp_path, policy.fingerprint)
        assert changed.missing(refs[:4]) == refs[:4] and changed.get(refs[0]) is None
    finally:
        with torch.no_grad():
            for p, s in zip(lora_b, saved):
                p.copy_(s)
    assert policy.fingerprint == old and FeatureCache(tmp_path, old).missing(refs[:4]) == []


def test_corrupt_and_partial_shards_are_detected_and_rebuilt(setup, tmp_path):
    _, policy, refs, load = setup
    cache = FeatureCache(tmp_path, policy.fingerprint, shard_entries=3)
    build_cache(cache, refs[:6], policy.extract_vl_features_batch, load, progress=False)
    shards = sorted(cache.directory.glob("shard-*.safetensors"))
    assert len(shards) == 2
    data = bytearray(shards[0].read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the tensor data: same size, wrong sha256
    shards[0].write_bytes(bytes(data))
    (cache.directory / "shard-r0-deadbeef.safetensors").write_bytes(b"half a shard")  # no index: partial
    reopened = FeatureCache(tmp_path, policy.fingerprint)
    assert not (cache.directory / "shard-r0-deadbeef.safetensors").exists()  # this rank's own: deleted
    assert reopened.verify() == 1 and not shards[0].exists()
    assert len(reopened.missing(refs[:6])) == 3
    assert build_cache(reopened, refs[:6], policy.extract_vl_features_batch, load, progress=False) == 3
    again = FeatureCache(tmp_path, policy.fingerprint)
    assert again.missing(refs[:6]) == [] and again.verify() == 0
    torch.testing.assert_close(
        again.get(refs[0]),
        policy.extract_vl_features(load(refs[0]), refs[0].instruction),
        rtol=1e-5,
        atol=1e-5,
    )


def test_sharded_build_across_ranks_covers_everything_once(setup, tmp_path):
    _, policy, refs, load = setup
    built = [
        build_cache(
            FeatureCache(tmp_path, policy.fingerprint, rank=r),
            refs,
            policy.extract_vl_features_batch,
            load,
            rank=r,
            world=2,
            progress=False,
        )
        for r in range(2)
    ]
    assert sum(built) == len(refs) and abs(built[0] - built[1]) <= 1
    merged = FeatureCache(tmp_path, policy.fingerprint)
    assert merged.missing(refs) == [] and len(merged) == len(refs)
    assert {p.name.split("-")[1] for p in merged.directory.glob("shard-*.json")} == {"r0", "r1"}


def test_stage1_miss_is_an_error_or_computed_never_silent(setup, tmp_path):
    _, policy, refs, load = setup
    cache = FeatureCache(tmp_path, policy.fingerprint)
    strict = FeatureSource("on", cache, policy.extract_vl_features_batch, load, compute_on_miss=False)
    with pytest.raises(CacheMissError, match="build-cache"):
        strict.features(refs[:2])
    lenient = FeatureSource("on", cache, policy.extract_vl_features_batch, load, compute_on_miss=True)
    features, mask = lenient.features([refs[0], refs[1], refs[0]])
    assert features.shape[0] == 3 and mask.all() and cache.stats["written"] == 0
    torch.testing.assert_close(features[0], features[2])
    cache.flush()
    assert FeatureCache(tmp_path, policy.fingerprint).missing(refs[:2]) == []
    strict.features(refs[:2])  # now hits
    with pytest.raises(ValueError, match="needs the VLM"):
        FeatureSource("on", cache, None, load, compute_on_miss=True)


def test_a_rank_never_deletes_another_ranks_shard(setup, tmp_path):
    _, policy, refs, _ = setup
    writer = FeatureCache(tmp_path, policy.fingerprint, rank=1)
    writer.put(refs[0], torch.ones(4, 8))
    shard = writer.flush()
    index = shard.with_suffix(".json")
    committed = index.read_text()
    index.unlink()  # rank 1 is between renaming its shard into place and writing the index
    reader = FeatureCache(tmp_path, policy.fingerprint, rank=0)
    assert shard.exists(), "rank 0 deleted rank 1's shard"
    assert reader.missing(refs[:1]) == refs[:1]  # not indexed yet: a miss, not an error
    index.write_text(committed)  # rank 1 commits
    reader.reload()
    assert reader.missing(refs[:1]) == [] and torch.equal(reader.get(refs[0]), torch.ones(4, 8))


def _rank_writes(root: str, fingerprint: str, rank: int, count: int) -> None:
    from training.dataset import FeatureRef
    from training.feature_cache import FeatureCache as Cache

    cache = Cache(root, fingerprint, rank=rank, shard_entries=1)
    for i in range(count):
        ref = FeatureRef(f"ep{rank}", ("view1",), (i,), (i,), "task")
        cache.put(ref, torch.full((2, 4), float(i)))  # shard_entries=1: every put is a flush
        cache.reload()  # the reload that used to delete the other rank's fresh shards


def test_ranks_writing_concurrently_keep_every_shard(tmp_path):
    import multiprocessing

    from training.dataset import FeatureRef

    context = multiprocessing.get_context("spawn")
    count = 60
    workers = [context.Process(target=_rank_writes, args=(str(tmp_path), "fp", r, count)) for r in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    merged = FeatureCache(tmp_path, "fp", rank=2)
    refs = [FeatureRef(f"ep{r}", ("view1",), (i,), (i,), "task") for r in (0, 1) for i in range(count)]
    assert merged.missing(refs) == [] and merged.verify() == 0


def test_another_recording_under_the_same_folder_name_never_gets_its_features(setup, tmp_path):
    """Every sim demo set names its episodes episode_00000...; their frames have the same stamps and
    instruction. A cache built on one set served its features to another set's different images."""
    _, policy, refs, load = setup
    other_paths = make_synthetic_dataset(
        tmp_path / "other", num_episodes=2, duration_s=1.2, seed=7, channels=1026
    )
    other = all_feature_refs(open_episodes(other_paths, AlignmentConfig(reuse=17)))
    same_place = [
        (a, b)
        for a, b in zip(refs, other)
        if a.episode == b.episode and a.frame_stamps_ns == b.frame_stamps_ns
    ]
    assert same_place, "the two sets name their episodes and stamp their frames alike"
    cache = FeatureCache(tmp_path / "cache", policy.fingerprint)
    build_cache(cache, refs[:4], policy.extract_vl_features_batch, load, progress=False)
    assert cache.missing(refs[:4]) == []
    assert cache.missing([b for _, b in same_place[:4]]) == [b for _, b in same_place[:4]]
    # The same recording opened again (a later run) still hits.
    again = all_feature_refs(open_episodes(sorted((setup[0] / "data").iterdir()), AlignmentConfig(reuse=17)))
    assert cache.missing(again[:4]) == []
