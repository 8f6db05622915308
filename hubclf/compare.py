"""``hubclf compare``: train the same model on the same data with several transfer strategies, each with the same
budget (epochs, batch size, seed) and its own learning rate, and measure them side by side.

Strategies: ``head`` (frozen backbone, new classifier), ``finetune`` (whole network, backbone at lr × 0.1),
``staged`` (head first, unfrozen after max(1, epochs//4) epochs) and ``scratch`` (the same architecture from random
weights, everything at lr). No strategy is a straw man: unless ``lr`` fixes it, each one's learning rate is the best
(validation top-1, then loss) of a small grid (``LR_GRIDS``, ×1 short run of ``search_epochs`` epochs each, same
split and seed). Each final run is a fresh process, so its peak memory (RSS) is its own.

    result = compare(TrainConfig(model="resnet18", data="photos/", output_dir="cmp", epochs=5),
                     ["head", "finetune", "scratch"])
    print(format_table(result)); result.best.strategy

Writes ``OUTPUT_DIR/compare.json`` (the table), ``OUTPUT_DIR/compare.png`` (a bar chart) and one ``hubclf train``
run per strategy in ``OUTPUT_DIR/<strategy>/`` (``OUTPUT_DIR/lr_search/`` for the grid).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubclf.atomic import atomic_write_file, atomic_write_json
from hubclf.refs import ModelRef, check_repo_id
from hubclf.stats import mcnemar_p_value, wilson_interval
from hubclf.train.config import FREEZE_NONE, TrainConfig

logger = logging.getLogger(__name__)

STRATEGIES = ("head", "finetune", "staged", "scratch")
# Learning-rate grids: a linear head on frozen features takes a far higher LR than a network being fine-tuned.
LR_GRIDS: dict[str, tuple[float, ...]] = {
    "head": (3e-3, 1e-2, 3e-2),
    "finetune": (3e-4, 1e-3, 3e-3),
    "staged": (1e-3, 3e-3, 1e-2),
    "scratch": (3e-4, 1e-3, 3e-3),
}
JSON_NAME, PLOT_NAME, SEARCH_DIR = "compare.json", "compare.png", "lr_search"
LR_SEARCHES = ("grid", "lr-find")
SIGNIFICANCE = 0.05  # McNemar's p-value under which the winner's lead over a strategy counts as real


@dataclass
class StrategyRun:
    """One strategy's final run: its figures and where its models are."""

    strategy: str
    lr: float
    lr_source: str  # "fixed" or "grid: 0.001 0.003 ..." with each LR's search top-1
    val_top1: float
    val_loss: float
    best_epoch: int
    wall_s: float
    images_per_s: float
    peak_rss_mib: float
    peak_gpu_mib: float | None
    output_dir: str
    best_model_dir: str
    # Against the winner, on the same validation images: "" for the winner itself, "tie", or McNemar's one-sided
    # p-value that the winner is better (``p_value``), "not significant" at 0.05 or above.
    vs_best: str = ""
    p_value: float | None = None


@dataclass
class CompareResult:
    """All runs, the winner (highest validation top-1, ties to the faster run) and the files written."""

    runs: list[StrategyRun]
    epochs: int
    seed: int
    train_images: int
    eval_images: int
    json_path: Path
    plot_path: Path
    hub_url: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> StrategyRun:
        return max(self.runs, key=_rank)


def _rank(run: StrategyRun) -> tuple[float, float]:
    """The winner: the highest validation top-1; a tie goes to the faster run."""
    return run.val_top1, -run.wall_s


def mark_differences(config: TrainConfig, runs: list[StrategyRun], best: StrategyRun) -> None:
    """Set each run's ``vs_best``: a tie with the winner, or whether the winner is significantly better on the same
    validation images (McNemar's exact test on the images one gets right and the other wrong, ``hubclf.stats``).
    With a few dozen images a difference of a few points is often chance; the table says so.

        mark_differences(config, runs, best)   # runs[1].vs_best == "p=0.31, not significant"
    """
    from hubclf.train.strategy import _paired_correctness  # the same scoring --strategy auto uses

    others = [run for run in runs if run is not best]
    if not others:
        return
    scored = _paired_correctness(config, *(Path(run.best_model_dir) for run in [best, *others]))
    for run, right in zip(others, scored[1:], strict=True):
        only_best = sum(b and not r for b, r in zip(scored[0], right, strict=True))
        only_run = sum(r and not b for b, r in zip(scored[0], right, strict=True))
        if only_best == only_run:
            run.vs_best = "tie"  # as many images won as lost: the same top-1
            continue
        run.p_value = mcnemar_p_value(only_run, only_best)
        run.vs_best = f"p={run.p_value:.2g}" + (", not significant" if run.p_value >= SIGNIFICANCE else "")


