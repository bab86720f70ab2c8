"""One genotype matrix written as PLINK 1, PLINK 2, BGEN v1.2 and VCF reads back identically from every source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from genotype_writers import (
    make_fileset,
    write_bed,
    write_bgen,
    write_pgen,
    write_vcf,
)

from invariant_mr.errors import InputError
from invariant_mr.io.genotype_sources import (
    MISSING_INT8,
    BgenSource,
    Plink1Source,
    Plink2Source,
    VcfSource,
    int8_to_float32,
    open_genotypes,
)

FORMATS = ("bfile", "pfile", "pfile_hardcalls", "vcf", "bgen", "bgen_ids_in_file")


@pytest.fixture(scope="module")
def fileset():
    return make_fileset(n=40, p=9, missing_rate=0.08, seed=3)


@pytest.fixture(scope="module")
def files(fileset, tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    write_bed(fileset, d / "g1")
    write_pgen(fileset, d / "g2")
    write_vcf(fileset, d / "g.vcf")
    write_bgen(fileset, d / "g.bgen", sample_ids_in_file=False, sample_file=d / "g.sample")
    write_bgen(fileset, d / "ids.bgen", sample_ids_in_file=True)
    return d


def _open(files, kind, **kw):
    if kind == "bfile":
        return open_genotypes(bfile=files / "g1", **kw)
    if kind == "pfile":
        return open_genotypes(pfile=files / "g2", **kw)
    if kind == "pfile_hardcalls":
        return open_genotypes(pfile=files / "g2", pfile_hardcalls=True, **kw)
    if kind == "vcf":
        return open_genotypes(vcf=files / "g.vcf", **kw)
    if kind == "bgen":
        return open_genotypes(bgen=files / "g.bgen", sample=files / "g.sample", **kw)
    return open_genotypes(bgen=files / "ids.bgen", **kw)


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_the_same_dosages_tables_and_alleles(files, fileset, kind):
    src = _open(files, kind)
    assert (src.n_samples, src.n_variants) == fileset.dosages.shape
    np.testing.assert_array_equal(src.read(dtype="float32"), fileset.dosages.astype(np.float32))
    v = src.variants
    assert list(v["variant_id"]) == list(fileset.variants["variant_id"])
    assert list(v["chrom"].astype(str)) == list(fileset.variants["chrom"])
    np.testing.assert_array_equal(v["pos"].to_numpy(), fileset.variants["pos"].to_numpy())
    # Every source counts ALT (A1 in the .bim written with A1 = ALT; allele 2 of the ref-first BGEN).
    assert list(v["counted_allele"]) == list(fileset.variants["alt"])
    assert list(v["other_allele"]) == list(fileset.variants["ref"])
    assert list(src.samples["IID"]) == list(fileset.iid)
    if src.has_fid:
        assert list(src.samples["FID"]) == list(fileset.fid)
    else:
        assert list(src.samples["FID"]) == list(fileset.iid)
    assert src.counted_allele_rule


@pytest.mark.parametrize("kind", ["bfile", "pfile_hardcalls", "vcf"])
def test_hard_call_sources_read_int8_with_minus_127_for_missing(files, fileset, kind):
    src = _open(files, kind)
    assert src.native_dtype == "int8"
    block = src.read()
    assert block.dtype == np.int8
    expected = np.where(np.isnan(fileset.dosages), MISSING_INT8, fileset.dosages).astype(np.int8)
    np.testing.assert_array_equal(block, expected)
    np.testing.assert_array_equal(int8_to_float32(block), fileset.dosages.astype(np.float32))


@pytest.mark.parametrize("kind", ["pfile", "bgen"])
def test_dosage_sources_refuse_int8_rather_than_round(files, kind):
    with pytest.raises(InputError, match="float32"):
        _open(files, kind).read(dtype="int8")


@pytest.mark.parametrize("kind", FORMATS)
def test_rows_in_any_order_with_repeats_and_column_subsets(files, fileset, kind):
    src = _open(files, kind)
    rows = np.array([31, 2, 2, 17, 0, 39, 5])
    cols = np.array([7, 0, 4])
    got = src.read(rows, cols, dtype="float32")
    np.testing.assert_array_equal(got, fileset.dosages[np.ix_(rows, cols)].astype(np.float32))
    mask = np.zeros(src.n_samples, bool)
    mask[[3, 9, 10]] = True
    np.testing.assert_array_equal(src.read(mask, slice(2, 5), dtype="float32"),
                                  fileset.dosages[np.ix_([3, 9, 10], [2, 3, 4])].astype(np.float32))


@pytest.mark.parametrize("kind", ["bfile", "pfile", "vcf", "bgen"])
def test_iter_blocks_streams_the_requested_rows(files, fileset, kind):
    src = _open(files, kind)
    rows = np.arange(3, 38)
    pieces = list(src.iter_blocks(rows, block_rows=8, dtype="float32"))
    assert [s.stop - s.start for s, _ in pieces] == [8, 8, 8, 8, 3]
    assert all(b.shape == (s.stop - s.start, src.n_variants) for s, b in pieces)
    np.testing.assert_array_equal(np.vstack([b for _, b in pieces]), fileset.dosages[rows].astype(np.float32))
    # A block budget sets the rows per block: 9 int8/float32 columns per row.
    assert len(list(src.iter_blocks(block_bytes=9 * 4 * 10, dtype="float32"))) == 4


@pytest.mark.parametrize("kind", FORMATS)
def test_extract_and_region_select_the_same_variants_in_every_format(files, fileset, kind, tmp_path):
    ids = tmp_path / "keep.txt"
    ids.write_text("rs101\nrs104 extra-column\nrs999\nrs107\n")
    src = _open(files, kind, extract=ids)
    assert list(src.variants["variant_id"]) == ["rs101", "rs104", "rs107"]
    assert src.selection.n_ids_not_found == 1
    np.testing.assert_array_equal(src.read(dtype="float32"), fileset.dosages[:, [1, 4, 7]].astype(np.float32))
    # Chromosome 2 holds rs103..rs105 at 1017, 2017, 3017; chr prefix and commas are accepted.
    region = _open(files, kind, region="chr2:1,500-3017")
    assert list(region.variants["variant_id"]) == ["rs104", "rs105"]
    np.testing.assert_array_equal(region.read(dtype="float32"), fileset.dosages[:, [4, 5]].astype(np.float32))
    both = _open(files, kind).select_variants(extract=["rs101", "rs104", "rs107"], region="2")
    assert list(both.variants["variant_id"]) == ["rs104"]
    # Views nest: positions in read() refer to the view's own variants.
    np.testing.assert_array_equal(both.read([0, 1], [0], dtype="float32"),
                                  fileset.dosages[:2, [4]].astype(np.float32))
    assert both.describe()["variant_selection"]["n_selected"] == 1


def test_region_outside_the_data_and_unknown_ids_are_input_errors(files):
    with pytest.raises(InputError, match="no variants"):
        _open(files, "vcf", region="7:1-100")
    with pytest.raises(InputError, match="none of the"):
        _open(files, "bgen", extract=["rsX"])


# ------------------------------------------------------------- dosages, INFO
@pytest.fixture(scope="module")
def imputed(fileset, tmp_path_factory):
    """Genotype probabilities on the 1/255 grid (stored exactly by 8-bit BGEN) and their dosages."""
    rng = np.random.default_rng(11)
    n, p = fileset.dosages.shape
    k = rng.dirichlet([0.6, 0.3, 0.2], size=(n, p))
    units = np.floor(k * 255).astype(int)
    units[..., 0] += 255 - units.sum(axis=-1)  # each triple sums to 255
    probs = units / 255.0
    probs[np.isnan(fileset.dosages)] = np.nan
    dosage = probs[..., 1] + 2 * probs[..., 2]
    d = tmp_path_factory.mktemp("imputed")
    info = np.linspace(0.3, 1.0, p)
    info[2] = np.nan  # a variant without a score passes any --min-info, as in PLINK 2
    write_bgen(fileset, d / "imp.bgen", probabilities=probs)
    write_pgen(fileset, d / "imp", dosages=dosage, info=info)
    write_vcf(fileset, d / "imp.vcf", dosages=dosage, info=info)
    return {"dir": d, "probs": probs, "dosage": dosage, "info": info}


def test_imputed_dosages_agree_across_bgen_pgen_and_vcf_ds(imputed, fileset):
    d = imputed["dir"]
    bgen = open_genotypes(bgen=d / "imp.bgen")
    pgen = open_genotypes(pfile=d / "imp")
    vcf = open_genotypes(vcf=d / "imp.vcf", vcf_dosage="DS")
    assert vcf.native_dtype == pgen.native_dtype == bgen.native_dtype == "float32"
    expected = imputed["dosage"]
    # BGEN stores the probabilities exactly; pgen rounds dosages to 1/16384; the VCF text to float32.
    np.testing.assert_allclose(bgen.read(), expected, atol=1e-6)
    np.testing.assert_allclose(pgen.read(), expected, atol=0.5 / 16384 + 1e-7)
    np.testing.assert_allclose(vcf.read(), expected, atol=1e-6)
    for src in (bgen, pgen, vcf):
        assert np.array_equal(np.isnan(src.read()), np.isnan(fileset.dosages))
    # GT of the same VCF still reads the hard calls.
    np.testing.assert_array_equal(open_genotypes(vcf=d / "imp.vcf").read(dtype="float32"),
                                  fileset.dosages.astype(np.float32))


def _impute_info(probs):
    out = []
    for j in range(probs.shape[1]):
        pj = probs[:, j]
        pj = pj[~np.isnan(pj).any(axis=1)]
        e = pj[:, 1] + 2 * pj[:, 2]
        e2 = pj[:, 1] + 4 * pj[:, 2]
        f = e.sum() / (2 * len(e))
        out.append(1 - (e2 - e**2).sum() / (2 * len(e) * f * (1 - f)))
    return np.array(out)


def test_bgen_info_is_the_impute_info_of_its_probabilities(imputed):
    src = open_genotypes(bgen=imputed["dir"] / "imp.bgen")
    expected = _impute_info(imputed["probs"])
    np.testing.assert_allclose(src.info_scores(), expected, rtol=1e-5)
    # Hard calls carry no uncertainty: INFO 1 (0/0 in the monomorphic last variant is 1 by convention).
    assert 0 < expected.min() < expected.max() < 1
    threshold = float(np.median(expected))
    kept = src.select_variants(min_info=threshold)
    assert list(kept.variants["variant_id"]) == list(src.variants["variant_id"][expected >= threshold])
    assert kept.n_removed_by_info == int((expected < threshold).sum())
    np.testing.assert_allclose(kept.info_scores(), expected[expected >= threshold], rtol=1e-5)


@pytest.mark.parametrize("kind", ["pfile", "vcf"])
def test_min_info_reads_r2_from_the_info_column(imputed, kind):
    d = imputed["dir"]
    src = open_genotypes(pfile=d / "imp") if kind == "pfile" else open_genotypes(vcf=d / "imp.vcf", vcf_dosage="DS")
    np.testing.assert_allclose(src.info_scores(), imputed["info"], rtol=1e-5)
    kept = src.select_variants(min_info=0.6)
    info = imputed["info"]
    expected = [vid for vid, x in zip(src.variants["variant_id"], info) if not x < 0.6]
    assert list(kept.variants["variant_id"]) == expected
    assert "rs102" in expected  # no score: kept


def test_min_info_on_a_format_without_info_is_an_input_error(files):
    with pytest.raises(InputError, match="INFO"):
        _open(files, "bfile", min_info=0.8)
    with pytest.raises(InputError, match="INFO"):
        _open(files, "pfile", min_info=0.8)  # hard-call .pvar without INFO scores
    with pytest.raises(InputError, match="between 0 and 1"):
        _open(files, "bgen", min_info=1.5)


# ------------------------------------------------------------------ errors
def test_factory_names_the_problem(files, tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        open_genotypes()
    with pytest.raises(InputError, match="--bfile, --vcf"):
        open_genotypes(bfile=files / "g1", vcf=files / "g.vcf")
    with pytest.raises(InputError, match="--sample"):
        open_genotypes(vcf=files / "g.vcf", sample=files / "g.sample")
    with pytest.raises(InputError, match="not found"):
        open_genotypes(pfile=tmp_path / "nothing")
    with pytest.raises(InputError, match="not found"):
        open_genotypes(bgen=files / "g.bgen", sample=tmp_path / "none.sample")
    with pytest.raises(InputError, match="--vcf-dosage"):
        open_genotypes(bfile=files / "g1", vcf_dosage="DS")


def test_bgen_without_sample_ids_needs_a_sample_file(files, fileset, tmp_path):
    with pytest.raises(InputError, match="--sample"):
        BgenSource(files / "g.bgen")
    bad = tmp_path / "short.sample"
    bad.write_text("ID_1 ID_2 missing\n0 0 0\nA B 0\n")
    with pytest.raises(InputError, match="lists 1 samples"):
        BgenSource(files / "g.bgen", sample=bad)


def test_mismatched_sidecar_files_are_caught(files, fileset, tmp_path):
    import shutil

    other = make_fileset(n=41, p=9, seed=1)
    write_pgen(other, tmp_path / "other")
    shutil.copy(files / "g2.pgen", tmp_path / "mix.pgen")
    shutil.copy(tmp_path / "other.pvar", tmp_path / "mix.pvar")
    shutil.copy(tmp_path / "other.psam", tmp_path / "mix.psam")
    with pytest.raises(InputError, match="mix.pgen"):
        Plink2Source(tmp_path / "mix")
    write_bed(other, tmp_path / "b")
    shutil.copy(files / "g1.bed", tmp_path / "b.bed")
    with pytest.raises(InputError, match="do not belong"):
        Plink1Source(tmp_path / "b")


def test_vcf_without_the_dosage_field_and_psam_without_fid(files, fileset, tmp_path):
    with pytest.raises(InputError, match="FORMAT/DS"):
        VcfSource(files / "g.vcf", dosage_field="DS")
    write_pgen(fileset, tmp_path / "nofid", fid=False)
    src = Plink2Source(tmp_path / "nofid")
    assert not src.has_fid and list(src.samples["FID"]) == list(fileset.iid)


def test_provenance_records_files_and_a_fingerprint_that_tracks_the_selection(files):
    src = _open(files, "bgen")
    rec = src.input_record()
    assert [r["path"] for r in rec] == [str(files / "g.bgen"), str(files / "g.sample")]
    assert all(len(r["sha256"]) == 64 for r in rec)
    assert "sha256" not in src.input_record(hash_inputs=False)[0]
    assert src.fingerprint() == _open(files, "bgen").fingerprint()
    assert src.fingerprint() != src.select_variants(region="1").fingerprint()
    desc = src.describe()
    assert desc["format"] == "bgen" and "second allele" in desc["counted_allele"]


def test_tables_are_pandas_frames_with_the_documented_columns(files):
    src = _open(files, "pfile")
    assert list(src.samples.columns) == ["FID", "IID"]
    assert list(src.variants.columns) == ["variant_id", "chrom", "pos", "counted_allele", "other_allele", "info"]
    assert isinstance(src.variants, pd.DataFrame)
    assert src.variants["pos"].dtype == np.int64


def test_bcf_and_bgzipped_vcf_read_like_the_plain_vcf(files, fileset, tmp_path):
    from cyvcf2 import VCF, Writer

    for name, mode in (("g.bcf", "wb"), ("g.vcf.gz", "wz")):
        template = VCF(str(files / "g.vcf"))
        writer = Writer(str(tmp_path / name), template, mode=mode)
        for rec in template:
            writer.write_record(rec)
        writer.close()
        template.close()
        src = open_genotypes(vcf=tmp_path / name)
        np.testing.assert_array_equal(src.read(dtype="float32"), fileset.dosages.astype(np.float32))
        assert list(src.variants["counted_allele"]) == list(fileset.variants["alt"])


@pytest.mark.parametrize("kind", FORMATS)
def test_sources_pickle_for_worker_processes(files, kind):
    import pickle

    src = _open(files, kind, region="22")
    copy = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(copy.read(dtype="float32"), src.read(dtype="float32"))
    assert copy.fingerprint() == src.fingerprint()
    assert src.describe()["variant_selection"]["region"] == "22"
    assert _open(files, kind).selection.to_dict()["n_selected"] == 9
