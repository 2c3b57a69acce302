"""``train()``: one training run from the movie files to ``RUN/`` (what ``ava-train`` calls).

Order of work: everything that can be checked cheaply is checked before any frame is decoded (config and
flags, label map, the ``--out`` folder, every annotation / proposal / exclusion row, the video files and their
headers (a file that does not decode, a keyframe past the end), the initial weights), then the frames are prepared (one decoding pass per video into the frame store
``RUN/frames``), then the epochs run. Errors up front are package errors (``ConfigError``, ``InputFormatError``,
``WeightsError``) naming the file and row; ``ava-train`` prints them on one line and exits with status 2.

``RUN/`` holds ``config.yaml`` (the complete effective config: model with one output per label-map class, data,
``label_map: labelmap.pbtxt``, and the ``train:`` settings; accepted by ``ava-detect --config`` and
``load_action_model``), ``labelmap.pbtxt``, ``run.json`` (what the run was made from, so that another command
never writes into it), ``checkpoints/``, ``metrics.jsonl``, ``curves.png``, ``eval/`` (val detections per
evaluation) and ``frames/`` (the frame store).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml

from ava_pipeline.config import ActionModelConfig, load_config, plain_values
from ava_pipeline.errors import ConfigError
from ava_pipeline.labels import read_label_map, write_label_map
from ava_pipeline.training.checkpoint import checkpoint_name, latest_checkpoint, resume, save_checkpoint
from ava_pipeline.training.dataset import AvaClipDataset, collate
from ava_pipeline.training import distributed, head_only as head_only_mode
from ava_pipeline.training.init import build_training_model, describe_parameters, load_initial_weights
from ava_pipeline.training.loop import LoopHooks, fit
from ava_pipeline.training.metrics import MetricsLog, plot_curves
from ava_pipeline.training.optim import build_optimizer
from ava_pipeline.training.samples import check_videos, find_videos, read_training_samples
from ava_pipeline.training.sampling import per_process_batch
from ava_pipeline.training.settings import TrainSettings, load_train_settings, settings_mapping, with_overrides
from ava_pipeline.training.validation import read_validation_set, validate
from ava_pipeline.checksums import file_sha256, text_sha256
from ava_pipeline.weights import ZOO, download
from ava_pipeline.writers import atomic_output

log = logging.getLogger(__name__)

AVA_CLASSES = 80


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run put things."""

    out: Path
    config: Path  # RUN/config.yaml
    checkpoint: Path  # the last checkpoint
    metrics: Path
    last_eval: Optional[dict]  # the last evaluation record, if any


def _class_map(model_cfg: ActionModelConfig, labelmap: Optional[str | Path], source: str) -> dict[int, str]:
    """The classes to train, ``{action_id: name}`` in column order, checked against the config's class count.

    Without ``labelmap`` the config's own label map is trained and must have ``num_classes`` entries. With one,
    the head gets one output per class of ``labelmap``; the config's ``num_classes`` then describes the model the
    config was written for, which is fine when it is that of its own label map (AVA's 80 for PySlowFast's
    configs, or a run's ``config.yaml``) and a contradiction otherwise.
    """
    declared = model_cfg.model.num_classes
    own_map_size = AVA_CLASSES if model_cfg.label_map == ActionModelConfig.label_map else None
    if labelmap is None:
        classes = read_label_map(model_cfg.label_map)
        where = f"the config's label map {model_cfg.label_map}"
        consistent = declared == len(classes)
    else:
        classes = read_label_map(labelmap)
        where = f"label map {labelmap}"
        # a config naming its own label map was checked against it by load_config
        consistent = declared == len(classes) or own_map_size is None or declared == own_map_size
    if not consistent:
        raise ConfigError(f"{source}: MODEL.NUM_CLASSES (model.num_classes) = {declared} contradicts {where} with "
                          f"{len(classes)} classes; the head has one output per label-map class: set it to "
                          f"{len(classes)} or pass the matching --labelmap")
    return classes


