"""``crystalflow evaluate`` (built by the xtal-eval issue)."""

import typer

app = typer.Typer(help="Evaluate generated structures (CSP match rate/RMSE, DNG metrics).", no_args_is_help=True)