def parse_strategies(text: str | Sequence[str]) -> list[str]:
    """``"head,finetune"`` -> ``["head", "finetune"]``, checked; order kept, duplicates refused.

    parse_strategies("head,scratch")   # ['head', 'scratch']
    """
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"--strategies takes a comma-separated list of {', '.join(STRATEGIES)}; got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies names a strategy twice: {text!r}")
    return names


def parse_lrs(text: str | None, strategies: Sequence[str]) -> dict[str, float]:
    """``"head=3e-2,finetune=1e-3"`` -> fixed learning rates (the others are searched); a bare ``"1e-3"`` fixes all.

    parse_lrs("head=3e-2", ["head", "scratch"])   # {'head': 0.03}
    """
    if not text:
        return {}
    fixed: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = item.strip().rpartition("=")
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f"--lr: {value!r} is not a number (use e.g. head=3e-2,finetune=1e-3)") from None
        if lr <= 0:
            raise ValueError(f"--lr: learning rates are positive, got {lr}")
        if not name:
            fixed.update({strategy: lr for strategy in strategies})
        elif name not in strategies:
            raise ValueError(f"--lr names {name!r}, which is not among --strategies ({', '.join(strategies)})")
        else:
            fixed[name] = lr
    return fixed


def strategy_config(base: TrainConfig, strategy: str, **changes: Any) -> TrainConfig:
    """``base`` as ``strategy`` trains it: ``head``, ``finetune`` and ``staged`` are ``TrainConfig.strategy`` values
    (the config sets the freezing itself); ``scratch`` is the same architecture fine-tuned from random weights.

        strategy_config(config, "staged").unfreeze_after   # max(1, epochs // 4)
    """
    # Each strategy sets the freezing from scratch; one compare is several runs, none resumed or pushed on its own.
    values = dict(freeze=FREEZE_NONE, unfreeze_after=None, push_to_hub=None, resume=None, **changes)
    if strategy == "scratch":
        architecture, img_size = scratch_architecture(base)
        # backbone_lr_scale was resolved for the base's weights; random weights have nothing to protect.
        values.update(model=architecture, pretrained=False, weights=None, img_size=img_size, backbone_lr_scale=1.0)
        strategy = "finetune"
    return dataclasses.replace(base, strategy=strategy, **values)


def scratch_architecture(config: TrainConfig) -> tuple[str, tuple[int, int] | None]:
    """The architecture (and input size) of ``config.model`` for random initialisation, also for a saved model.

        scratch_architecture(config)   # ("hubclf_alexnet_slim", (448, 224)) for a saved 448×224 model
    """
    ref = ModelRef.parse(config.model)
    if not ref.is_saved:
        return config.model, config.img_size
    from hubclf.hub import fetch_config  # the Hub client: only for a saved model

    saved = fetch_config(ref)
    _, height, width = saved["pretrained_cfg"]["input_size"]
    return saved["architecture"], config.img_size or (height, width)


