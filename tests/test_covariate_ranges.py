"""Numbered covariate ranges ("PC1-PC10") for --covar."""

import pandas as pd
import pytest

from invariant_mr.errors import InputError
from invariant_mr.io.phenotypes import expand_column_range, expand_columns

COLUMNS = ["IID", "age", "sex"] + [f"PC{i}" for i in range(1, 21)] + ["gPC01", "gPC02", "gPC03", "x-y1-3"]


def test_ranges_expand_in_order_against_the_columns():
    assert expand_column_range("PC1-PC10", COLUMNS) == [f"PC{i}" for i in range(1, 11)]
    assert expand_column_range("PC3-5", COLUMNS) == ["PC3", "PC4", "PC5"]
    assert expand_column_range("gPC01-gPC03", COLUMNS) == ["gPC01", "gPC02", "gPC03"]
    assert expand_column_range("PC7-PC7", COLUMNS) == ["PC7"]


def test_non_ranges_and_literal_columns_are_left_alone():
    assert expand_column_range("age", COLUMNS) is None
    assert expand_column_range("x-y1-3", COLUMNS) is None  # a column with that literal name
    assert expand_column_range("PC1-gPC3", COLUMNS) is None  # different prefixes: not a range


def test_bad_ranges_are_input_errors():
    with pytest.raises(InputError, match="not in"):
        expand_column_range("PC1-PC25", COLUMNS)
    with pytest.raises(InputError, match="backwards"):
        expand_column_range("PC10-PC1", COLUMNS)


def test_expand_columns_mixes_names_globs_and_ranges_without_repeats():
    table = pd.DataFrame(columns=COLUMNS)
    got = expand_columns(table, ["age", "PC1-PC3", "PC2", "sex", "PC1?"], "--covar", "pheno.tsv")
    assert got == ["age", "PC1", "PC2", "PC3", "sex"] + [f"PC{i}" for i in range(10, 20)]
