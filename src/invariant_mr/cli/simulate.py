"""`invariant-mr simulate`: write a simulated data set with its truth."""

from __future__ import annotations

import json
from pathlib import Path

import click

from invariant_mr.cli.common import SEED, command_line, paper_recipe_options
from invariant_mr.io.output import OutputDirectory, atomic_write_text
from invariant_mr.provenance import json_default, make_provenance
from invariant_mr.simulation.genetic_dataset import GENETIC_MODELS
from invariant_mr.simulation.paper import PAPER_SETTINGS


@click.command()
@click.option("--model", type=click.Choice(["paper", *GENETIC_MODELS]), default="paper", show_default=True,
              help="sibships: sibling pairs (FID = family) under stratification, assortative mating and a dynastic effect; "
                   "demes: fine-scale structure (8 demes per region) with a local confounder; nonlinear-ancestry: "
                   "confounding a nonlinear function of admixed ancestry")
@click.option("--setting", type=click.Choice(list(PAPER_SETTINGS)), default="linear", show_default=True, help="paper model: mixing setting")
@click.option("--envs", "n_envs", type=click.IntRange(2), default=None, help="number of environments / populations [default: 2 for paper, 3 for balding-nichols and assortative; coalescent: every population of the demography]")
@click.option("--n-per-env", type=click.IntRange(2), default=3000, show_default=True)
@click.option("--theta", type=float, default=1.0, show_default=True, help="true causal effect")
@click.option("--n-variants", type=click.IntRange(1), default=500, show_default=True, help="genetic models: number of variants")
@click.option("--fst", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True, help="balding-nichols: F_ST")
@click.option("--demography", default="OutOfAfrica_3G09", show_default=True, help="coalescent: stdpopsim HomSap model")
@click.option("--length-mb", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True, help="coalescent: simulated Mb")
@click.option("--generations", type=click.IntRange(0), default=5, show_default=True, help="assortative: generations of assortative mating")
@click.option("--admixture", type=click.FloatRange(0, 1, max_open=True), default=None, help="balding-nichols: mean share of ancestry from other populations [default: 0.1]")
@click.option("--mating-correlation", type=click.FloatRange(0, 1, max_open=True), default=None, help="assortative: partner phenotype correlation in the last population (the first mates at random) [default: 0.5]")
@click.option("--mating-traits", type=click.Choice(["cross", "exposure"]), default=None, help="assortative: pair one partner's exposure with the other's outcome (cross) or exposure with exposure [default: cross]")
@paper_recipe_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed for every random step")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
def simulate(model, setting, n_envs, n_per_env, theta, n_variants, fst, demography, length_mb, generations,
             admixture, mating_correlation, mating_traits, noise, weights, mix_seed, mixing_recipe, seed, out_dir,
             overwrite):
    """Write a simulated data set with its truth (table for `paper`, PLINK fileset otherwise)."""
    out = OutputDirectory(out_dir, overwrite)
    out.check()
    if model == "paper":
        from invariant_mr.simulation import simulate_paper
        from invariant_mr.io.tables import mrdata_to_table

        sim = simulate_paper(setting, n_envs=n_envs or 2, n_per_env=n_per_env, theta=theta, seed=seed, noise=noise,
                             weights=weights, mix_seed=mix_seed, mixing_recipe=mixing_recipe)
        truth = {**sim.truth_dict(), "provenance": make_provenance(
            command=command_line(), parameters={"model": model, **sim.params, "theta": theta}, seed=seed)}
        with out:
            atomic_write_text(out.path / "data.tsv", mrdata_to_table(sim.data).to_csv(sep="\t", index=False))
            atomic_write_text(out.path / "truth.json", json.dumps(truth, indent=2, default=json_default))
        click.echo(f"wrote {out_dir}/data.tsv ({sim.data.n} samples, {sim.data.p} instruments) and truth.json")
        return
    from invariant_mr.simulation.genetic_dataset import simulate_genetic, write_fileset_into

    params = dict(n_envs=n_envs, n_per_env=n_per_env, n_variants=n_variants, fst=fst, theta=theta,
                  demography=demography, length_mb=length_mb, generations=generations, admixture=admixture,
                  mating_correlation=mating_correlation, mating_traits=mating_traits, seed=seed)
    if model == "sibships":  # sibling pairs: --n-per-env individuals are n-per-env / 2 families
        params["n_families_per_env"] = max(n_per_env // 2, 1)
    sim = simulate_genetic(model, **params)
    with out:
        write_fileset_into(sim, out.path, command=command_line())
    click.echo(f"{sim.summary()}\nwrote {out_dir}/genotypes.bed/.bim/.fam, phenotypes.tsv and truth.json")