def effective_config(model_cfg: ActionModelConfig, classes: dict, settings: TrainSettings, name: str) -> str:
    """The text of ``RUN/config.yaml``."""
    cfg = dataclasses.replace(model_cfg, name=name, model=dataclasses.replace(model_cfg.model,
                                                                              num_classes=len(classes)),
                              label_map="labelmap.pbtxt", eval_label_map="labelmap.pbtxt", weights=None)
    values = plain_values(cfg)
    values["train"] = settings_mapping(settings)
    return yaml.safe_dump(values, sort_keys=False)


def _file_identity(path: Optional[str | Path]) -> Optional[dict]:
    if path is None:
        return None
    path = Path(path)  # a missing file is reported by its reader, with what to do
    return {"path": str(path.resolve()), "sha256": file_sha256(path) if path.is_file() else None}


def _check_out_folder(out: Path, fingerprint: dict, config_text: str) -> None:
    """Refuse an ``--out`` folder that holds anything but this very run (same fingerprint); a run folder whose
    earlier attempt wrote no checkpoint yet (it stopped while preparing frames, say) may be reused."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the run")
    run_json = out / "run.json"
    if not run_json.is_file():
        if any(out.iterdir()):
            raise ConfigError(f"--out {out} is a non-empty folder that is not an ava-train run (no run.json); choose "
                              "a new folder")
        return
    try:
        recorded = json.loads(run_json.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{run_json}: unreadable run record ({exc}); choose a new --out folder") from exc
    differing = sorted(key for key in set(recorded) | set(fingerprint) if recorded.get(key) != fingerprint.get(key))
    if differing and latest_checkpoint(out / "checkpoints") is not None:
        changes = _config_changes(out / "config.yaml", config_text) if "config" in differing else []
        detail = f"; config: {', '.join(changes[:6])}{', ...' if len(changes) > 6 else ''}" if changes else ""
        raise ConfigError(f"--out {out} holds another run (it differs in: {', '.join(differing)}{detail}); resuming "
                          "needs the same command and settings: choose a new --out folder for a new run")


def _config_changes(recorded: Path, config_text: str) -> list[str]:
    """``key: old -> new`` for each setting (dotted key) in which the run's recorded ``config.yaml`` and this
    command's effective config differ (an older ava-pipeline's file lacks the settings added since)."""
    def flat(mapping, prefix=""):
        for key, value in (mapping or {}).items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    try:
        old = dict(flat(yaml.safe_load(recorded.read_text(encoding="utf-8"))))
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    new = dict(flat(yaml.safe_load(config_text)))
    missing = "(absent)"
    return [f"{key}: {old.get(key, missing)} -> {new.get(key, missing)}" for key in sorted(set(old) | set(new))
            if old.get(key, missing) != new.get(key, missing)]


def _resolve_weights(weights: Optional[str | Path]) -> Optional[Path]:
    if weights is None:
        return None
    if str(weights) in ZOO:
        return download(ZOO[str(weights)].url, ZOO[str(weights)].sha256)
    return Path(weights)


def train(config: str | Path, *, videos: str | Path, annotations: str | Path | Sequence[str | Path],
          out: str | Path, weights: Optional[str | Path] = None, labelmap: Optional[str | Path] = None,
          proposals: Sequence[str | Path] = (), exclusions: Optional[str | Path] = None,
          val_annotations: Optional[str | Path] = None, val_proposals: Sequence[str | Path] = (),
          val_exclusions: Optional[str | Path] = None, epochs: Optional[int] = None,
          batch_size: Optional[int] = None, lr: Optional[float] = None, seed: Optional[int] = None,
          augment: Optional[bool] = None, shuffle: Optional[bool] = None, device: str = "cpu", workers: int = 0,
          quiet: bool = False, head_only: bool = False, head_views: int = 1,
          full_resolution_frames: Optional[bool] = None,
          say: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train (or resume) an AVA action model from movie files; see ``ava-train --help`` for every argument and
    the module docstring for what ``out`` receives. Flags override the config: ``epochs`` = SOLVER.MAX_EPOCH,
    ``batch_size`` = TRAIN.BATCH_SIZE, ``lr`` = SOLVER.BASE_LR, ``seed`` = RNG_SEED, ``augment`` / ``shuffle``
    (None: the config's ``train.augment`` / ``train.shuffle``, default True), ``full_resolution_frames`` (None:
    the config's ``train.augmentation.full_resolution_frames``, default False). ``say`` receives the
    run's summary lines (default: stderr). Launched by torchrun, every process calls it and trains its share
    (``ava_pipeline.training.distributed``); only rank 0 writes ``out`` and says anything. ``head_only``: the
    backbone stays frozen and only the head trains, on pooled RoI features computed once and cached in
    ``out/head_features`` (``ava_pipeline.training.head_only``); ``head_views`` > 1 caches that many views per
    training keyframe (the test-time one and ``head_views - 1`` augmented ones), one drawn per epoch."""
    job = distributed.from_environment()
    main = job is None or job.is_main
    say = (say or (lambda line: print(line, file=sys.stderr, flush=True))) if main else (lambda line: None)
    out = Path(out)
    device = distributed.process_device(device, job)
    model_cfg = load_config(config)
    settings = with_overrides(load_train_settings(config), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              augment=augment, shuffle=shuffle, full_resolution_frames=full_resolution_frames)
    per_process_batch(settings.batch_size, job)
    if head_only and job is not None:
        raise ConfigError("--head-only trains in one process (the head on cached features takes seconds); launch "
                          "ava-train without torchrun")
    if head_views > 1 and not (head_only and settings.augment):
        raise ConfigError(f"--head-views {head_views}: augmented views are cached for --head-only runs with "
                          "augmentation (" + ("add --head-only" if not head_only else
                                              "augmentation is off: --no-augment or train.augment: false")
                          + "); or use --head-views 1")
    classes = _class_map(model_cfg, labelmap, str(config))
    class_ids = list(classes)
    weights_path = _resolve_weights(weights if weights is not None else settings.init_weights)
    config_text = effective_config(model_cfg, classes, settings, name=model_cfg.name)
    annotation_files = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    fingerprint = {
        "config": text_sha256(config_text),
        "annotations": [_file_identity(p) for p in annotation_files],
        "proposals": [_file_identity(p) for p in proposals], "exclusions": _file_identity(exclusions),
        "val_annotations": _file_identity(val_annotations), "val_proposals": [_file_identity(p) for p in val_proposals],
        "val_exclusions": _file_identity(val_exclusions), "videos": str(Path(videos).resolve()),
        **({"head_only": True} if head_only else {}), **({"head_views": head_views} if head_views > 1 else {}),
        "weights": _file_identity(weights_path) if weights_path is not None and weights_path.is_file() else
        (str(weights_path) if weights_path else None),
    }
    _check_out_folder(out, fingerprint, config_text)

    samples = read_training_samples(annotation_files, class_ids=class_ids, proposals=list(proposals),
                                    exclusions=exclusions, score_thresh=model_cfg.box_thresh,
                                    strict_labels=labelmap is None)
    summary = [f"training set: {samples.summary()}"]  # said once every up-front check has passed
    if len(samples) < settings.batch_size:
        raise ConfigError(f"{annotation_files[0]}: {len(samples)} training keyframes are fewer than the batch size "
                          f"{settings.batch_size}, so an epoch would have no iteration (drop_last); pass "
                          f"--batch-size {max(len(samples), 1)} or fewer")
    video_paths = find_videos(videos, samples.video_ids(), rows=samples.first_rows())
    clip = dict(fps=model_cfg.data.fps, num_frames=model_cfg.model.num_frames,
                sampling_rate=model_cfg.model.sampling_rate)
    check_videos(samples.samples, video_paths, **clip)  # headers only: undecodable files, keyframes past the end
    validation = None
    if val_annotations is not None:
        validation = read_validation_set(val_annotations, class_ids=class_ids, proposals=list(val_proposals),
                                         exclusions=val_exclusions, score_thresh=model_cfg.box_thresh)
        summary.append(f"validation set: {validation.summary}")
        val_paths = find_videos(videos, dict.fromkeys(s.video_id for s in validation.samples))
        check_videos(validation.samples, val_paths, **clip)
        video_paths.update(val_paths)
    elif val_proposals or val_exclusions:
        raise ConfigError("--val-proposals and --val-exclusions need --val-annotations (the ground truth to score)")

    train_model_cfg = dataclasses.replace(model_cfg.model, num_classes=len(classes))
    model = build_training_model(train_model_cfg, seed=settings.seed, fc_init_std=settings.fc_init_std,
                                 zero_init_final_bn=settings.zero_init_final_bn)
    weights_sha256 = fingerprint["weights"]["sha256"] if isinstance(fingerprint["weights"], dict) else None
    init_report = (load_initial_weights(model, weights_path, classes, sha256=weights_sha256)
                   if weights_path is not None else None)
    summary += init_report.lines() if init_report else [f"initialised at random (PySlowFast's initialisation, seed "
                                                        f"{settings.seed})"]
    model.to(device)
    if job is not None:
        distributed.start(job, device)
        model = distributed.prepare_model(model, job, device, norm_type=settings.norm_type,
                                          num_sync_devices=settings.num_sync_devices,
                                          global_sync=settings.global_sync, frozen_bn=settings.frozen_bn)
    if head_only:
        head_only_mode.freeze_backbone(model)  # the optimizer holds the head alone
    optimizer = build_optimizer(model, settings.solver)
    checkpoints = out / "checkpoints"
    start_epoch, previous = 0, latest_checkpoint(checkpoints)
    if previous is not None:
        if not settings.auto_resume:
            raise ConfigError(f"{checkpoints} holds checkpoints and TRAIN.AUTO_RESUME is False; choose a new --out "
                              "folder or enable AUTO_RESUME to continue")
        start_epoch = resume(previous, model, optimizer, device).next_epoch
        summary.append(f"resuming from {previous} at epoch {start_epoch + 1}")
    if job is not None:
        distributed.check_same_start(job, start_epoch, device, checkpoints)
        summary.append(f"data-parallel: {job.world_size} processes, {settings.batch_size // job.world_size} of the "
                       f"{settings.batch_size} clips of each batch per process")
        job.barrier()  # every process has checked the folder before rank 0 writes into it
    for line in summary:
        say(line)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_label_map(classes, out / "labelmap.pbtxt")
        with atomic_output(out / "config.yaml") as temporary:
            temporary.write_text(config_text, encoding="utf-8")
        with atomic_output(out / "run.json") as temporary:
            temporary.write_text(json.dumps({"fingerprint": fingerprint}, indent=1) + "\n", encoding="utf-8")

    data = model_cfg.data
    common = dict(num_frames=train_model_cfg.num_frames, sampling_rate=train_model_cfg.sampling_rate,
                  alpha=train_model_cfg.alpha if train_model_cfg.num_pathways == 2 else None, fps=data.fps,
                  mean=data.mean, std=data.std, bgr=data.bgr, test_crop_size=data.test_crop_size,
                  cache_dir=out / "frames")
    augmentation_options = dataclasses.asdict(settings.augmentation)  # AvaClipDataset's argument names
    dataset = AvaClipDataset(samples, video_paths, **augmentation_options, uint8_batches=device.type == "cuda",
                             augment=settings.augment and not head_only, seed=settings.seed, **common)
    prepared = distributed.prepare_in_turn(dataset, job, workers=workers)
    say(prepared.summary())
    if len(dataset) < settings.batch_size:
        cause = next(iter(prepared.failed_videos.values()), None) or (
            f"{prepared.dropped[0][0]} at {prepared.dropped[0][1]} s: {prepared.dropped[0][2]}" if prepared.dropped
            else "")
        raise ConfigError(f"only {len(dataset)} training keyframes have frames, fewer than the batch size "
                          f"{settings.batch_size}{f' ({cause})' if cause else ''}; fix the videos or lower "
                          "--batch-size")
    val_dataset = None
    if validation is not None:
        val_dataset = AvaClipDataset(validation.samples, video_paths, augment=False, seed=settings.seed, **common)
        say(f"validation {distributed.prepare_in_turn(val_dataset, job, workers=workers).summary()}")

    batch_collate, trainee, val_features = collate, model, None
    if head_only:
        say("head-only: frozen backbone; the head trains on pooled RoI features of the test-time transform"
            + (f" and {head_views - 1} augmented view(s)" if head_views > 1 else ""))
        augmented = None
        if head_views > 1:
            augmented = AvaClipDataset(dataset.samples, video_paths, **augmentation_options, augment=True,
                                       seed=settings.seed, **common)
            say(f"augmented views: {augmented.prepare(workers=workers).summary()}")
        dataset = head_only_mode.cached_features(model, dataset, out / "head_features" / "train.pt", device=device,
                                                 augmented=augmented, views=head_views, say=say)
        if val_dataset is not None:
            val_features = head_only_mode.cached_features(model, val_dataset, out / "head_features" / "val.pt",
                                                          device=device, say=say)
        batch_collate, trainee, workers = head_only_mode.feature_collate, head_only_mode.HeadOnlyModel(model.head), 0
    metrics = MetricsLog(out / "metrics.jsonl", keep_epochs_before=start_epoch + 1) if main else None
    log_record = metrics.write if metrics is not None else (lambda record_type, **values: None)
    log_record("start", epoch=start_epoch, samples=samples.summary(), skipped=samples.skipped,
               frames=prepared.as_dict(), init=init_report.as_dict() if init_report else None,
               model=describe_parameters(model), device=str(device), threads=torch.get_num_threads(),
               processes=job.world_size if job is not None else 1)
    iterations = len(dataset) // settings.batch_size
    remaining = (settings.solver.max_epoch - start_epoch) * iterations
    progress = None
    if not quiet and remaining and main:
        from tqdm import tqdm
        progress = tqdm(total=remaining, unit="it", desc="ava-train", dynamic_ncols=True)
    last = {"checkpoint": previous, "eval": None}

    def evaluate_epoch(epoch_number: int) -> Optional[dict]:
        if val_dataset is None:
            return None
        predictions = None
        if val_features is not None:
            predictions = head_only_mode.head_predictions(trainee, val_features, device)
        elif job is not None:  # each process scores a share, rank 0 evaluates them all
            predictions = distributed.sharded_predictions(model, val_dataset, job, batch_size=settings.batch_size,
                                                          device=device)
            if not main:
                return None
        record = validate(model, val_dataset, validation, class_ids=class_ids, labelmap=out / "labelmap.pbtxt",
                          out_csv=out / "eval" / f"epoch_{epoch_number:05d}.csv", batch_size=settings.batch_size,
                          device=device, predictions=predictions)
        last["eval"] = record
        return record

    def save(epoch_number: int) -> None:
        if not main:
            last["checkpoint"] = checkpoints / checkpoint_name(epoch_number)
            return
        last["checkpoint"] = save_checkpoint(checkpoints, epoch_number, model, optimizer, config_text, device)
        plot_curves(out / "metrics.jsonl", out / "curves.png")

    def tell(line: str) -> None:
        (progress.write if progress is not None else say)(line)

    try:
        if job is not None:
            trainee = distributed.wrap(model, device)
        fit(trainee, optimizer, dataset, batch_collate, settings, start_epoch=start_epoch, device=device,
            workers=workers, job=job,
            hooks=LoopHooks(evaluate=evaluate_epoch, save=save, log=log_record, say=tell, progress=progress))
    finally:
        if metrics is not None:
            metrics.close()
        if progress is not None:
            progress.close()
    if last["checkpoint"] is None:
        raise ConfigError(f"{out}: no checkpoint was written")
    distributed.stop(barrier=True)
    say(f"done: {last['checkpoint']}")
    return TrainResult(out, out / "config.yaml", last["checkpoint"], out / "metrics.jsonl", last["eval"])
