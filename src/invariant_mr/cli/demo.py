"""`invariant-mr demo`: simulate a built-in data set and analyse it exactly as `run` would."""

from __future__ import annotations

import json
from pathlib import Path

import click

from invariant_mr.cli.common import (
    SectionedCommand,
    analysis_options,
    command_line,
    method_context,
    option,
    paper_recipe_options,
    simulation_option,
    terminal_text,
    write_result_files,
    write_run_extras,
)
from invariant_mr.io.output import OutputDirectory
from invariant_mr.provenance import json_default
from invariant_mr.simulation.paper import PAPER_SETTINGS


@click.command(cls=SectionedCommand)
@simulation_option("--model", type=click.Choice(["paper", "balding-nichols"]), default="paper", show_default=True,
              help="paper: the paper's simulator (table data); balding-nichols: a simulated PLINK fileset "
                   "(F_ST 0.1, 500 variants) written to OUT/data and read back as `run --bfile` would")
@simulation_option("--setting", type=click.Choice(list(PAPER_SETTINGS)), default="linear", show_default=True,
              help="paper simulation setting (mixing of the latent blocks)")
@simulation_option("--envs", "n_envs", type=click.IntRange(2, 3), default=None,
              help="environments [default: 2 for paper, 3 for balding-nichols]")
@simulation_option("--n-per-env", type=click.IntRange(100), default=None,
              help="samples per environment [default: 3000 for paper, 2000 for balding-nichols]")
@paper_recipe_options
@option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("invariant-mr-demo"), show_default=True, section="Output")
@analysis_options
def demo(model, setting, n_envs, n_per_env, noise, weights, mix_seed, mixing_recipe, out_dir, methods, seed, alpha,
         cov_type, per_env, overwrite, quiet, **option_values):
    """Simulate a built-in data set, run every default method and compare with the truth."""
    from invariant_mr.pipeline import run_analysis

    ctx = method_context(seed, alpha, cov_type, per_env, quiet, option_values)
    out = OutputDirectory(out_dir, overwrite)
    out.check()
    if model == "balding-nichols":
        _demo_plink(out, ctx, methods, quiet, n_envs or 3, n_per_env or 2000, seed)
        return
    from invariant_mr.simulation import simulate_paper

    n_envs, n_per_env = n_envs or 2, n_per_env or 3000
    sim = simulate_paper(setting, n_envs=n_envs, n_per_env=n_per_env, seed=seed, noise=noise, weights=weights,
                         mix_seed=mix_seed, mixing_recipe=mixing_recipe)
    result = run_analysis(
        sim.data, methods, ctx, command=command_line(),
        parameters={"simulation": sim.params}, truth=sim.truth_dict(),
    )
    with out:
        written = write_result_files(result, out.path)
        written += write_run_extras(result, out.path, sim.data, instruments_out=True)
    if not quiet:
        click.echo(f"Simulated paper setting '{setting}', K={n_envs}, n={n_per_env} per environment; true effect {sim.theta:g}\n")
        click.echo(terminal_text(result, sim.data, True))
        click.echo(f"\nwrote {', '.join(f'{out_dir}/{name}' for name in written)}")


def _demo_plink(out, ctx, methods, quiet, n_envs: int, n_per_env: int, seed: int) -> None:
    """`demo --model balding-nichols`: simulate a PLINK fileset, then analyse it exactly as `run --bfile` does."""
    from invariant_mr.io.genetic_input import load_genetic_data
    from invariant_mr.pipeline import run_analysis
    from invariant_mr.simulation.genetic_dataset import GENOTYPE_PREFIX, PHENOTYPE_FILE, simulate_genetic, write_fileset_into

    sim = simulate_genetic("balding-nichols", n_envs=n_envs, n_per_env=n_per_env, n_variants=500, fst=0.1, seed=seed)
    with out:
        data_dir = out.path / "data"
        data_dir.mkdir()
        write_fileset_into(sim, data_dir, command=command_line())
        loaded = load_genetic_data(
            bfile=data_dir / GENOTYPE_PREFIX, pheno=data_dir / PHENOTYPE_FILE, env_col="environment",
            exposure="exposure", outcome="outcome", covariates=("age", "sex"),
        )
        # The files were read from the staging directory; provenance names them where they will be.
        staged, final = str(out.path.resolve()), str(out.final.resolve())

        def at_final(record):
            return json.loads(json.dumps(record, default=json_default).replace(staged, final))

        result = run_analysis(
            loaded.data, methods, ctx, command=command_line(), parameters=at_final(dict(loaded.parameters)),
            inputs=at_final([dict(i) for i in loaded.inputs]), extra_provenance=at_final(loaded.provenance()),
            truth={"theta": sim.theta},
        )
        written = ["data/"] + write_result_files(result, out.path)
        written += write_run_extras(result, out.path, loaded.data, qc_tsv=loaded.qc.to_tsv(), instruments_out=True)
    if not quiet:
        click.echo(f"{sim.summary()}\n")
        click.echo(loaded.summary() + "\n")
        click.echo(terminal_text(result, loaded.data, True))
        click.echo(f"\nwrote {out.final}/" + ", ".join(written))


# ------------------------------------------------------------------ commands
