"""``--strategy auto``: measure, on the user's own data, whether fine-tuning the backbone beats a head on frozen
features, and train the winner. Each phase is an ordinary (resumable) run of the loop in ``OUTPUT_DIR/phases/``:

1. ``head``: ``--freeze backbone --no-augment`` for ``epochs`` epochs on cached features (seconds), at lr × each of
   ``HEAD_LR_FACTORS`` (the features are extracted once, on disk); the best validation top-1 is kept;
2. two probes from that head, alike but for the backbone, each ``PROBE_EPOCHS`` (1) epoch with the same seed and LR
   schedule (no warm-up): ``head_probe`` trains the head further (cached features), ``finetune_probe`` trains the
   whole network (backbone at lr × backbone_lr_scale, augmentation as configured);
3. decision: both probes classify the same validation images; fine-tuning wins only if it fixes significantly more
   of them than it breaks (exact one-sided McNemar test at ``ALPHA``); otherwise the cheaper head is kept;
4. ``finetune`` (only if it won): ``epochs - 1`` more fine-tuning epochs from the fine-tuning probe (no warm-up).

The winner's best/ and final/ models are copied to ``OUTPUT_DIR`` with a "Why this strategy" card section, and
``OUTPUT_DIR/metrics.jsonl`` holds every phase's epochs (``"phase"``) plus one ``{"event": "strategy", ...}`` record.

    result = train(TrainConfig(model="resnet18", data="photos/", output_dir="out", strategy="auto", epochs=4))
    result.strategy["choice"], result.strategy["reason"]

The statistics are pure functions: ``wilson_interval``, ``mcnemar_p_value``, ``decide``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import parse_flag_from_env
from torch.utils.data import DataLoader

from hubclf.atomic import atomic_write_json
from hubclf.data.images import eval_preprocessing
from hubclf.hub import from_pretrained, push_to_hub, update_card
from hubclf.metrics import evaluate
from hubclf.refs import DataSource
from hubclf.stats import mcnemar_p_value, wilson_interval
from hubclf.train import loop
from hubclf.train.checkpoints import TrainerState, list_checkpoints
from hubclf.train.config import FREEZE_BACKBONE, FREEZE_NONE, TrainConfig
from hubclf.train.outputs import BEST_DIR, FINAL_DIR, METRICS_FILE, TrainResult, card_rows, write_metrics
from hubclf.train.setup import image_dataset, load_training_data

logger = get_logger(__name__)

HEAD, FINETUNE = "head", "finetune"
CONTROL, PROBE = "head_probe", "finetune_probe"  # phase names of the two probes
PHASES_DIR = "phases"
STRATEGY_FILE = "strategy.json"  # the decision, written once; a resumed run reuses it
PROBE_EPOCHS = 1
HEAD_LR_FACTORS = (1, 3, 10)  # the head phase tries lr x each (cached features: seconds each)
ALPHA = 0.05  # fine-tuning must beat the head at this significance level to be chosen


@dataclass
class StrategyDecision:
    """Head vs. fine-tuning probe on the same validation images, and which one ``auto`` keeps."""

    choice: str  # "head" or "finetune"
    num_images: int
    head_top1: float
    probe_top1: float
    head_only: int  # images the head classifies right and the probe wrong
    probe_only: int  # and the reverse
    p_value: float
    alpha: float
    head_interval: tuple[float, float]
    probe_interval: tuple[float, float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def decide(head_correct: list[bool], probe_correct: list[bool], alpha: float = ALPHA) -> StrategyDecision:
    """Keep fine-tuning only if the probe is significantly better than the head on the same images, else the head.

        decide([True] * 10 + [False] * 10, [True] * 19 + [False]).choice   # "finetune" (9 fixed, 0 broken)
        decide([True] * 9 + [False], [True] * 10).choice                    # "head": 1 fix could be chance
    """
    if len(head_correct) != len(probe_correct):
        raise ValueError(f"{len(head_correct)} head results but {len(probe_correct)} probe results")
    n = len(head_correct)
    if n == 0:
        raise ValueError("no validation images to compare the strategies on")
    head_right, probe_right = sum(map(bool, head_correct)), sum(map(bool, probe_correct))
    head_only = sum(1 for h, p in zip(head_correct, probe_correct, strict=True) if h and not p)
    probe_only = sum(1 for h, p in zip(head_correct, probe_correct, strict=True) if p and not h)
    p_value = mcnemar_p_value(head_only, probe_only)
    head_top1, probe_top1 = head_right / n, probe_right / n
    figures = (
        f"on {n} validation images, one epoch of fine-tuning fixed {probe_only} that the frozen-backbone head got "
        f"wrong and broke {head_only} (top-1 {head_top1:.1%} -> {probe_top1:.1%})"
    )
    if probe_only > head_only and p_value < alpha:
        choice = FINETUNE
        reason = (
            f"Fine-tuning: {figures}. A gain this large arises by chance with probability {p_value:.3g} < {alpha} "
            "(exact one-sided McNemar test), so training the backbone pays for its cost."
        )
    elif probe_only > head_only:
        choice = HEAD
        reason = (
            f"Frozen backbone: {figures}, but a gain this size arises by chance with probability {p_value:.3g} "
            f">= {alpha} (exact one-sided McNemar test) on this few images, so the cheaper head is kept."
        )
    else:
        choice = HEAD
        reason = f"Frozen backbone: {figures}; fine-tuning did not help, so the cheaper head is kept."
    return StrategyDecision(
        choice=choice,
        num_images=n,
        head_top1=head_top1,
        probe_top1=probe_top1,
        head_only=head_only,
        probe_only=probe_only,
        p_value=p_value,
        alpha=alpha,
        head_interval=wilson_interval(head_right, n),
        probe_interval=wilson_interval(probe_right, n),
        reason=reason,
    )


# ---- orchestration ----------------------------------------------------------------------------------------------
def train_auto(config: TrainConfig) -> TrainResult:
    """``--strategy auto`` (see the module docstring). ``train(config)`` calls this for ``strategy="auto"``.

    Works under ``accelerate launch`` (every process runs every phase; the main process decides and writes) and
    with ``--resume latest``, also when the run stopped in the middle of a phase.

        result = train_auto(TrainConfig(model="resnet18", data="photos/", output_dir="out", strategy="auto"))
    """
    result = _train_auto(config)
    _process_state().destroy_process_group()  # the phases kept it alive (see loop.run)
    return result


def _train_auto(config: TrainConfig) -> TrainResult:
    _process_state()  # before the first log line
    output_dir = Path(config.output_dir)
    if config.resume not in (None, "latest"):
        raise ValueError("--strategy auto runs in several phases: continue it with --resume latest")
    if config.resume is None and ((output_dir / PHASES_DIR).exists() or (output_dir / METRICS_FILE).exists()):
        raise ValueError(
            f"{output_dir} already holds a training run: continue it with --resume latest, or use a new --output-dir"
        )
    if config.freeze != FREEZE_NONE or config.unfreeze_after is not None:
        raise ValueError("--strategy auto chooses the freezing itself; drop --freeze/--unfreeze-after")
    if DataSource.parse(config.data, labels=config.labels, streaming=config.streaming).is_stream:
        raise ValueError("--strategy auto compares models image by image at random: not with streamed data")
    phases = output_dir / PHASES_DIR
    base = dict(strategy=None, push_to_hub=None, resume=None, unfreeze_after=None)

    # 1. The head on cached frozen features: cheap, and the baseline fine-tuning has to beat. A linear head on frozen
    #    features usually wants a higher LR than fine-tuning, so it gets the best of lr x HEAD_LR_FACTORS; the
    #    backbone runs once, the runs share its cached features (on disk, in phases/feature_cache).
    logger.info(f"--strategy auto 1/3: fitting the head on frozen features ({config.epochs} epochs per LR)")
    cache = dict(cache_features="disk", feature_cache_dir=str(phases / "feature_cache"))
    if config.cache_features == "off":
        cache = {}
    head_runs = {
        f"{HEAD}_lr_{config.lr * factor:.3g}": _run_phase(
            dataclasses.replace(
                config, **base, **cache, output_dir=str(phases / f"{HEAD}_lr_{config.lr * factor:.3g}"),
                freeze=FREEZE_BACKBONE, augment=False, mixup=0.0, cutmix=0.0, lr=float(f"{config.lr * factor:.3g}"),
            )
        )
        for factor in HEAD_LR_FACTORS
    }  # fmt: skip
    # Best validation top-1, then lower loss, then the first (the user's own LR).
    scores = {name: (run.best_metrics["top1"], -run.best_metrics["loss"]) for name, run in head_runs.items()}
    head_name = max(scores, key=scores.get)
    head = head_runs[head_name]
    # 2. Two probes from that head, identical but for the backbone: one more epoch of the head alone (the control,
    #    seconds) and one epoch of the whole network. Same split, seed, LR schedule and head training: any difference
    #    is what training the backbone bought.
    logger.info(f"--strategy auto 2/3: probing {PROBE_EPOCHS} epoch of fine-tuning from the fitted head")
    from_head = dict(base, model=str(head.best_model_dir), pretrained=True, weights=None, epochs=PROBE_EPOCHS,
                     warmup_epochs=0)  # fmt: skip
    control = _run_phase(
        dataclasses.replace(
            config, **from_head, output_dir=str(phases / CONTROL), freeze=FREEZE_BACKBONE, augment=False, mixup=0.0,
            cutmix=0.0,
        )
    )
    probe = _run_phase(
        dataclasses.replace(config, **from_head, output_dir=str(phases / PROBE), freeze=FREEZE_NONE)
    )
    # 3. The decision, on the main process; the others read it.
    state = _process_state()
    decision_file = output_dir / STRATEGY_FILE
    if state.is_main_process and not decision_file.is_file():
        head_correct, probe_correct = _paired_correctness(config, control.best_model_dir, probe.best_model_dir)
        decision = decide(head_correct, probe_correct)
        atomic_write_json(decision_file, decision.to_dict())
    state.wait_for_everyone()
    decision = StrategyDecision(**json.loads(decision_file.read_text(encoding="utf-8")))
    state.print(f"--strategy auto chose {decision.choice}. {decision.reason}")
    logger.info(f"--strategy auto 3/3: {decision.choice}: p = {decision.p_value:.3g}")

    # 4. The winner to the end: the head is done; fine-tuning continues from the probe.
    runs = {**{name: run for name, run in head_runs.items() if name != head_name}, HEAD: head, CONTROL: control,
            PROBE: probe}  # fmt: skip
    winner = control
    remaining = config.epochs - PROBE_EPOCHS
    if decision.choice == FINETUNE:
        winner = probe
        if remaining > 0:
            from_probe = dict(from_head, model=str(probe.best_model_dir), epochs=remaining)
            winner = runs[FINETUNE] = _run_phase(
                dataclasses.replace(config, **from_probe, output_dir=str(phases / FINETUNE), freeze=FREEZE_NONE)
            )
    head_lr = float(head_name.removeprefix(f"{HEAD}_lr_"))
    return _finish(config, decision, runs, winner, _process_state(), head_lr)


def _run_phase(config: TrainConfig) -> TrainResult:
    """One run of the loop, resumed from its last checkpoint if it has one, or read back if it already finished."""
    state = _process_state()
    output_dir = Path(config.output_dir)
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        saved = TrainerState.load(checkpoints[-1])
        if saved.epoch >= config.epochs and (output_dir / FINAL_DIR / "config.json").is_file():
            return TrainResult.from_state(output_dir, saved)
        config = dataclasses.replace(config, resume="latest")
    else:
        if state.is_main_process and output_dir.exists():
            shutil.rmtree(output_dir)  # stopped before its first checkpoint: nothing to continue, start it over
        state.wait_for_everyone()
    return loop.run(config, keep_process_group=True)  # the phases share one process group; train_auto ends it


def _process_state() -> PartialState:
    """Accelerate's process state, initialised as ``Accelerator()`` would: with ``ACCELERATE_USE_CPU=1`` a CPU-only
    ``accelerate launch`` is distributed only if the state is created with ``cpu=True``."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