def compare(
    config: TrainConfig,
    strategies: Sequence[str] = STRATEGIES,
    *,
    lrs: dict[str, float] | None = None,
    lr_grids: dict[str, Sequence[float]] | None = None,
    search_epochs: int = 1,
    lr_search: str = "grid",
    isolate: bool = True,
    push_best: str | None = None,
) -> CompareResult:
    """Run every strategy (see the module docstring) and write the table as JSON and PNG.

    ``lrs`` fixes a strategy's learning rate (no search); ``lr_grids`` replaces ``LR_GRIDS`` entries;
    ``lr_search="lr-find"`` takes each strategy's LR from ``hubclf.train.lr_find`` (an LR range test, one pass)
    instead of the grid;
    ``isolate=False`` runs everything in this process (then peak RSS is this process's peak so far);
    ``push_best`` publishes the winner's best model with the comparison in its card.

        compare(config, ["head", "scratch"], lrs={"head": 3e-2})
    """
    from hubclf.train.input_size import choose_input_size
    from hubclf.train.preflight import preflight_checks
    from hubclf.train.setup import load_training_data

    strategies = parse_strategies(strategies)
    lrs, grids = dict(lrs or {}), {**LR_GRIDS, **{k: tuple(v) for k, v in (lr_grids or {}).items()}}
    if search_epochs < 1:
        raise ValueError(f"search_epochs must be at least 1, got {search_epochs}")
    if lr_search not in LR_SEARCHES:
        raise ValueError(f"--lr-search must be one of {', '.join(LR_SEARCHES)}, got {lr_search!r}")
    output_dir = Path(config.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty: hubclf compare writes a new folder, use another --output-dir")
    configs = {strategy: strategy_config(config, strategy) for strategy in strategies}  # bad settings fail early
    preflight_checks(config)
    if push_best:
        check_repo_id(push_best)
    data = load_training_data(config)
    size = choose_input_size(config, data)  # once, so that every strategy trains at the same size
    logger.info(size.decision)
    if size.warning:
        logger.warning(size.warning)
    config = size.config
    configs = {strategy: strategy_config(config, strategy) for strategy in strategies}
    runs = []
    for number, strategy in enumerate(strategies, 1):
        lr, source = _pick_lr(configs[strategy], strategy, lrs, grids, search_epochs, output_dir, lr_search)
        final = dataclasses.replace(configs[strategy], lr=lr, output_dir=str(output_dir / strategy))
        logger.info(f"[{number}/{len(strategies)}] {strategy}: lr {lr:g} ({source}), {final.epochs} epochs")
        figures = _run_isolated(final) if isolate else _run_here(final)
        images_per_s = final.epochs * len(data.train) / max(figures["wall_s"], 1e-9)
        runs.append(
            StrategyRun(
                strategy=strategy, lr=lr, lr_source=source, val_top1=figures["val_top1"],
                val_loss=figures["val_loss"], best_epoch=figures["best_epoch"], wall_s=round(figures["wall_s"], 2),
                images_per_s=round(images_per_s, 1), peak_rss_mib=round(figures["peak_rss_mib"], 1),
                peak_gpu_mib=figures["peak_gpu_mib"], output_dir=final.output_dir,
                best_model_dir=str(Path(final.output_dir) / "best"),
            )
        )  # fmt: skip
        logger.info(f"{strategy}: val top-1 {runs[-1].val_top1:.1%} in {runs[-1].wall_s:.0f} s")
    mark_differences(config, runs, max(runs, key=_rank))
    result = CompareResult(
        runs=runs, epochs=config.epochs, seed=config.seed, train_images=len(data.train),
        eval_images=len(data.eval), json_path=output_dir / JSON_NAME, plot_path=output_dir / PLOT_NAME,
        settings={"model": config.model, "data": config.data, "batch_size": config.batch_size,
                  "lr_search": lr_search, "search_epochs": search_epochs, "isolated": isolate},
    )  # fmt: skip
    _write_json(result)
    plot(result, result.plot_path)
    if push_best:
        result.hub_url = publish_best(result, push_best, private=config.hub_private)
        _write_json(result)
    return result


def _pick_lr(
    config: TrainConfig,
    strategy: str,
    fixed: dict[str, float],
    grids: dict[str, Sequence[float]],
    search_epochs: int,
    output_dir: Path,
    lr_search: str = "grid",
) -> tuple[float, str]:
    """The fixed LR, lr-find's suggestion, or the grid's best by validation top-1 (then lower loss, then the first)
    after short runs."""
    if strategy in fixed:
        return fixed[strategy], "fixed"
    if lr_search == "lr-find":
        from hubclf.train.lr_find import lr_find

        found = lr_find(dataclasses.replace(config, output_dir=str(output_dir / SEARCH_DIR / strategy)))
        if not found.confident:  # a flat or noisy curve: the configured lr, said as such
            logger.info(f"  {strategy}: lr-find has no confident suggestion ({found.caveat}); lr {config.lr:g}")
            return config.lr, f"lr-find: {found.caveat.partition(':')[0]} curve, lr as configured"
        logger.info(f"  {strategy}: lr-find suggests {found.suggested_lr:.3g} ({found.method})")
        return float(f"{found.suggested_lr:.3g}"), f"lr-find ({found.method})"
    from hubclf.train import train

    epochs = max(search_epochs, 2) if strategy == "staged" else search_epochs  # staged must reach its unfreezing
    scores = []
    for lr in grids[strategy]:
        run = strategy_config(config, strategy, epochs=epochs, warmup_epochs=0) if strategy == "staged" else None
        run = dataclasses.replace(
            run or config, lr=lr, epochs=epochs, warmup_epochs=0,
            output_dir=str(output_dir / SEARCH_DIR / strategy / f"lr_{lr:g}"),
        )  # fmt: skip
        best = train(run).best_metrics
        scores.append((best["top1"], -best["loss"], lr))
        logger.info(f"  {strategy} lr {lr:g}: search top-1 {best['top1']:.1%}")
    top1, _, lr = max(scores, key=lambda score: score[:2])  # max keeps the first of equal scores
    return lr, "grid " + " ".join(f"{lr:g}:{top1:.1%}" for top1, _, lr in scores)


# ---- one final run, measured -------------------------------------------------------------------------------------
def _run_here(config: TrainConfig) -> dict[str, Any]:
    from hubclf.train import train

    gpu = _reset_gpu_peak()
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    best_epoch = next(i for i, row in enumerate(result.history, 1) if row["val_top1"] == result.best_metrics["top1"])
    return {
        "val_top1": result.best_metrics["top1"],
        "val_loss": result.best_metrics["loss"],
        "best_epoch": best_epoch,
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_gpu_mib": _gpu_peak_mib() if gpu else None,
    }


def _run_isolated(config: TrainConfig) -> dict[str, Any]:
    """``_run_here`` in a fresh Python process (``python -m hubclf.compare CONFIG RESULT``); its log and progress
    bars go to ``OUTPUT_DIR/<strategy>.log``."""
    log_path = Path(config.output_dir).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hubclf-compare-") as scratch, open(log_path, "w") as log:
        config_path, result_path = Path(scratch) / "config.json", Path(scratch) / "result.json"
        atomic_write_json(config_path, config.to_dict())
        command = [sys.executable, "-m", "hubclf.compare", str(config_path), str(result_path)]
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if returncode != 0 or not result_path.is_file():
            lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["(no output)"]
            raise RuntimeError(
                f"the {config.output_dir} run failed (exit status {returncode}): {lines[-1]} (log: {log_path})"
            )
        return json.loads(result_path.read_text(encoding="utf-8"))


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def _reset_gpu_peak() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def _gpu_peak_mib() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


# ---- outputs -----------------------------------------------------------------------------------------------------
def format_table(result: CompareResult) -> str:
    """The comparison as an aligned text table, best first marked with ``*``."""
    best = result.best
    gpu = any(run.peak_gpu_mib is not None for run in result.runs)
    header = ["strategy", "lr", "val top-1", "vs best", "wall time", "images/s", "peak RSS"]
    header += ["peak GPU"] if gpu else []
    rows = [header]
    for run in result.runs:
        row = [
            run.strategy + (" *" if run is best else ""),
            f"{run.lr:g}",
            f"{run.val_top1:.1%}",
            run.vs_best or "-",
            f"{run.wall_s:.1f} s",
            f"{run.images_per_s:.0f}",
            f"{run.peak_rss_mib:.0f} MiB",
        ]
        if gpu:
            row.append(f"{run.peak_gpu_mib:.0f} MiB" if run.peak_gpu_mib is not None else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(
        f"{result.epochs} epochs each, seed {result.seed}, {result.train_images} train / {result.eval_images} "
        f"validation images; * = best val top-1 ({best.strategy}) -> {best.best_model_dir}"
    )
    lines += [line for line in (_caveat(result),) if line]
    return "\n".join(lines)


def _caveat(result: CompareResult) -> str | None:
    """What "vs best" means when it matters: ties, and differences that may be chance."""
    ties = [run.strategy for run in result.runs if run.vs_best == "tie"]
    unsure = [run.strategy for run in result.runs if run.vs_best.endswith("not significant")]
    said = []
    if ties:
        said.append(f"{', '.join(ties)} tie(s) with {result.best.strategy}, which won as the faster")
    if unsure:
        said.append(
            f"{result.best.strategy}'s lead over {', '.join(unsure)} is not significant on {result.eval_images} "
            f"validation images (McNemar p >= {SIGNIFICANCE}): it may be chance"
        )
    return "; ".join(said) or None


def plot(result: CompareResult, path: Path) -> Path:
    """A bar chart of validation top-1 per strategy, each bar labelled with its wall time."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and no GUI backend picked up from the environment
    import matplotlib.pyplot as plt

    names = [run.strategy for run in result.runs]
    figure, axes = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6), dpi=100)
    bars = axes.bar(names, [100 * run.val_top1 for run in result.runs], color="#4C72B0")
    bars[[run.strategy for run in result.runs].index(result.best.strategy)].set_color("#DD8452")
    for bar, run in zip(bars, result.runs, strict=True):
        axes.annotate(
            f"{run.val_top1:.1%}\n{run.wall_s:.0f} s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=9,
        )  # fmt: skip
    axes.set_ylim(0, 115)
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title(f"hubclf compare: {result.epochs} epochs each, seed {result.seed}")
    figure.tight_layout()
    atomic_write_file(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


def _write_json(result: CompareResult) -> None:
    values = {
        "best": result.best.strategy,
        "epochs": result.epochs,
        "seed": result.seed,
        "train_images": result.train_images,
        "eval_images": result.eval_images,
        "settings": result.settings,
        "hub_url": result.hub_url,
        "runs": [dataclasses.asdict(run) for run in result.runs],
    }
    atomic_write_json(result.json_path, values)


def card_section(result: CompareResult) -> dict[str, Any]:
    """The winner's "Why this strategy" card section: the whole comparison table."""
    rows = []
    for run in result.runs:
        low, high = wilson_interval(round(run.val_top1 * result.eval_images), result.eval_images)
        rows.append([
            f"**{run.strategy}**" if run is result.best else run.strategy, f"{run.lr:g}", f"{run.val_top1:.1%}",
            f"{low:.1%} – {high:.1%}", run.vs_best or "-", f"{run.wall_s:.0f} s", f"{run.images_per_s:.0f}",
            f"{run.peak_rss_mib:.0f} MiB",
        ])  # fmt: skip
    return {
        "summary": f"`hubclf compare` trained this model's architecture with {len(result.runs)} strategies, each for "
        f"{result.epochs} epochs with seed {result.seed} and its own learning rate, on {result.train_images} "
        f"training images, and published the best one: **{result.best.strategy}**.",
        "columns": [
            "strategy", "lr", "val top-1", "95% interval (Wilson)", "vs best (McNemar)", "wall time", "images/s",
            "peak RSS",
        ],  # fmt: skip
        "rows": rows,
        "reason": f"{result.best.strategy} has the highest validation top-1 on the {result.eval_images} validation "
        "images (ties go to the faster strategy). Learning rates: fixed, or the best of a short grid search."
        + (f" {_caveat(result)}." if _caveat(result) else ""),
    }


def publish_best(result: CompareResult, repo_id: str, *, private: bool = False) -> str:
    """Add the comparison to the winner's card, then push its best model to ``repo_id``; returns the commit URL."""
    from hubclf.hub import push_to_hub, update_card

    best = result.best
    section = card_section(result)
    update_card(best.best_model_dir, hyperparameters={"strategy": best.strategy}, extra_config={"strategy": section})
    return push_to_hub(
        best.best_model_dir,
        repo_id,
        private=private or None,
        commit_message=f"hubclf compare: {best.strategy} won ({best.val_top1:.1%} val top-1)",
    )


def _worker(argv: list[str]) -> int:
    """``python -m hubclf.compare CONFIG_JSON RESULT_JSON``: one measured run in this fresh process."""
    config_path, result_path = map(Path, argv)
    logging.basicConfig(level=logging.WARNING)
    config = TrainConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")), source=str(config_path))
    figures = _run_here(config)
    atomic_write_json(result_path, figures)  # strict JSON, whole or absent: a killed worker leaves no half file
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
