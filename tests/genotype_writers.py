"""Write one genotype matrix as PLINK 1, PLINK 2, BGEN v1.2 and VCF, for the genotype-source tests.

Every writer takes the same inputs: an (n, p) matrix of ALT-allele dosages
(NaN for missing), sample IDs and a variant table with REF and ALT, so each
format must give back the same dosages of the same (ALT) allele.

No Python package writes BGEN, so `write_bgen` implements the part of the
BGEN v1.2 specification (https://www.well.ox.ac.uk/~gav/bgen_format/spec/v1.2.html)
the tests need: layout 2, zlib-compressed variant blocks, unphased diploid
biallelic probabilities stored with 8 bits, sample IDs in the file and/or an
Oxford .sample file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Fileset:
    dosages: np.ndarray  # (n, p) float, NaN missing: ALT dosage
    fid: np.ndarray
    iid: np.ndarray
    variants: pd.DataFrame  # variant_id, chrom, pos, ref, alt


def make_fileset(n=40, p=9, missing_rate=0.05, seed=0, chroms=("1", "2", "22")) -> Fileset:
    """Hard calls on several chromosomes with missing calls; one variant monomorphic."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.1, 0.6, size=p)
    G = rng.binomial(2, freq, size=(n, p)).astype(float)
    G[:, -1] = 0.0  # monomorphic, so QC has something to remove
    G[rng.random((n, p)) < missing_rate] = np.nan
    per_chrom = -(-p // len(chroms))
    chrom = [chroms[j // per_chrom] for j in range(p)]
    pos = [1000 * (j % per_chrom + 1) + 17 for j in range(p)]
    bases = np.array(list("ACGT"))
    ref = bases[rng.integers(0, 4, size=p)]
    alt = np.array([bases[(list(bases).index(r) + 1 + rng.integers(0, 3)) % 4] for r in ref])
    variants = pd.DataFrame({
        "variant_id": [f"rs{100 + j}" for j in range(p)], "chrom": chrom, "pos": pos, "ref": ref, "alt": alt,
    })
    fid = np.array([f"F{i:03d}" for i in range(n)], dtype=object)
    iid = np.array([f"S{i:03d}" for i in range(n)], dtype=object)
    return Fileset(G, fid, iid, variants)


# ------------------------------------------------------------------ PLINK 1
def write_bed(fs: Fileset, prefix: Path) -> Path:
    """A1 = ALT, so bed-reader's default count_A1 counts ALT as every other format does."""
    from bed_reader import to_bed

    v = fs.variants
    to_bed(
        Path(str(prefix) + ".bed"), fs.dosages.astype(np.float32),
        properties={
            "fid": fs.fid, "iid": fs.iid, "sid": v["variant_id"].to_numpy(), "chromosome": v["chrom"].to_numpy(),
            "bp_position": v["pos"].to_numpy(), "allele_1": v["alt"].to_numpy(), "allele_2": v["ref"].to_numpy(),
        },
    )
    return Path(prefix)


# ------------------------------------------------------------------ PLINK 2
def write_pgen(fs: Fileset, prefix: Path, *, dosages: np.ndarray | None = None, info=None, fid=True) -> Path:
    """Hard calls (append_biallelic) or, with `dosages`, dosages (append_dosages); .pvar with INFO."""
    import pgenlib

    prefix = Path(prefix)
    n, p = fs.dosages.shape
    values = fs.dosages if dosages is None else dosages
    writer = pgenlib.PgenWriter(
        bytes(Path(str(prefix) + ".pgen")), n, variant_ct=p, nonref_flags=False, dosage_present=dosages is not None
    )
    for j in range(p):
        col = values[:, j]
        if dosages is None:
            writer.append_biallelic(np.where(np.isnan(col), -9, col).astype(np.int8))
        else:
            writer.append_dosages(np.where(np.isnan(col), -9, col).astype(np.float32))
    writer.close()
    v = fs.variants
    info_col = ["." if info is None or np.isnan(info[j]) else f"R2={info[j]:.6g}" for j in range(p)]
    with open(str(prefix) + ".pvar", "w") as fh:
        fh.write("##fileformat=PVARv1.0\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for j in range(p):
            fh.write(f"{v.chrom[j]}\t{v.pos[j]}\t{v.variant_id[j]}\t{v.ref[j]}\t{v.alt[j]}\t.\t.\t{info_col[j]}\n")
    with open(str(prefix) + ".psam", "w") as fh:
        fh.write("#FID\tIID\tSEX\n" if fid else "#IID\tSEX\n")
        fh.writelines(f"{f}\t{i}\tNA\n" if fid else f"{i}\tNA\n" for f, i in zip(fs.fid, fs.iid))
    return prefix


# --------------------------------------------------------------------- VCF
def write_vcf(fs: Fileset, path: Path, *, dosages: np.ndarray | None = None, info=None, gt=True) -> Path:
    """Plain-text VCF 4.2 with GT (from the hard calls) and, with `dosages`, DS; INFO/R2 when `info` is given."""
    p = fs.dosages.shape[1]
    v = fs.variants
    fmt = ":".join((["GT"] if gt else []) + (["DS"] if dosages is not None else []))
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={c}>" for c in dict.fromkeys(v.chrom)]
    if info is not None:
        lines.append('##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated imputation accuracy">')
    if gt:
        lines.append('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    if dosages is not None:
        lines.append('##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage">')
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *fs.iid]))
    gt_text = np.array(["0/0", "0/1", "1/1", "./."], dtype=object)
    for j in range(p):
        g = fs.dosages[:, j]
        parts = []
        if gt:
            parts.append(gt_text[np.where(np.isnan(g), 3, np.nan_to_num(g)).astype(int)])
        if dosages is not None:
            d = dosages[:, j]
            parts.append(np.array(["." if np.isnan(x) else repr(float(x)) for x in d], dtype=object))
        cells = parts[0] if len(parts) == 1 else np.char.add(np.char.add(parts[0].astype(str), ":"),
                                                              parts[1].astype(str))
        info_text = "." if info is None or np.isnan(info[j]) else f"R2={info[j]:.6g}"
        lines.append("\t".join([str(v.chrom[j]), str(v.pos[j]), v.variant_id[j], v.ref[j], v.alt[j], ".", "PASS",
                                info_text, fmt, *map(str, cells)]))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


# --------------------------------------------------------------------- BGEN
def hardcall_probabilities(G: np.ndarray) -> np.ndarray:
    """(n, p, 3) probabilities of 0, 1, 2 copies of the second allele; NaN rows where missing."""
    probs = np.zeros(G.shape + (3,))
    for k in range(3):
        probs[..., k] = G == k
    probs[np.isnan(G)] = np.nan
    return probs


def _quantise(probs: np.ndarray, units: int = 255) -> np.ndarray:
    """Probabilities (rows of 3 summing to 1) as integers summing to `units`: floor, then the
    remaining units to the largest remainders (the rounding the BGEN spec describes)."""
    scaled = probs * units
    k = np.floor(scaled + 1e-9)
    rest = np.rint(units - k.sum(axis=1)).astype(int)
    rank = np.argsort(np.argsort(-(scaled - k), axis=1, kind="stable"), axis=1, kind="stable")
    k += rank < rest[:, None]
    return k.astype(np.uint8)


def _u16(s: bytes) -> bytes:
    return struct.pack("<H", len(s)) + s


def write_bgen(fs: Fileset, path: Path, *, probabilities: np.ndarray | None = None, sample_ids_in_file=True,
               sample_file: Path | None = None) -> Path:
    """BGEN v1.2, layout 2, zlib, 8-bit probabilities; allele 1 = REF, allele 2 = ALT (ref-first).

    `probabilities` (n, p, 3) of 0/1/2 ALT copies, NaN for a missing sample;
    default: the hard calls of `fs`. They are quantised to k/255 with
    the rounding the spec describes (largest remainders), so a probability that is
    already a multiple of 1/255 is stored exactly.
    """
    n, p = fs.dosages.shape
    probs = hardcall_probabilities(fs.dosages) if probabilities is None else np.asarray(probabilities, float)
    v = fs.variants
    flags = 1 | (2 << 2) | ((1 << 31) if sample_ids_in_file else 0)
    header = struct.pack("<I", 20) + struct.pack("<II", p, n) + b"bgen" + struct.pack("<I", flags)
    sample_block = b""
    if sample_ids_in_file:
        body = b"".join(_u16(str(s).encode()) for s in fs.iid)
        sample_block = struct.pack("<II", 8 + len(body), n) + body
    out = bytearray(struct.pack("<I", len(header) + len(sample_block)) + header + sample_block)
    for j in range(p):
        out += _u16(str(v.variant_id[j]).encode()) + _u16(str(v.variant_id[j]).encode())
        out += _u16(str(v.chrom[j]).encode()) + struct.pack("<I", int(v.pos[j]))
        out += struct.pack("<H", 2) + struct.pack("<I", len(v.ref[j])) + v.ref[j].encode()
        out += struct.pack("<I", len(v.alt[j])) + v.alt[j].encode()
        pj = probs[:, j, :]
        missing = np.isnan(pj).any(axis=1)
        ploidy = np.where(missing, 0x80 | 2, 2).astype(np.uint8)
        stored = _quantise(np.where(missing[:, None], 0.0, pj))[:, :2]
        stored[missing] = 0
        data = struct.pack("<IHBB", n, 2, 2, 2) + ploidy.tobytes() + struct.pack("<BB", 0, 8) + stored.tobytes()
        comp = zlib.compress(data)
        out += struct.pack("<II", len(comp) + 4, len(data)) + comp
    Path(path).write_bytes(bytes(out))
    if sample_file is not None:
        rows = ["ID_1 ID_2 missing", "0 0 0"] + [f"{f} {i} 0" for f, i in zip(fs.fid, fs.iid)]
        Path(sample_file).write_text("\n".join(rows) + "\n")
    return Path(path)
