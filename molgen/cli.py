"""The ``molgen`` command line. Thin: parse flags, call library functions, print.

User errors (:class:`molgen.errors.MolgenError`) become one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import sys

import click

from molgen import __version__
from molgen.errors import MolgenError
from molgen.zoo import pretrained_names


def _family_choice() -> click.Choice:
    from molgen.models.registry import family_names

    return click.Choice(family_names())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="molgen")
def cli() -> None:
    """molgen: conditional molecule generation on one E(3)-equivariant backbone."""


@cli.command()
@click.option("--model", "model", type=_family_choice(), required=False, help="Generative family.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML file with config overrides.")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE", help="Override one config key, e.g. train.lr=1e-3.")
@click.option("--preset", help="Named preset from configs/presets (tiny: CPU-minute test run; demo: ~10 min CPU).")
@click.option("--condition", multiple=True, metavar="PROP", help="Condition on a QM9 property (repeatable).")
@click.option("--split", type=click.Choice(["train", "da", "db"]), help="Training split (db for the EDM conditional protocol).")
@click.option("--steps", type=int, help="Optimizer steps.")
@click.option("--epochs", type=int, help="Epochs (instead of --steps).")
@click.option("--device", help="auto (default), cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlruns.db).")
@click.option("--resume", "resume", metavar="RUN_OR_PATH", help="Continue a run (MLflow run id or checkpoint path).")
@click.option("--chunk-steps", type=int, metavar="N", help="With --resume: stop after N more steps (schedule unchanged).")
def train(model, config_path, set_items, preset, condition, split, steps, epochs, device, seed, tracking_uri, resume,
          chunk_steps) -> None:
    """Train a model on QM9 and log it to MLflow."""
    from molgen.config import deep_update, parse_set, resolve_config
    from molgen.models.registry import get_family
    from molgen.resume import resume_training
    from molgen.train import train as run_training

    if resume:
        ignored = [flag for flag, value in (("--model", model), ("--config", config_path), ("--preset", preset),
                                            ("--condition", condition), ("--split", split), ("--epochs", epochs),
                                            ("--seed", seed)) if value]
        if ignored:
            raise MolgenError(f"{', '.join(ignored)} do not apply with --resume (the run's config is in its "
                              "checkpoint; --set KEY=VALUE branches it into a new run)")
        result = resume_training(resume, tracking_uri=tracking_uri, steps=steps, device=device,
                                 overrides=parse_set(set_items), chunk_steps=chunk_steps)
    else:
        if model is None:
            raise MolgenError("--model is required (or --resume)")
        if chunk_steps is not None:
            raise MolgenError("--chunk-steps applies with --resume (a new run trains to --steps)")
        overrides = parse_set(set_items)
        flags: dict = {"train": {}, "data": {}}
        if condition:
            flags["data"]["properties"] = list(condition)
        if split:
            flags["data"]["split"] = split
        if steps is not None:
            flags["train"]["steps"] = steps
        if epochs is not None:
            flags["train"]["epochs"] = epochs
        if device:
            flags["train"]["device"] = device
        if seed is not None:
            flags["train"]["seed"] = seed
        family = get_family(model)
        cfg = resolve_config(model, family.config_cls, config_path=config_path, preset=preset,
                             overrides=deep_update(overrides, flags))
        result = run_training(cfg, tracking_uri=tracking_uri)
    if not result.is_main:  # DDP ranks > 0 stay quiet
        return
    from molgen.tracking import resolve_tracking_uri

    if result.interrupted:
        raise MolgenError(
            f"interrupted at step {result.step}; checkpoint saved to {result.checkpoint}; "
            f"resume with: molgen train --resume {result.run_id}",
            exit_code=130,
        )
    click.echo(f"\nMLflow run:  {result.run_id}  (store: {resolve_tracking_uri(tracking_uri)}; view with: molgen ui)")
    click.echo(f"checkpoint:  {result.checkpoint}")
    if result.chunk_end:
        click.echo(f"chunk ended at step {result.step}; continue with: molgen train --resume {result.checkpoint}")
    if result.samples_sdf:
        click.echo(f"samples:     {result.samples_sdf}")
    _print_metrics(result.metrics)


def _print_metrics(metrics: dict[str, float]) -> None:
    """The headline metrics, 4 significant digits (per-type geometry entries are in the JSON / MLflow run)."""
    for key, value in metrics.items():
        if "_by_type/" not in key:
            click.echo(f"  {key:<28} {value:.4g}")


@cli.command()
@click.option("--run", "run_id", help="MLflow run id of a trained model.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Checkpoint file instead of --run.")
@click.option("--pretrained", type=click.Choice(pretrained_names()),
              help="A model shipped with molgen instead of --run (no training needed; README lists what each is).")
@click.option("--model-uri", metavar="URI",
              help="An MLflow model molgen logged: models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model.")
@click.option("-n", "n", type=int, default=100, show_default=True, help="Number of molecules.")
@click.option("--target", multiple=True, metavar="PROP=VALUE[UNIT]",
              help="Property target, e.g. gap=6.5eV, mu=2D, alpha=75Bohr3, Cv=30cal/mol/K (energies: eV, meV or Ha).")
@click.option("--n-atoms", type=int, help="Atom count of every molecule (default: drawn from the training data).")
@click.option("--guidance", type=float, help="Classifier-free guidance weight w (0: plain conditional).")
@click.option("--steps", type=int, help="Sampling steps (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--tracking-uri", help="MLflow tracking URI (for --run and --model-uri).")
@click.option("--tol", multiple=True, metavar="PROP=VALUE[UNIT]",
              help="Hit-rate tolerance per target (defaults: alpha=1Bohr3 gap=0.2eV homo=0.1eV lumo=0.2eV mu=0.3D Cv=0.5).")
@click.option("--scaffold", metavar="SMILES", help="Scaffold the molecules should contain (families that support it).")
@click.option("--sample-opt", "sample_opts", multiple=True, metavar="KEY=VALUE",
              help="Family sampler option, e.g. temperature=0.8, sampler=ode, composition=product (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output file: .sdf, .xyz, .smi or .csv.")
def generate(run_id, checkpoint, pretrained, model_uri, n, target, n_atoms, guidance, steps, seed, device, tracking_uri,
             tol, scaffold, sample_opts, out) -> None:
    """Generate molecules from a trained model and score what was written.

    With --target, the oracle predicts each molecule's properties (written into the SDF/CSV with the
    error to target) and the MAE per property and the hit rate are printed. Without --n-atoms, atom
    counts are drawn from the training data given the targets.
    """
    from molgen.generate import generate_molecules

    report = generate_molecules(
        run_id=run_id, checkpoint=checkpoint, n=n, targets=list(target), n_atoms=n_atoms, guidance=guidance,
        steps=steps, seed=seed, device=device, tracking_uri=tracking_uri, out=out, sample_opts=list(sample_opts),
        scaffold=scaffold, tol=list(tol), pretrained=pretrained, model_uri=model_uri,
    )
    click.echo(f"wrote {report['n']} molecules to {out}")
    _print_metrics({k: v for k, v in report.items() if k != "n"})


@cli.command()
@click.option("--run", "run_id", help="MLflow run id of a trained model (results are logged into it).")
@click.option("--pretrained", type=click.Choice(pretrained_names()),
              help="A shipped model instead of --run (results go to a new MLflow run).")
@click.option("-n", "n", type=int, default=1000, show_default=True, help="Molecules to sample and score.")
@click.option("--steps", type=int, help="Sampling steps (default: the model's).")
@click.option("--nll-molecules", type=int, default=1000, show_default=True,
              help="Test molecules for the NLL estimate (0: skip).")
@click.option("--protocol", type=click.Choice(["unconditional", "edm-conditional", "gdss"]), default="unconditional",
              show_default=True, help="edm-conditional: EDM's conditional MAE protocol (needs --property); "
              "gdss: GDSS's 2D protocol (validity without correction, FCD vs the test split; use -n 10000).")
@click.option("--property", "prop", metavar="PROP", help="Property of the edm-conditional protocol, e.g. gap.")
@click.option("--guidance", type=float, help="Classifier-free guidance weight for the conditional protocol.")
@click.option("--sample-opt", "sample_opts", multiple=True, metavar="KEY=VALUE",
              help="Family sampler option for the conditional protocol, e.g. temperature=0.8 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--tracking-uri", help="MLflow tracking URI.")
def evaluate(run_id, pretrained, n, steps, nll_molecules, protocol, prop, guidance, sample_opts, seed, device,
             tracking_uri) -> None:
    """Sample from a trained run (or a shipped model), score the samples and the test NLL, log them to MLflow."""
    from molgen.evaluate import evaluate_conditional_run, evaluate_gdss_run, evaluate_run

    if protocol == "edm-conditional":
        if not prop:
            raise MolgenError("--protocol edm-conditional needs --property PROP (e.g. --property gap)")
        result, logged = evaluate_conditional_run(
            run_id, prop, n=n, steps=steps, guidance=guidance, seed=seed, tracking_uri=tracking_uri, device=device,
            sample_opts=list(sample_opts), pretrained=pretrained)
        click.echo(f"EDM conditional protocol, {result.n} samples ({result.unusable} without coordinates); "
                   f"logged into MLflow run {logged}:")
        click.echo(result.table())
        return
    if protocol == "gdss":
        metrics, logged = evaluate_gdss_run(run_id, n=n, seed=seed, tracking_uri=tracking_uri, device=device,
                                            sample_opts=list(sample_opts), pretrained=pretrained)
        click.echo(f"GDSS 2D protocol, {n} samples; logged into MLflow run {logged}:")
        _print_metrics(metrics)
        return
    if sample_opts:
        raise MolgenError("--sample-opt applies to --protocol edm-conditional and gdss only")
    metrics, logged = evaluate_run(run_id, n=n, steps=steps, nll_molecules=nll_molecules, seed=seed,
                                   tracking_uri=tracking_uri, device=device, pretrained=pretrained)
    click.echo(f"logged into MLflow run {logged}:")
    _print_metrics(metrics)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--reference", default="qm9", show_default=True, help="qm9, moses, or a molecule file.")
@click.option("--train", "train_file", type=click.Path(dir_okay=False), help="Training molecules for novelty (with a file reference).")
@click.option("--n", "n", type=int, help="Score only the first N molecules.")
@click.option("--column", help="SMILES column of a CSV (default: auto-detected).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the metrics as a flat JSON object.")
@click.option("--name", help="MLflow run name (default: the file name).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes for RDKit features.")
@click.option("--metrics", "metric_set", default="all", show_default=True, metavar="SET",
              help="Comma-separated metric groups: basic, moses, fcd, embedding, prdc, geometry, all (those six); "
              "physics (MMFF strain, PoseBusters; slow, only by name: all,physics).")
@click.option("--tracking-uri", help="MLflow tracking URI.")
def benchmark(file, reference, train_file, n, column, out, name, jobs, metric_set, tracking_uri) -> None:
    """Score a generator's molecules (SMILES/CSV/SDF/XYZ) with the field's metrics."""
    from molgen.report import log_benchmark, write_json
    from molgen.metrics.suite import run_benchmark

    report = run_benchmark(file, reference=reference, train=train_file, n=n, column=column, n_jobs=jobs,
                           metrics=metric_set)
    click.echo(f"{file}: {report.read.n_total} records ({report.read.format}), reference {reference}")
    _print_metrics(report.metrics)
    if report.oracle_version:
        click.echo(f"  {'oracle_version':<28} {report.oracle_version}")
    for group, why in report.skipped.items():
        click.echo(f"note: skipped the {group} metrics: {why}", err=True)
    if out:
        write_json(report.as_json(), out)
        click.echo(f"wrote {out}")
    run_id = log_benchmark(report, file, name=name, tracking_uri=tracking_uri)
    click.echo(f"MLflow run: {run_id}")


@cli.command()
@click.argument("generators", nargs=-1, required=True, metavar="FILE_OR_RUN...")
@click.option("--reference", default="qm9", show_default=True, help="qm9, moses, or a molecule file.")
@click.option("--train", "train_file", type=click.Path(dir_okay=False), help="Training molecules for novelty (with a file reference).")
@click.option("-n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Molecules per generator: sampled for pretrained:NAME / qm9:SPLIT, the first N of a file or run.")
@click.option("--metrics", "metric_set", default="all", show_default=True, metavar="SET",
              help="Comma-separated metric groups: basic, moses, fcd, embedding, prdc, geometry, all (those six); "
              "physics (MMFF strain, PoseBusters; slow, only by name: all,physics).")
@click.option("--out", default="compare.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML report (a compare.json with every metric is written beside it).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampled generators.")
@click.option("--steps", type=int, help="Sampling steps of pretrained:NAME generators (default: the model's).")
@click.option("--device", default="auto", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes for RDKit features.")
@click.option("--name", help="MLflow run name.")
@click.option("--tracking-uri", help="MLflow tracking URI (also where run ids are looked up).")
def compare(generators, reference, train_file, n, metric_set, out, seed, steps, device, jobs, name, tracking_uri) -> None:
    """Score several generators side by side: files, MLflow run ids, pretrained:NAME or qm9:SPLIT.

    One reference and one set of rules for all; writes a self-contained HTML report and one MLflow run.
    """
    import tempfile
    from pathlib import Path

    from molgen.compare import compare as run_compare, log_comparison, resolve_contenders
    from molgen.compare_report import write_report
    from molgen.metrics.suite import parse_metric_groups
    from molgen.report import write_json_document

    parse_metric_groups(metric_set)  # a typo fails before any sampling
    with tempfile.TemporaryDirectory() as tmp:
        contenders = resolve_contenders(generators, n=n, seed=seed, workdir=Path(tmp), tracking_uri=tracking_uri,
                                        device=device, steps=steps)
        comparison = run_compare(contenders, reference=reference, metrics=metric_set, n=n, n_jobs=jobs,
                                 train=train_file)
        click.echo(comparison.table_markdown())
        report = write_report(comparison, out)
        data_file = write_json_document(comparison.as_json(), Path(out).with_suffix(".json"))
        click.echo(f"wrote {report} and {data_file}")
        run_id = log_comparison(comparison, [report, data_file], name=name, tracking_uri=tracking_uri)
    click.echo(f"MLflow run: {run_id}")


@cli.group()
def data() -> None:
    """Inspect datasets."""


@data.command("qm9")
@click.option("--cache-dir", help="Processed-cache folder (default: $MOLGEN_CACHE or ~/.cache/molgen).")
@click.option("--rebuild", is_flag=True, help="Re-process the source CSVs.")
def data_qm9(cache_dir, rebuild) -> None:
    """Counts, EDM split sizes and property statistics of QM9 (user units)."""
    from molgen.data.qm9 import format_qm9_summary, load_qm9

    click.echo(format_qm9_summary(load_qm9(cache_dir, rebuild=rebuild)))


@cli.command()
@click.option("--tracking-uri", help="MLflow tracking URI (default: ./mlruns.db).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(tracking_uri, port) -> None:
    """Start the MLflow UI on 127.0.0.1 for the run store."""
    from molgen.ui import launch_ui

    sys.exit(launch_ui(tracking_uri, port=port))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line errors, no tracebacks for user mistakes."""
    try:
        cli.main(args=argv, prog_name="molgen", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MolgenError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