@torch.no_grad()
def _paired_correctness(config: TrainConfig, *model_dirs: Path) -> list[list[bool]]:
    """For each model, whether it classifies each readable validation image right (same images, same order)."""
    data = load_training_data(config)
    results = []
    for model_dir in model_dirs:
        model = from_pretrained(model_dir).eval()
        if list(model.label_names or []) != list(data.label_names):
            raise ValueError(f"{model_dir} was trained on other classes than {config.data} has")
        data_config, transform = eval_preprocessing(model)
        images = image_dataset(config, data, data.eval, transform, data_config["input_size"], cache=False)
        loader = DataLoader(images, batch_size=config.batch_size, shuffle=False, num_workers=0)
        scored = evaluate(
            None, lambda batch, m=model: m(batch["pixel_values"]), loader, num_classes=data.num_classes,
            desc=f"scoring {model_dir.parent.name}", per_image=True,
        )  # fmt: skip
        results.append(scored["correct"])
    return results


def _finish(
    config: TrainConfig,
    decision: StrategyDecision,
    runs: dict[str, TrainResult],
    winner: TrainResult,
    state: PartialState,
    head_lr: float,
) -> TrainResult:
    """Winner's models to OUTPUT_DIR/best and /final with the decision in their cards; metrics.jsonl; push."""
    output_dir = Path(config.output_dir)
    history = [{"phase": phase, **record} for phase, run in runs.items() for record in run.history]
    event = {
        "event": "strategy", "strategy": "auto", **decision.to_dict(), "probe_epochs": PROBE_EPOCHS,
        "head_lr": head_lr, "lr": config.lr,
    }  # fmt: skip
    section = strategy_card_section(decision, runs, head_lr)
    # The phases' own "epochs" would describe only the last phase: say what the whole path trained.
    head_epochs = len(runs[HEAD].history) + len(runs[CONTROL].history)
    epochs = f"head {head_epochs} (cached features)"
    if decision.choice == FINETUNE:
        tuned = len(runs[PROBE].history) + len(runs[FINETUNE].history if FINETUNE in runs else [])
        epochs = f"head {len(runs[HEAD].history)}, then whole network {tuned}"
    hub_url = None
    if state.is_main_process:
        base_model = json.loads((runs[HEAD].best_model_dir / "config.json").read_text())["hubclf"].get("base_model")
        for name, source in ((BEST_DIR, winner.best_model_dir), (FINAL_DIR, winner.final_model_dir)):
            # A copy of the winner's folder with the decision in its card, swapped in whole (hard-linked weights).
            update_card(
                output_dir / name,
                from_dir=source,
                hyperparameters={"strategy": f"auto -> {decision.choice}", "epochs": epochs},
                base_model=base_model,
                epoch_metrics=card_rows(history),
                extra_config={"strategy": section},
            )
        write_metrics(output_dir / METRICS_FILE, [*history, event])
        if config.push_to_hub:
            hub_url = push_to_hub(
                output_dir / BEST_DIR,
                config.push_to_hub,
                private=config.hub_private,
                commit_message=f"hubclf train --strategy auto ({decision.choice}): {config.model}",
            )
            logger.info(f"pushed the best model ({decision.choice}) to {hub_url}")
    state.wait_for_everyone()
    return dataclasses.replace(
        winner,
        output_dir=output_dir,
        best_model_dir=output_dir / BEST_DIR,
        final_model_dir=output_dir / FINAL_DIR,
        metrics_file=output_dir / METRICS_FILE,
        history=history,
        hub_url=hub_url,
        strategy=event,
    )


