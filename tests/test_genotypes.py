"""PLINK 1 and .npy genotype input: exact dosages, allele coding, lazy selection, size checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from genetic_fixtures import write_study

from invariant_mr.errors import InputError
from invariant_mr.io.genotypes import (
    NpyGenotypes,
    PlinkGenotypes,
    Region,
    open_genotypes,
    parse_region,
    read_variant_id_file,
    resolve_bfile_prefix,
    select_variants,
    unique_variant_names,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("geno"), n_per_env=(30, 30, 31), p=9, missing_rate=0.05, seed=3)


def test_reads_exact_dosages_in_requested_order(study):
    geno = PlinkGenotypes(study.prefix)
    assert geno.n_samples == 91 and geno.n_variants == 9
    samples = np.array([90, 0, 45, 7])
    variants = np.array([8, 2, 5])
    got = geno.read(samples, variants)
    want = study.genotypes[np.ix_(samples, variants)]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1))


def test_chunked_read_equals_single_block(study):
    geno = PlinkGenotypes(study.prefix)
    rows = np.arange(0, 91, 2)
    cols = np.arange(9)
    one = geno.read(rows, cols, chunk_variants=1000)
    chunked = geno.read(rows, cols, chunk_variants=2)
    np.testing.assert_array_equal(np.nan_to_num(one, nan=-1), np.nan_to_num(chunked, nan=-1))


def test_counted_allele_is_recorded_and_a2_coding_flips_dosage(study):
    a1 = PlinkGenotypes(study.prefix)
    a2 = PlinkGenotypes(study.prefix, count_a1=False)
    assert list(a1.variant_table["counted_allele"]) == ["A"] * 9
    assert list(a1.variant_table["other_allele"]) == ["G"] * 9
    assert list(a2.variant_table["counted_allele"]) == ["G"] * 9
    rows, cols = np.arange(91), np.arange(9)
    d1, d2 = a1.read(rows, cols), a2.read(rows, cols)
    observed = ~np.isnan(d1)
    np.testing.assert_array_equal(d1[observed] + d2[observed], 2.0)
    np.testing.assert_array_equal(np.isnan(d2), ~observed)


def test_prefix_accepts_extension():
    assert str(resolve_bfile_prefix("data/geno.bed")) == "data/geno"
    assert str(resolve_bfile_prefix("data/geno.fam")) == "data/geno"
    assert str(resolve_bfile_prefix("data/geno")) == "data/geno"


def test_missing_file_names_it(study, tmp_path):
    for ext in ("bed", "bim", "fam"):
        prefix = tmp_path / ext / "geno"
        prefix.parent.mkdir()
        for other in ("bed", "bim", "fam"):
            if other != ext:
                (prefix.parent / f"geno.{other}").write_bytes(study.prefix.with_suffix(f".{other}").read_bytes())
        with pytest.raises(InputError, match=rf"\.{ext} file not found"):
            PlinkGenotypes(prefix)


def _copy_fileset(study, directory):
    directory.mkdir()
    for ext in ("bed", "bim", "fam"):
        (directory / f"geno.{ext}").write_bytes(study.prefix.with_suffix(f".{ext}").read_bytes())
    return directory / "geno"


def test_bim_that_does_not_match_bed_size(study, tmp_path):
    prefix = _copy_fileset(study, tmp_path / "x")
    bim = prefix.with_suffix(".bim")
    bim.write_text("".join(bim.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(InputError, match=r"has \d+ bytes but geno.bim \(8 variants\) and geno.fam \(91 samples\)"):
        PlinkGenotypes(prefix)


def test_fam_that_does_not_match_bed_size(study, tmp_path):
    prefix = _copy_fileset(study, tmp_path / "x")
    fam = prefix.with_suffix(".fam")
    fam.write_text("".join(fam.read_text().splitlines(keepends=True)[:-8]))
    with pytest.raises(InputError, match=r"\.bim/\.fam do not belong to this \.bed"):
        PlinkGenotypes(prefix)


def test_not_a_bed_file(study, tmp_path):
    prefix = _copy_fileset(study, tmp_path / "x")
    bed = prefix.with_suffix(".bed")
    data = bytearray(bed.read_bytes())
    data[2] = 0
    bed.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sample-major"):
        PlinkGenotypes(prefix)
    data[0] = 0
    bed.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a PLINK 1 .bed file"):
        PlinkGenotypes(prefix)


def test_extract_by_ids(study, tmp_path):
    geno = PlinkGenotypes(study.prefix)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("rs1005 extra columns ignored\n\nrs1001\nrs_unknown\n# comment\n")
    ids = read_variant_id_file(ids_file)
    assert ids == ["rs1005", "rs1001", "rs_unknown"]
    sel = select_variants(geno.variant_table, extract=ids)
    assert list(sel.indices) == [1, 5]  # file order, not list order
    assert sel.n_requested_ids == 3 and sel.n_ids_not_found == 1
    with pytest.raises(InputError, match="none of the 2 listed variant IDs"):
        select_variants(geno.variant_table, extract=["a", "b"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InputError, match="lists no variant IDs"):
        read_variant_id_file(empty)


def test_region_parsing_and_selection(study):
    assert parse_region("chr1:1,000-2000") == Region("1", 1000, 2000)
    assert parse_region("22") == Region("22")
    assert parse_region("X:500-") == Region("X", 500, None)
    for bad in ("1:20-10", "1:a-b", ""):
        with pytest.raises(InputError, match="--region"):
            parse_region(bad)
    geno = PlinkGenotypes(study.prefix)  # positions 10000, 20000, ... on chromosome 1
    sel = select_variants(geno.variant_table, region="chr1:20000-50000")
    assert list(sel.indices) == [1, 2, 3, 4]  # both ends inclusive
    both = select_variants(geno.variant_table, region="1:20000-50000", extract=["rs1002", "rs1008"])
    assert list(both.indices) == [2]
    with pytest.raises(InputError, match="chromosomes present: 1"):
        select_variants(geno.variant_table, region="2")


def test_duplicate_ids_in_extract_are_an_error():
    table = pd.DataFrame({"variant_id": ["a", "a", "b"], "chrom": ["1"] * 3, "pos": [1, 2, 3],
                          "counted_allele": ["A"] * 3, "other_allele": ["C"] * 3})
    with pytest.raises(InputError, match="more than once"):
        select_variants(table, extract=["a"])
    assert list(select_variants(table, extract=["b"]).indices) == [2]


def test_unique_variant_names():
    table = pd.DataFrame({"variant_id": [".", "rs1", "rs1", "rs2"], "chrom": ["1", "1", "1", "2"],
                          "pos": [5, 6, 6, 7], "counted_allele": ["A", "A", "A", "C"],
                          "other_allele": ["G", "T", "T", "G"]})
    assert unique_variant_names(table) == ["1:5:A:G", "1:6:A:T", "1:6:A:T#2", "rs2"]


def test_npy_input_with_and_without_ids(study, tmp_path):
    G = study.genotypes
    path = tmp_path / "g.npy"
    np.save(path, G)
    plain = NpyGenotypes(path)
    assert plain.n_samples == 91 and not plain.ids_from_file
    assert list(plain.variant_table["variant_id"][:2]) == ["z1", "z2"]
    assert plain.variant_table["counted_allele"].isna().all()
    got = plain.read(np.array([3, 1]), np.array([0, 4]))
    np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(G[np.ix_([3, 1], [0, 4])], nan=-1))
    samples = tmp_path / "samples.txt"
    samples.write_text("".join(f"{f} {i}\n" for f, i in zip(study.fid, study.iid)))
    variants = tmp_path / "variants.txt"
    variants.write_text("\n".join(study.variant_ids) + "\n")
    named = open_genotypes(npy=path, npy_samples=samples, npy_variants=variants)
    assert named.ids_from_file and list(named.sample_table["IID"][:2]) == list(study.iid[:2])
    assert list(named.variant_table["variant_id"]) == study.variant_ids
    variants.write_text("rs1\n")
    with pytest.raises(InputError, match="lists 1 variants but .* has 9 columns"):
        NpyGenotypes(path, variants=variants)
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(InputError, match="samples x variants"):
        NpyGenotypes(tmp_path / "bad.npy")


def test_exactly_one_source(study):
    with pytest.raises(InputError, match="exactly one genotype source"):
        open_genotypes()
    with pytest.raises(InputError, match="exactly one genotype source"):
        open_genotypes(bfile=study.prefix, npy="x.npy")
