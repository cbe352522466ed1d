"""Raw readers: file discovery, PixelRec CSV and RecBole .inter parsing, token -> code remapping."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_fixtures import HAND_ROWS, hand_raw, write_interactions, write_item_info
from pixelrec.data.raw import find_raw, read_interactions, read_item_info
from pixelrec.data.tokens import TokenCoder
from pixelrec.errors import UserError


def test_find_raw_recognises_files_by_header(tmp_path):
    root = hand_raw(tmp_path / "raw", covers=False)
    (root / "images").mkdir()
    (root / "notes.csv").write_text("a,b\n1,2\n")  # neither interactions nor item info: ignored
    source = find_raw(root)
    assert source.kind == "pixelrec-csv"
    assert source.interactions.name == "Tiny.csv" and source.item_info.name == "item_info.csv"
    assert source.covers == root / "images"
    files = {"interactions": "Tiny.csv", "item_info": "item_info.csv", "covers": "images"}
    assert source.describe()["files"] == files
    assert find_raw(root / "Tiny.csv").item_info == source.item_info  # a file: siblings are found too


def test_find_raw_refuses_two_interaction_files(tmp_path):
    root = hand_raw(tmp_path / "raw")
    write_interactions(root / "Other.csv", HAND_ROWS)
    with pytest.raises(UserError, match="several interaction files"):
        find_raw(root)


def test_pixelrec_csv_codes_follow_first_appearance(tmp_path):
    data = read_interactions(find_raw(hand_raw(tmp_path / "raw")))
    assert data.item_tokens.to_pylist() == ["i1", "i2", "i3", "i4"]
    assert data.user_tokens.to_pylist() == ["u1", "u2", "u3"]
    assert data.items.tolist() == [0, 1, 2, 1, 0, 3, 2, 0, 1, 0]
    assert data.users.tolist() == [0, 1, 0, 0, 1, 1, 1, 2, 2, 1]
    assert data.timestamps.tolist() == [row[2] for row in HAND_ROWS]
    assert data.items.dtype == np.int32 and data.timestamps.dtype == np.int64


def test_recbole_inter_with_typed_header_and_float_timestamps(tmp_path):
    path = tmp_path / "ml.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    "7\t100\t4.0\t978300760.0\n8\t100\t3.0\t978300761\n7\t200\t5.0\t978300700.0\n")
    source = find_raw(path)
    assert source.kind == "recbole-inter"
    data = read_interactions(source)
    assert data.user_tokens.to_pylist() == ["7", "8"] and data.item_tokens.to_pylist() == ["100", "200"]
    assert data.timestamps.tolist() == [978300760, 978300761, 978300700]


def test_recbole_fractional_timestamp_names_the_row(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t5\nu1\ti2\t6.5\n")
    with pytest.raises(UserError, match=r"x\.inter: data row 2: timestamp 6\.5 is not a whole number"):
        read_interactions(find_raw(path))


@pytest.mark.parametrize("tokens", [["u1", "u01", "u1", "u10"], ["alice", "bob", "alice", "carol"],
                                    ["7", "07", "x7", "7"], ["u5", "v5", "u5", "u6"]])
def test_token_coder_numbered_and_string_paths_agree(tokens):
    """Lookalike tokens (leading zeros, other prefixes) stay distinct; codes follow first appearance."""
    expected_tokens = list(dict.fromkeys(tokens))
    expected_codes = [expected_tokens.index(t) for t in tokens]
    for batches in ([tokens], [tokens[:2], tokens[2:]]):
        for as_strings in (False, True):
            coder, codes = TokenCoder(as_strings), []
            try:
                for part in batches:
                    out = coder.feed(pa.array(part))
                    codes.extend([] if out is None else out.tolist())
                got_tokens = coder.tokens().to_pylist()
            except Exception as err:  # NotNumbered: the string path is the answer
                assert not as_strings and type(err).__name__ == "NotNumbered"
                continue
            if as_strings:
                got, tokens_arr = coder.encode_strings(None, "user_id")
                codes, got_tokens = got.tolist(), tokens_arr.to_pylist()
            assert got_tokens == expected_tokens and codes == expected_codes


def test_numbered_fallback_rereads_as_strings(tmp_path):
    # the first tokens look numbered, a later one does not: the reader restarts with strings for that column
    rows = [("i1", "u1", 1), ("i2", "u1", 2), ("i01", "u2", 3), ("item-x", "u2", 4)]
    data = read_interactions(find_raw(write_interactions(tmp_path / "interactions.csv", rows)))
    assert data.item_tokens.to_pylist() == ["i1", "i2", "i01", "item-x"]
    assert data.items.tolist() == [0, 1, 2, 3]


def test_item_info_quoting_and_numbers(tmp_path):
    table = read_item_info(write_item_info(tmp_path / "item_info.csv", ["i1", "i2"]))
    assert table.column("title").to_pylist() == ["title 0, with comma", "title 1, with comma"]
    assert table.column("description").to_pylist()[1] == 'say "hi" 1'
    assert table.column("view_number").type == pa.int64()
