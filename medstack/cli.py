"""``medstack``: run the embedded stack and build the model repository.

    medstack up [--pacs] | down | status | logs [COMPONENT]
    medstack export [NAME...] [--tensorrt] [--if-missing] [--allow-dirty]
    medstack evaluate [FAMILY...] [--quick]
"""

from __future__ import annotations

import logging
import subprocess
from typing import Annotated

import typer

from core.run_folder import RunFolder
from core.settings import settings
from medstack.keys_cli import keys_app
from medstack.stack import COMPONENTS, PACS_COMPONENTS, Stack, StackError
from medstack.valuation_cli import valuation_app

app = typer.Typer(help="MedStack: medical-imaging foundation models served by Triton.", no_args_is_help=True)
app.add_typer(valuation_app, name="valuation")
app.add_typer(keys_app, name="keys")


@app.command()
def up(
    pacs: Annotated[bool, typer.Option("--pacs", help="also Orthanc (Debian's orthanc, orthanc-dicomweb) and the "
                                       "DICOM listener (docs/pacs.md); kept on by later `up`s until `down`")] = False,
) -> None:
    """Start Triton, Redis (or use MEDSTACK_REDIS_URL), a Celery worker and the gateway."""
    try:
        state = Stack(settings).up(echo=typer.echo, pacs=pacs)
    except StackError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"MedStack is up: gateway {state['gateway_url']}  (stop with `medstack down`)")


@app.command()
def down() -> None:
    """Stop what `medstack up` started (never a Redis it did not start)."""
    Stack(settings).down(echo=typer.echo)


@app.command()
def status() -> None:
    """Health of each component."""
    report = Stack(settings).status()
    for name, line in report.items():
        typer.echo(f"{name:8s} {line}")
    if any("DOWN" in line for line in report.values()):
        raise typer.Exit(1)


@app.command()
def logs(
    component: Annotated[str, typer.Argument(help=f"one of {', '.join(COMPONENTS + PACS_COMPONENTS)}")] = "gateway",
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
) -> None:
    """Show a component's log."""
    if component not in COMPONENTS + PACS_COMPONENTS:
        raise typer.BadParameter(f"unknown component {component!r}; choose from "
                                 f"{', '.join(COMPONENTS + PACS_COMPONENTS)}")
    path = RunFolder(settings.run_dir).log_file(component)
    if not path.exists():
        typer.echo(f"no log yet at {path}", err=True)
        raise typer.Exit(1)
    subprocess.run(["tail", f"-n{lines}", *(["-f"] if follow else []), str(path)])


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train the segmentation family: `medstack train vf-pretrain|segmentation --out DIR [...]` (`-h` for options)."""
    from services.segmentation.train import main

    raise typer.Exit(main(ctx.args))


@app.command("export")
def export_models(
    names: Annotated[list[str] | None, typer.Argument(help="models to export (default: all)")] = None,
    tensorrt: Annotated[bool, typer.Option("--tensorrt", help="also build TensorRT plans (GPU hosts)")] = False,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="skip models that have a version")] = False,
    allow_dirty: Annotated[bool, typer.Option("--allow-dirty", help="export even when tracked files differ from "
                                              "HEAD; the manifest records dirty: true")] = False,
) -> None:
    """Export models to ONNX, check parity, write the Triton model repository.

    Refuses when tracked files differ from HEAD (a served version must be re-creatable from the commit
    its manifest names) unless --allow-dirty; nothing to export (--if-missing, all present) never refuses.
    """
    from export.manifest import DirtyTreeError, require_clean_tree, versions
    from export.onnx_export import ExportError
    from export.pipeline import export_model
    from export.python_model import export_python_model
    from export.registry import get_spec, model_names
    from export.spec import PythonModelSpec

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    todo = []
    for name in names or model_names():
        if if_missing and versions(settings.model_repository / name):
            typer.echo(f"{name}: present, skipped")
        else:
            todo.append(name)
    if todo:
        try:
            changed = require_clean_tree(allow_dirty)
        except DirtyTreeError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error
        if changed:
            typer.echo(f"warning: exporting from a dirty tree ({len(changed)} changed tracked file(s)); "
                       "the manifests record dirty: true", err=True)
    failed = False
    for name in todo:
        try:
            spec = get_spec(name)
            if isinstance(spec, PythonModelSpec):
                result = export_python_model(spec, settings.model_repository)
                typer.echo(f"{name}: version {result.version}  python model over {', '.join(spec.composes) or '-'}")
                continue
            result = export_model(spec, settings.model_repository, build_tensorrt=tensorrt)
        except (ExportError, KeyError) as error:
            typer.echo(f"{name}: FAILED: {error}", err=True)
            failed = True
            continue
        parity = result.manifest["parity"]
        typer.echo(
            f"{name}: version {result.version}  sha256 {result.manifest['sha256'][:12]}  "
            f"parity max-abs {parity['max_abs']:.2e} max-rel {parity['max_rel']:.2e}"
        )
    if failed:
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_families(
    families: Annotated[list[str] | None, typer.Argument(help="families to evaluate (default: all registered)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="small slices, checked against the recorded figures; "
                                        "writes nothing")] = False,
) -> None:
    """Held-out evaluation of each family beside its trivial baselines (docs/results/<family>.json)."""
    from medstack import evaluate

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        chosen = evaluate.resolve(families or [])
    except KeyError as error:
        raise typer.BadParameter(str(error.args[0])) from error
    if not quick:
        for evaluation in chosen:
            document = evaluate.run_full(evaluation, typer.echo)
            typer.echo(evaluate.table(document))
        return
    found: list[evaluate.Regression] = []
    for evaluation in chosen:
        try:
            found += evaluate.run_quick(evaluation, typer.echo)
        except FileNotFoundError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error
    for regression in found:
        typer.echo(f"REGRESSION {regression}", err=True)
    if found:
        raise typer.Exit(1)
    typer.echo(f"no regression in {', '.join(e.family for e in chosen)}")


if __name__ == "__main__":
    app()
