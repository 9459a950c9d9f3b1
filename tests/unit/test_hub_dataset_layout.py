"""Where a Hub dataset repository keeps its data: configs and splits from the file layout or the
card's `configs:` section, and the choice of config and split when none is given."""

from __future__ import annotations

import pytest
from workbench_download.datasets import choose, layout

from workbench.errors import UserError


def test_data_folder_with_sharded_splits():
    files = ["README.md", ".gitattributes", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
             "data/test-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"]
    found, default = layout(files, {})
    assert default is None
    assert found == {"default": {"train": files[2:4], "test": [files[4]], "validation": [files[5]]}}
    assert choose(found, None, "o/n", None, None) == ("default", "train", "validation")
    assert choose(found, None, "o/n", None, "test") == ("default", "test", None)


def test_shards_with_content_hashes_as_older_uploads_name_them():
    files = ["data/train-00000-of-00001-a09b74b3ef9c3b56.parquet", "data/test-0.parquet", "data/test-1.parquet"]
    found, _ = layout(files, {})
    assert found == {"default": {"train": files[:1], "test": files[1:]}}


def test_config_folders_as_the_parquet_conversion_lays_them_out():
    files = ["en/train-00000-of-00001.parquet", "en/test-00000-of-00001.parquet", "de/train/0000.parquet",
             "de/train/0001.parquet", "dataset_infos.json"]
    found, _ = layout(files, {})
    assert found == {"en": {"train": [files[0]], "test": [files[1]]}, "de": {"train": files[2:4]}}
    with pytest.raises(UserError, match=r"o/n has 2 configs \(de, en\); pick one with --subset NAME"):
        choose(found, None, "o/n", None, None)
    with pytest.raises(UserError, match="o/n has no config 'fr'; its configs are: de, en"):
        choose(found, None, "o/n", "fr", None)
    assert choose(found, None, "o/n", "de", None) == ("de", "train", None)


def test_files_named_by_split_and_stray_files():
    found, _ = layout(["train.jsonl", "test.jsonl", "notes/scratch.py"], {})
    assert found == {"default": {"train": ["train.jsonl"], "test": ["test.jsonl"]}}
    # A file named otherwise is the train split, as the Hub's viewer shows it.
    found, _ = layout(["alpaca_data.json"], {})
    assert found == {"default": {"train": ["alpaca_data.json"]}}


def test_one_format_per_split_parquet_first():
    found, _ = layout(["data/train.jsonl", "data/train-00000-of-00001.parquet", "data/train.csv"], {})
    assert found == {"default": {"train": ["data/train-00000-of-00001.parquet"]}}


def test_card_configs_name_the_data_files():
    files = ["data/train_prefs-00000-of-00001.parquet", "data/test_prefs-00000-of-00001.parquet",
             "data/train_sft-00000-of-00001.parquet", "raw/all.jsonl", "extra/a.csv", "extra/b.csv"]
    card = {"configs": [
        {"config_name": "default", "default": True, "data_files": [
            {"split": "train_prefs", "path": "data/train_prefs-*"},
            {"split": "test_prefs", "path": ["data/test_prefs-*"]},
            {"split": "train_sft", "path": "data/train_sft-*"}]},
        {"config_name": "raw", "data_files": "raw/all.jsonl"},
        {"config_name": "extra", "data_files": ["extra/"]},
    ]}
    found, default = layout(files, card)
    assert default == "default"
    assert found["default"] == {"train_prefs": [files[0]], "test_prefs": [files[1]], "train_sft": [files[2]]}
    assert found["raw"] == {"train": ["raw/all.jsonl"]} and found["extra"] == {"train": files[4:]}
    with pytest.raises(UserError, match=r"\(config default\) has the splits test_prefs, train_prefs, train_sft; "
                                        "pick one with --split NAME"):
        choose(found, default, "o/n", None, None)
    with pytest.raises(UserError, match="has no split 'train'; its splits are: test_prefs, train_prefs, train_sft"):
        choose(found, default, "o/n", None, "train")
    assert choose(found, default, "o/n", None, "train_prefs") == ("default", "train_prefs", None)
