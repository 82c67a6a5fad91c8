"""export and models: the ONNX cache and what is in it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from chatbot_llm.cli.app import short_path, cli, err
from chatbot_llm.errors import UsageError
from chatbot_llm.models import DEFAULT_VARIANT, VARIANTS


# ---------------------------------------------------------------- export and models

@cli.command()
@click.argument("model")
@click.option("--variant", type=click.Choice(VARIANTS + ("all",)), default=DEFAULT_VARIANT, show_default=True)
@click.option("--force", is_flag=True, help="Export again even when the export is up to date.")
def export(model: str, variant: str, force: bool) -> None:
    """Export MODEL (a known name or a checkpoint folder) to ONNX, once."""
    from chatbot_llm.models import ensure_export, resolve_model

    ref = resolve_model(model)
    for name in VARIANTS if variant == "all" else (variant,):
        status = ref.status(name)
        if status.ok and not force:
            click.echo(f"{ref.export_dir(name)}: up to date (use --force to export again)")
            continue
        started = time.perf_counter()
        with err.status(f"exporting {ref.name} ({name})") as spinner:
            folder = ensure_export(ref, name, on_stage=lambda s, name=name: spinner.update(f"{ref.name} ({name}): {s}"),
                                   force=force)
        manifest = json.loads((folder / "manifest.json").read_text())
        parity, files = manifest["parity"], manifest["onnx"]
        size = (files["size"] + sum(d["size"] for d in files.get("data", {}).values())) / 1e6
        click.echo(
            f"{folder}: exported in {time.perf_counter() - started:.1f}s, {size:.1f} MB; "
            f"max |delta logits| vs PyTorch {parity['max_abs_logits_delta']:.2e}, "
            f"greedy agreement {parity['greedy_token_agreement']:.0%}"
        )


@cli.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(as_json: bool) -> None:
    """Known models, their folders, and the export status of each variant."""
    from chatbot_llm.export.manifest import ExportStatus, check_export, read_manifest
    from chatbot_llm.models import KNOWN_MODELS, onnx_cache_dir, project_root, resolve_model

    rows = []
    for name, folder in KNOWN_MODELS.items():
        path = project_root() / "models" / folder
        try:
            ref = resolve_model(name)
            statuses = {v: ref.status(v) for v in VARIANTS}
        except UsageError:
            statuses = {v: ExportStatus("no checkpoint") for v in VARIANTS}
        rows.append(({"name": name, "folder": str(path)}, statuses))
    cache = onnx_cache_dir()
    for folder in sorted(cache.iterdir()) if cache.is_dir() else []:
        if folder.name in KNOWN_MODELS or not folder.is_dir() or folder.name.startswith("."):
            continue
        source = None
        for v in VARIANTS:
            try:
                source = source or read_manifest(folder / v)["source"]["path"]
            except (UsageError, KeyError, TypeError):
                pass
        statuses = {v: check_export(folder / v, Path(source) if source else None, v) for v in VARIANTS}
        rows.append(({"name": folder.name, "folder": source or "?"}, statuses))
    if as_json:
        click.echo(json.dumps([{**row, **{v: s.describe() for v, s in st.items()}} for row, st in rows], indent=2))
        return
    colours = {"ok": "green", "stale": "yellow", "corrupt": "red"}
    table = Table(title=f"models (exports in {short_path(cache)})", caption="chatbot-llm models --json gives the reasons")
    for column in ("name", "folder") + VARIANTS:
        table.add_column(column, overflow="fold")
    for row, statuses in rows:
        cells = [f"[{colours.get(s.state, 'dim')}]{s.state}[/]" for s in statuses.values()]
        table.add_row(row["name"], short_path(Path(row["folder"])), *cells)
    Console().print(table)


