"""`invariant-mr methods`: every method once, then each family's options once."""

from __future__ import annotations

import click

from invariant_mr.methods.registry import registered_methods


@click.command()
def methods():
    """List the estimation methods, then each family's options once."""
    specs = list(registered_methods().values())
    width = max(len(spec.name) + (0 if spec.default else 2) for spec in specs) + 2
    wrap = click.wrap_text
    click.echo("Methods (* = not run by default; name it in --methods):\n")
    for spec in specs:
        name = spec.name + ("" if spec.default else " *")
        click.echo(wrap(spec.description, width=100, initial_indent=f"  {name:<{width}}",
                        subsequent_indent=" " * (width + 2)))
    families: dict[str, list] = {}
    for spec in specs:
        for opt in spec.options:
            rows = families.setdefault(opt.group, [])
            if opt not in rows:
                rows.append(opt)
    for family, opts in families.items():
        users = [s.name for s in specs if any(o.group == family for o in s.options)]
        click.echo(f"\n{family} options ({', '.join(users)}):")
        flag_width = max(len(o.flag) for o in opts) + 2
        for opt in opts:
            click.echo(wrap(f"{opt.help} [default: {opt.default}]", width=100,
                            initial_indent=f"  {opt.flag:<{flag_width}}", subsequent_indent=" " * (flag_width + 2)))
