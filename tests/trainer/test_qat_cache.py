"""The latent/embedding cache: writer, index, reader, bad folders, and a QAT step reading it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.qat.cache import CacheError, CacheWriter, LatentCache
from trainer.qat.data import BatchMaker, CacheSource
from trainer.qat.loop import train


def _write(path, n=5, shard=2, dtype="float32"):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(n, 3, 4, 16, 16, generator=g)
    txt = torch.randn(n, 16, 64, generator=g)
    w = CacheWriter(path, null_text=torch.zeros(16, 64), shard_size=shard, dtype=dtype, encoders={"test": True})
    for i in range(n):
        w.add(lat[i], txt[i], f"caption {i}")
    w.close()
    return lat, txt


def test_round_trip_and_index(tmp_path):
    lat, txt = _write(tmp_path / "c")
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["num_samples"] == 5 and [s["count"] for s in index["shards"]] == [2, 2, 1]
    assert index["latent_shape"] == [3, 4, 16, 16] and index["text_shape"] == [16, 64]
    cache = LatentCache(tmp_path / "c")
    assert len(cache) == 5
    for i in range(5):
        a, b = cache[i]
        assert torch.equal(a, lat[i]) and torch.equal(b, txt[i])
    assert torch.equal(cache.null_embedding(), torch.zeros(16, 64))
    with pytest.raises(IndexError):
        cache[5]


def test_bfloat16_storage(tmp_path):
    lat, _ = _write(tmp_path / "c", dtype="bfloat16")
    torch.testing.assert_close(LatentCache(tmp_path / "c")[3][0].float(), lat[3], atol=0.05, rtol=0.01)


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(CacheError, match="no index.json"):
        LatentCache(tmp_path)
    _write(tmp_path / "c")
    (tmp_path / "c" / "shard-00001.safetensors").unlink()
    with pytest.raises(CacheError, match="shard 'shard-00001.safetensors' is missing"):
        LatentCache(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.json").write_text('{"format": "other"}')
    with pytest.raises(CacheError, match="not a qvgen-latent-cache index"):
        LatentCache(tmp_path / "d")
    with pytest.raises(FileExistsError):
        CacheWriter(tmp_path / "c", torch.zeros(16, 64))
    w = CacheWriter(tmp_path / "e", torch.zeros(16, 64))
    with pytest.raises(ValueError, match="text embedding shape"):
        w.add(torch.zeros(3, 4, 16, 16), torch.zeros(8, 64))


def test_cache_batches_and_training_step(tmp_path, make_config, tiny_teacher):
    _write(tmp_path / "c")
    src = CacheSource(str(tmp_path / "c"), seed=0)
    maker = BatchMaker(src, seed=0, global_batch=4, caption_dropout=0.0)
    b = maker.batch(1)
    assert b.x0.shape == (4, 3, 4, 16, 16) and b.cond.shape == (4, 16, 64)
    assert torch.equal(maker.batch(1).eps, b.eps)
    res = train(make_config(method="qdm", data=str(tmp_path / "c"), steps=2, save_every=10), *tiny_teacher)
    assert res.completed and all(math.isfinite(r["loss"]) for r in res.history)