def strategy_card_section(decision: StrategyDecision, runs: dict[str, TrainResult], head_lr: float) -> dict[str, Any]:
    """The model card's "Why this strategy" section: a sentence, a table of the candidates, the reason."""

    def interval(bounds: tuple[float, float] | list[float]) -> str:
        return f"{bounds[0]:.1%} – {bounds[1]:.1%}"

    rows = [
        ["frozen backbone: head only", f"{decision.head_top1:.1%}", interval(decision.head_interval),
         f"{len(runs[HEAD].history)} epochs at lr {head_lr:g} (best of {len(HEAD_LR_FACTORS)} LRs) + "
         f"{len(runs[CONTROL].history)}, cached features"],
        ["fine-tuning probe", f"{decision.probe_top1:.1%}", interval(decision.probe_interval),
         f"{len(runs[HEAD].history)} head epochs + {len(runs[PROBE].history)} whole-network"],
    ]  # fmt: skip
    if FINETUNE in runs:
        best = runs[FINETUNE].best_metrics["top1"]
        rows.append(["fine-tuning, continued", f"{best:.1%}", "", f"{len(runs[FINETUNE].history)} more epochs"])
    return {
        "summary": f"`hubclf train --strategy auto` measured both options on the validation images and chose "
        f"**{'fine-tuning' if decision.choice == FINETUNE else 'the frozen backbone'}**.",
        "columns": ["candidate", "val top-1", "95% interval (Wilson)", "training"],
        "rows": rows,
        "reason": decision.reason,
    }
