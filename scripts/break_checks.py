"""Do the tests catch what they claim to? Each check below is a one-line mistake in the package and the tests
that must fail on it (issue #34). The script applies each mistake to a scratch copy of the working tree (beside
it, so that ../shared is found), runs those tests there, and prints whether they failed, with the first failure
line; it never touches the tree.

    .venv/bin/python scripts/break_checks.py                # every check (about 15 minutes on 2 CPU cores)
    .venv/bin/python scripts/break_checks.py --only flip     # the checks whose name contains "flip"
    .venv/bin/python scripts/break_checks.py --json out.json

Exit status 1 when some mistake passed its tests. Not part of the suite: it reruns slow tests many times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    name: str
    file: str  # under the repository root
    old: str  # occurs exactly once in file
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail


TL = "tests/test_transfer_learning.py"
FT, DT, ST = "tests/test_finetune.py", "tests/test_detect.py", "tests/test_stream.py"
SG, EV = "tests/test_segment.py", "tests/test_evaluate.py"
HE, MP, DC = "tests/test_health.py", "tests/test_map.py", "tests/test_docs.py"
TR, RC = "tests/test_trackers.py", "tests/test_recipe.py"
TR_ML = f"{TR}::test_mlflow_gets_config_records_and_results_and_a_resumed_run_continues_the_same_run"
TR_WB = f"{TR}::test_wandb_logs_offline_without_a_key_and_a_resumed_run_keeps_its_id"
ON, ON_SAME = "tests/test_onnx.py", "test_onnxruntime_gives_pytorchs_features_at_any_batch_size"
EV_RESUME = f"{EV}::test_a_resumed_evaluation_skips_finished_runs_continues_the_interrupted_one_and_rebuilds_its_report"
BREAKS = [
    # 1. fine-tuning and detection learn
    Break("finetune: labels paired with the wrong images", "moco/data/pipelines.py",
          "self.labels[idx].to(self.device", "self.labels[idx.flip(0)].to(self.device",
          (f"{TL}::test_fine_tuning_learns_and_the_same_run_on_shuffled_labels_does_not",)),
    Break("finetune: backbone left out of the optimiser", "moco/transfer/classifier.py",
          '[{"params": [p for p in backbone if p.requires_grad]', '[{"params": []',
          (f"{TL}::test_fine_tuning_learns_and_the_same_run_on_shuffled_labels_does_not",)),
    Break("detect: boxes paired with another image", "moco/data/coco.py",
          "                images.append(x)", "                images.insert(0, x)",
          (f"{TL}::test_detection_learns_far_beyond_an_untrained_detector",)),
    Break("detect: a flipped image keeps unflipped boxes", "moco/data/coco.py",
          "x, t = x.flip(-1), flip_target(t, x.shape[-1], self.keypoint_flip)", "x, t = x.flip(-1), t",
          (f"{TL}::test_detection_learns_far_beyond_an_untrained_detector",)),
    Break("detect: backbone left out of the optimiser", "moco/transfer/classifier.py",
          '[{"params": [p for p in backbone if p.requires_grad]', '[{"params": []',
          (f"{TL}::test_detection_learns_far_beyond_an_untrained_detector",)),
    # 2. behaviour pinned
    Break("transfer: random init loads the checkpoint it was given", "moco/transfer/init.py",
          '    if kind != "random":', "    if ckpt:",
          (f"{FT}::test_random_init_fine_tunes_the_same_with_or_without_a_checkpoint_path",
           f"{DT}::test_random_init_detects_the_same_with_or_without_a_checkpoint_path")),
    Break("the checkpoint init loads the key encoder", "moco/export/backbone.py",
          'prefix: str = "encoder_q."', 'prefix: str = "encoder_k."',
          (f"{FT}::test_random_and_checkpoint_init_differ_only_in_their_weights",
           f"{DT}::test_the_detector_starts_from_the_checkpoints_backbone_and_trains")),
    Break("detect: backbone out of the optimiser (BatchNorm statistics still move)", "moco/transfer/classifier.py",
          '[{"params": [p for p in backbone if p.requires_grad]', '[{"params": []',
          (f"{DT}::test_the_detector_starts_from_the_checkpoints_backbone_and_trains",)),
    Break("finetune: the classifier out of the optimiser", "moco/transfer/classifier.py",
          '{"params": [p for p in rest if p.requires_grad]', '{"params": []',
          (f"{FT}::test_a_frozen_backbone_does_not_move",)),
    Break("finetune: test labels mapped by position, not by name", "moco/tasks/finetune.py",
          "torch.tensor([index[test.classes[y]] for y in test.labels])", "torch.tensor(list(test.labels))",
          (f"{FT}::test_test_labels_are_mapped_to_the_training_classes_by_name",)),
    Break("detect: masks scored as boxes", "moco/tasks/detect.py",
          'coco_ap(self.val.gt, found, "segm")', 'coco_ap(self.val.gt, found, "bbox")',
          (f"{DT}::test_masks_are_scored_as_masks_not_as_boxes",)),
    Break("finetune: labels_seed ignored", "moco/tasks/finetune.py",
          "balanced_subset(full, f.labels, f.labels_seed)", "balanced_subset(full, f.labels, 0)",
          (f"{FT}::test_the_labels_seed_setting_chooses_the_images",)),
    Break("finetune: one labels seed for every class", "moco/transfer/labels.py",
          "manual_seed(seed * 1_000_003 + c)", "manual_seed(seed * 1_000_003)",
          (f"{FT}::test_every_class_draws_its_labels_with_a_seed_of_its_own",)),
    Break("finetune: a resumed run draws its labels again", "moco/tasks/finetune.py",
          '        labels_file = out / "labels.txt"', "        labels_file = labels_file",
          (f"{FT}::test_a_resumed_fine_tune_keeps_its_labels_when_the_folder_changed",)),
    Break("detect: both processes take the first half of a batch", "moco/data/coco.py",
          "part = rank_slice(b, dinfo)", "part = slice(0, b // dinfo.world_size)",
          (f"{DT}::test_each_process_takes_its_half_of_every_batch_with_the_batch_flips",)),
    Break("detect: flips drawn per process", "moco/data/coco.py",
          "flips = (torch.rand(b, generator=self.gen) < self.flip)[part]",
          "flips = (torch.rand(b // dinfo.world_size, generator=self.gen) < self.flip)",
          (f"{DT}::test_each_process_takes_its_half_of_every_batch_with_the_batch_flips",)),
    Break("shards: the shuffle buffer holds one sample", "moco/data/stream.py",
          "shuffled(stream(), plan.buffer, rng)", "shuffled(stream(), 1, rng)",
          (f"{ST}::test_the_shuffle_buffer_mixes_class_sorted_shards",)),
    Break("shards: bundles dealt round-robin", "moco/data/stream.py",
          "        bundles[b].append(i)", "        bundles[i % n].append(i)",
          (f"{ST}::test_bundles_are_greedy_largest_first_and_strides_take_over_when_they_cannot_balance",)),
    Break("launcher: a worker SIGTERMed by torchrun is named as the cause", "moco/core/launch.py",
          "f.exitcode < 0 and f.exitcode != -signal.SIGTERM", "f.exitcode < 0",
          ("tests/test_distributed.py::test_the_failure_line_names_the_worker_that_failed_first_and_says_when_there"
           "_is_no_checkpoint",)),
    Break("launcher: the harness does not check that the batch divides by the processes", "moco/training/harness.py",
          "    check_global_batch(cfg.optim.batch_size)\n", "    pass\n",
          ("tests/test_distributed.py::test_finetune_runs_in_two_processes_and_a_failed_worker_is_named",)),
    Break("budget: the final evaluation is not reserved", "moco/training/budget.py",
          "return self.end_seconds + 1.1 * max(timings, default=0.0) + 0.25", "return self.end_seconds + 0.25",
          (f"{DT}::test_a_budgeted_detector_ends_by_its_deadline_with_its_final_evaluation_reserved",)),
    Break("moco shards: a folder with nothing readable leaves an empty shard", "moco/data/shards/write.py",
          "            Path(f).unlink(missing_ok=True)", "            pass",
          ("tests/test_shards.py::test_an_empty_shard_list_an_unreadable_folder_and_too_few_samples_get_one_line",)),
    # 5. the trainer, config by section (issue #35)
    Break("trainer: the scheduled lr is not applied", "moco/training/loop.py",
          'g["lr"] = lr * g.get("lr_scale", 1.0)', 'g["lr"] = 0.0 * lr',
          ("tests/test_toy_task.py::test_a_toy_task_trains_evaluates_and_records_through_the_trainer",)),
    Break("config: the old train.knn_every key is refused", "moco/config.py",
          'ALIASES = {"train.knn_every": "train.eval_every"}', "ALIASES: dict[str, str] = {}",
          ("tests/test_config.py::test_the_old_knn_every_key_still_sets_the_evaluation_interval_with_one_warning",)),
    Break("config: a transfer validated by pretraining's rules", "moco/transfer/common.py",
          "base=cfg, sections=recipe.sections)", "base=cfg)",
          (f"{FT}::test_the_pretrained_method_is_kept_as_a_record_and_does_not_limit_the_batch",)),
    Break("trainer: the task's before_step is not run", "moco/training/loop.py",
          "            task.before_step(state.model, cfg, t)", "            pass",
          ("tests/test_toy_task.py::test_the_trainer_runs_the_tasks_hook_every_step_and_averages_its_statistics_over"
           "_the_epoch",)),
    Break("trainer: an epoch's statistic is its last step's", "moco/training/loop.py",
          "            self.stats[k] += v", "            self.stats[k] = v.clone()",
          ("tests/test_toy_task.py::test_the_trainer_runs_the_tasks_hook_every_step_and_averages_its_statistics_over"
           "_the_epoch",)),
    Break("data: a stream is given to a memory bank", "moco/data/sets.py", "        if indexed:", "        if False:",
          ("tests/test_shards.py::test_the_data_sets_module_refuses_an_indexed_stream_and_a_too_large_knn_memory",)),
    Break("data: the kNN memory limit is not kept", "moco/data/sets.py",
          "if limit is not None and (n is None or n > limit):", "if False:",
          ("tests/test_shards.py::test_the_data_sets_module_refuses_an_indexed_stream_and_a_too_large_knn_memory",)),
    Break("data: val/ is preferred to test/", "moco/data/folder.py",
          "    for name in SPLITS[1:]:", "    for name in reversed(SPLITS[1:]):",
          ("tests/test_data.py::test_find_split",)),
    Break("data: fine-tuning shards decode every sample, not the chosen ones", "moco/data/sets.py",
          "keys = None if chosen is None or whole else chosen.paths", "keys = None",
          (f"{FT}::test_shards_fine_tune_as_their_folder_does_resume_and_take_its_labels_file",)),
    Break("resume: a checkpoint of another kind is taken for the run's config", "moco/training/checkpoint.py",
          'if ck.get("task", "pretrain") != task:', "if False:",
          (f"{FT}::test_finetune_will_not_resume_a_pretraining_run",)),
    # 3 and 4. shards
    Break("shards: resume skips the samples read, not given (the old behaviour)", "moco/data/stream.py",
          "if record is not None and start > 0 and record[3 * w] == given[w]:",
          "if False and start > 0 and record[3 * w] == given[w]:",
          (f"{ST}::test_a_resume_after_an_unreadable_member_repeats_nothing_and_shifts_nothing",)),
    Break("shards: the checkpoint's reader positions are not used", "moco/training/run.py",
          '        resume_at(record["positions"][run.dinfo.rank])', "        resume_at(None)",
          ("tests/test_shards.py::test_pretraining_from_shards_trains_every_sample_and_resumes_exactly",
           "tests/test_distributed.py::test_two_processes_resume_a_stream_from_every_ranks_reader_positions")),
    Break("shards: the checkpoint keeps rank 0's reader positions alone", "moco/training/run.py",
          '"positions": concat_all_gather(mine).tolist()', '"positions": mine.tolist()',
          ("tests/test_distributed.py::test_two_processes_resume_a_stream_from_every_ranks_reader_positions",)),
    Break("shards: one process drops its workers' remainders", "moco/data/stream.py",
          "        n_tail = _size(tail) // b\n", "        n_tail = 0\n",
          (f"{ST}::test_one_process_trains_on_every_key_once_an_epoch_at_any_number_of_workers",)),
    Break("detect: a set held in memory is decoded again on every read", "moco/data/coco.py",
          "        if self.cache is not None and k in self.cache:\n",
          "        if False:\n",
          (f"{DT}::test_a_set_that_fits_in_memory_is_decoded_once_and_trains_bit_for_bit_the_same",)),
    Break("detect: the RoIAlign sampling setting does not reach the box pooler", "moco/transfer/detector.py",
          "box_roi_pool=MultiScaleRoIAlign(names, 7, d.roi_sampling)", "box_roi_pool=MultiScaleRoIAlign(names, 7, 2)",
          (f"{DT}::test_the_detector_samples_and_anchors_as_configured",)),
    Break("detect: the CPU recipe falls back to Detectron2's 512 RoIs", "moco/tasks/detect.py",
          '"detect": {"rois_per_image": 128, "roi_sampling": 1},', '"detect": {"roi_sampling": 1},',
          (f"{DT}::test_the_cpu_recipe_is_sized_by_ap_per_minute_and_the_dataclass_keeps_the_authors_values",)),
    Break("budget: the evaluation's timing counts as training time", "moco/training/loop.py",
          "t_end - totals.start - totals.aside)", "t_end - totals.start)",
          ("tests/test_toy_task.py::test_a_budgets_evaluation_timing_is_not_counted_as_training_time",)),
    Break("precision: auto takes oneDNN's emulated bf16 for native", "moco/core/precision.py",
          "return onednn if flags is None else onednn and any(f in flags for f in BF16_FLAGS)", "return onednn",
          ("tests/test_precision.py::test_native_bf16_follows_the_cpus_bf16_flags",)),
    # 3. segmentation and keypoints (issue #36)
    Break("segment: a flipped view keeps its map unflipped", "moco/data/segmentation.py",
          "        x, y = x.flip(-1), y.flip(-1)", "        x, y = x.flip(-1), y",
          (f"{SG}::test_training_views_keep_images_and_maps_aligned_and_pad_with_ignored_pixels",
           f"{SG}::test_a_short_run_learns_and_misaligned_maps_do_not")),
    Break("segment: the map is resized with the image's bilinear blend", "moco/data/segmentation.py",
          'mode="nearest-exact")[0, 0]', 'mode="bilinear")[0, 0]',
          (f"{SG}::test_training_views_keep_images_and_maps_aligned_and_pad_with_ignored_pixels",)),
    Break("segment: padding is trained on as background", "moco/data/segmentation.py",
          "y = F.pad(y, (0, pw, 0, ph), value=ignore)", "y = F.pad(y, (0, pw, 0, ph), value=0)",
          (f"{SG}::test_training_views_keep_images_and_maps_aligned_and_pad_with_ignored_pixels",)),
    Break("segment: ignored pixels are scored", "moco/evaluation/segmentation.py",
          "    keep = target != ignore_index\n", "    keep = target >= 0\n",
          (f"{SG}::test_miou_and_pixel_accuracy_match_a_hand_computation_with_ignored_pixels_left_out",)),
    Break("segment: IoU without the false positives", "moco/evaluation/segmentation.py",
          "union = cm.sum(0) + cm.sum(1) - tp", "union = cm.sum(1)",
          (f"{SG}::test_miou_and_pixel_accuracy_match_a_hand_computation_with_ignored_pixels_left_out",)),
    Break("segment: a dilated stage's first block at the new dilation", "moco/transfer/segmenter.py",
          "d = previous if i == 0 else dilation", "d = dilation",
          (f"{SG}::test_dilation_is_torchvisions_and_keeps_the_weights",)),
    Break("segment: a map value beyond the classes passes", "moco/data/segmentation.py",
          "bad = (raw >= self.num_classes) & (raw != self.ignore)", "bad = raw > 255",
          (f"{SG}::test_bad_input_gets_one_line",)),
    Break("segment: the views' loader draws from the global generator", "moco/data/segmentation.py",
          "generator=torch.Generator().manual_seed(seed), pin_memory", "pin_memory",
          (f"{SG}::test_resume_is_exact",)),
    Break("segment: validation stacks images of different sizes", "moco/data/segmentation.py",
          "or held[0][0].shape != item[0].shape)", ")",
          (f"{SG}::test_whole_images_are_scored_uncropped_in_batches_of_one_size",)),
    Break("keypoints: masks trained beside keypoints", "moco/tasks/detect.py",
          "train.segmentations is not None and not n_kp\n", "train.segmentations is not None\n",
          (f"{DT}::test_keypoints_with_segmentations_train_keypoint_rcnn_without_masks",)),
    Break("keypoints: a flip keeps each keypoint's name", "moco/data/coco.py",
          "            kp = kp[:, keypoint_flip]", "            pass",
          (f"{DT}::test_keypoints_are_parsed_flipped_with_their_twins_and_malformed_ones_skipped",)),
    Break("keypoints: the heatmaps stay in channels_last for torchvision's loss", "moco/transfer/detector.py",
          "return super().forward(x).contiguous()", "return super().forward(x)",
          (f"{DT}::test_keypoint_annotations_train_keypoint_rcnn_and_score_keypoint_ap",)),
    Break("keypoints: the sigmas do not reach pycocotools", "moco/evaluation/coco_ap.py",
          "np.array(sigmas or COCO_PERSON_SIGMAS)", "np.array(COCO_PERSON_SIGMAS[:5])",
          (f"{DT}::test_keypoint_ap_is_pycocotools_oks_with_the_sets_sigmas",)),
    # 4. moco evaluate (issue #37)
    Break("evaluate: labels saved interpolated on a linear label axis", "moco/experiments/savings.py",
          "return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0))), False",
          "return f0 + t * (f1 - f0), False",
          (f"{EV}::test_labels_saved_interpolates_on_the_log_label_axis",)),
    Break("evaluate: the target is random init's 100% even when lower", "moco/experiments/savings.py",
          "target_share, target = max(rnd, key=lambda p: (p[1], p[0]))", "target_share, target = rnd[-1]",
          (f"{EV}::test_labels_saved_says_when_the_curves_do_not_cross_or_it_is_noise",)),
    Break("evaluate: random init learns from another share's labels", "moco/experiments/evaluate.py",
          '"labels_file": files[ft.labels], **length}',
          '"labels_file": files["100%" if ft.init.kind == "random" else ft.labels], **length}',
          (EV_RESUME,)),
    Break("evaluate: a finished fine-tune runs again", "moco/experiments/evaluate.py",
          '    todo = [r for r in runs if not (out / "runs" / r.folder / "results.json").is_file()]',
          "    todo = list(runs)", (EV_RESUME,)),
    Break("evaluate: the interrupted fine-tune starts over", "moco/experiments/evaluate.py",
          '    resume = "auto" if (out / "checkpoint_last.pt").is_file() else None', "    resume = None",
          (EV_RESUME,)),
    Break("evaluate: the probe learns from all labels at every share", "moco/experiments/evaluate.py",
          "linear[lab] = probe_features(f_train[idx], y_train[idx]", "linear[lab] = probe_features(f_train, y_train",
          (EV_RESUME,)),
    Break("evaluate: a share ignores the report's reserve", "moco/experiments/evaluate.py",
          "left = self.deadline - time.perf_counter() - REPORT_RESERVE_S - frozen_left_s",
          "left = self.deadline - time.perf_counter() - frozen_left_s",
          (f"{EV}::test_the_plan_shares_what_is_left_and_refuses_a_budget_too_small",)),
    Break("evaluate: the report names the day it was rebuilt", "moco/experiments/evaluate_report.py",
          "f\"{results['started']}.\")", "f\"{__import__('time').time()}.\")",
          (EV_RESUME,)),
    # 6. ONNX export (issue #38)
    Break("onnx: the batch axis is fixed at the example's", "moco/export/onnx.py",
          "dynamic_shapes=({0: batch},)", "dynamic_shapes=None", (f"{ON}::{ON_SAME}[resnet]",)),
    Break("onnx: the check compares the wrong batch", "moco/export/onnx.py",
          "worst = max(worst, (got - ref).abs().max().item())", "worst = max(worst, 0.0)",
          (f"{ON}::test_the_check_catches_a_file_that_is_not_the_backbone",)),
    Break("onnx: a file that fails its check is kept", "moco/export/formats.py",
          "        if not check.ok:\n            raise ValueError(", "        if False:\n            raise ValueError(",
          (f"{ON}::test_a_file_that_fails_its_check_is_refused",)),
    Break("onnx: the metadata gives the std as the mean", "moco/export/formats.py",
          '"moco.mean": ",".join(map(str, mean))', '"moco.mean": ",".join(map(str, std))',
          (f"{ON}::{ON_SAME}[resnet]",)),
    # 7. experiment trackers (issue #38)
    Break("trackers: records never reach the trackers", "moco/training/logging.py",
          "            t.log(record)", "            pass", (TR_ML, TR_WB)),
    Break("trackers: a resumed run opens a new tracker run", "moco/training/trackers.py",
          "tracker = TRACKERS[name][0](config, out, task, ids.get(name))",
          "tracker = TRACKERS[name][0](config, out, task, None)", (TR_ML, TR_WB)),
    Break("trackers: MLflow metrics all at step 0", "moco/training/trackers.py",
          'self._metrics(values, int(record.get("step", 0)))', "self._metrics(values, 0)", (TR_ML,)),
    Break("trackers: W&B rows at the wrong step", "moco/training/trackers.py",
          'self.run.log(values, step=int(record.get("step", 0)))', "self.run.log(values)", (TR_WB,)),
    Break("trackers: TensorBoard gets no scalars", "moco/training/logging.py",
          "                self.writer.add_scalar(k, v, record.get(\"step\", 0))", "                pass", (TR_ML,)),
    Break("trackers: the final results are not logged", "moco/training/harness.py",
          "            t.results(result_record(result), state.step)", "            pass", (TR_ML, TR_WB)),
    # 8. run health, the map, the manual (issue #38)
    Break("health: chance is ln K, not ln(K + 1)", "moco/evaluation/health.py",
          "return Setting(me.K + 1, steps_per_epoch", "return Setting(me.K, steps_per_epoch",
          (f"{HE}::test_a_queue_older_than_the_key_encoder_remembers_is_stale",
           f"{HE}::test_a_loss_at_chance_after_the_warm_up_is_not_learning")),
    Break("health: judged during the warm-up", "moco/evaluation/health.py",
          "if step >= s.warmup_steps + t.settle_steps and never_learnt:", "if never_learnt:",
          (f"{HE}::test_a_loss_at_chance_after_the_warm_up_is_not_learning",)),
    Break("health: a run that fell and came back is 'not learning'", "moco/evaluation/health.py",
          "never_learnt = min(tr.lowest, loss) >= t.stuck * chance", "never_learnt = loss >= t.stuck * chance",
          (f"{HE}::test_a_loss_climbing_back_towards_chance_or_a_falling_knn_is_collapse",)),
    Break("health: cheating judged at any time", "moco/evaluation/health.py",
          "if tr.accs and step <= t.cheat_epochs * s.steps_per_epoch and", "if tr.accs and",
          (f"{HE}::test_a_pretext_task_solved_at_once_is_cheating_but_late_mastery_is_not",)),
    Break("health: one fall of the kNN is collapse", "moco/evaluation/health.py",
          "if all(a - b > t.knn_drop for a, b in zip(last, last[1:])):",
          "if any(a - b > t.knn_drop for a, b in zip(last, last[1:])):",
          (f"{HE}::test_a_loss_climbing_back_towards_chance_or_a_falling_knn_is_collapse",)),
    Break("health: a sign shown again and again", "moco/evaluation/health.py",
          "            if name not in self.shown and all(s.name != name for s in new):",
          "            if all(s.name != name for s in new):",
          (f"{HE}::test_each_sign_is_shown_once_and_a_health_record_counts_as_shown",
           f"{HE}::test_the_trainer_shows_a_sign_once_records_it_and_a_resumed_run_does_not_repeat_it")),
    Break("health: a resumed run forgets what it showed", "moco/training/loop.py",
          "        if int(rec.get(\"step\", 0)) <= state.step:\n            monitor.observe(rec)",
          "        if False:\n            monitor.observe(rec)",
          (f"{HE}::test_the_trainer_shows_a_sign_once_records_it_and_a_resumed_run_does_not_repeat_it",)),
    Break("map: coordinates of other images", "moco/evaluation/feature_map.py",
          "coords = embed_2d(features[torch.from_numpy(index)], seed)",
          "coords = embed_2d(features[torch.from_numpy(index[::-1].copy())], seed)",
          (f"{MP}::test_each_point_lies_among_its_own_class",)),
    Break("map: thumbnails far from the cell centres", "moco/evaluation/feature_map.py",
          "picked.append(inside[np.argmin(((coords[inside] - centre) ** 2).sum(1))])",
          "picked.append(inside[np.argmax(((coords[inside] - centre) ** 2).sum(1))])",
          (f"{MP}::test_thumbnails_are_the_points_nearest_each_occupied_cells_centre",)),
    Break("map: every point one colour", "moco/evaluation/feature_map.py",
          "colour = (lambda c: cmap(c % cmap.N)) if labels is not None",
          "colour = (lambda c: cmap(0)) if labels is not None",
          (f"{MP}::test_moco_map_writes_a_picture_coloured_by_class",)),
    # 5. the recipe chosen for the data (issue #48)
    Break("recipe: the queue ignores the data set's size", "moco/presets/auto.py",
          "k = max(keys_per_step, min(ceiling, pow2_floor(n_images / 4)))", "k = max(keys_per_step, ceiling)",
          (f"{RC}::test_a_small_folder_of_small_images_gets_a_queue_and_batch_that_fit",
           f"{RC}::test_photos_get_the_largest_rung_the_budget_teaches")),
    Break("recipe: the ladder climbs past the budget", "moco/presets/auto.py",
          "if cand is not fits[0] and r_s * OVERHEAD * seconds < need:", "if False:",
          (f"{RC}::test_photos_get_the_largest_rung_the_budget_teaches",
           f"{RC}::test_a_short_budget_takes_the_32px_recipe_and_says_so")),
    Break("recipe: views larger than the images", "moco/presets/auto.py",
          "fits = [r for r in LADDER if not data.median_side or r.view <= data.median_side] or [LADDER[0]]",
          "fits = list(LADDER)", (f"{RC}::test_views_never_exceed_the_images",)),
    Break("recipe: one BN group on one device", "moco/presets/auto.py",
          "g = max(1, min(8, batch // 16))", "g = 1",
          (f"{RC}::test_photos_get_the_largest_rung_the_budget_teaches",
           f"{RC}::test_a_small_folder_of_small_images_gets_a_queue_and_batch_that_fit")),
    Break("recipe: the batch ignores the memory", "moco/presets/auto.py",
          "b = max(2, min(MAX_BATCH, by_data, by_memory))", "b = max(2, min(MAX_BATCH, by_data))",
          (f"{RC}::test_the_batch_fits_the_memory_and_the_lr_follows_it",)),
    Break("recipe: a user's --set not marked", "moco/tasks/pretrain.py",
          'mine = f" [you set {cfg[section][name]}]"', 'mine = ""',
          (f"{RC}::test_the_cli_prints_records_and_lets_every_choice_be_overridden",)),
    Break("from_backbone: bn_splits ignored", "moco/methods/moco.py",
          "        backbone = split_batchnorm(backbone, bn_splits)\n", "",
          ("tests/test_moco.py::test_from_backbone_splits_batchnorm_for_shuffle_bn_on_one_device",)),
    Break("knn_accuracy: raw features not normalised", "moco/evaluation/knn.py",
          "    train_feats, test_feats = _unit(train_feats), _unit(test_feats)\n", "",
          ("tests/test_knn.py::test_knn_accuracy_normalises_raw_features_itself",)),
    Break("docs: a schema field without a comment", "moco/schema.py",
          "    dim: int = 128  # the embedding q and k live in (the paper's 128)", "    dim: int = 128",
          (f"{DC}::test_the_settings_reference_is_the_schema",)),
    Break("detect: camera photos at their full size", "moco/tasks/detect.py",
          'd.min_size = [max(16, capped(train.median_short_side(), DETECT_SHORT, "detection trains and tests",',
          'd.min_size = [max(16, capped(train.median_short_side(), 10**6, "detection trains and tests",',
          (f"{DT}::test_camera_photos_train_at_torchvisions_ceiling_and_a_step_that_cannot_fit_is_refused",)),
    Break("detect: camera JPEGs decoded at full size", "moco/data/coco.py",
          "img = load_rgb(path, draft_size=draft_side(h, w, *self.sizes))", "img = load_rgb(path)",
          (f"{DT}::test_camera_jpegs_decode_at_the_detectors_size_with_their_targets_and_predictions_scaled",)),
    Break("detect: reduced boxes not mapped back", "moco/data/coco.py",
          'res = {**out, "boxes": out["boxes"] / out["boxes"].new_tensor([fx, fy, fx, fy])}',
          'res = {**out, "boxes": out["boxes"]}',
          (f"{DT}::test_camera_jpegs_decode_at_the_detectors_size_with_their_targets_and_predictions_scaled",)),
    Break("detect: camera batch without lr scaling", "moco/tasks/detect.py",
          "o.lr, o.batch_size = o.lr * b / o.batch_size, b", "o.batch_size = b",
          (f"{DT}::test_camera_photos_train_two_images_a_step_unless_the_batch_is_given",)),
    Break("detect: the user's --set batch overridden", "moco/config.py",
          "(o.partition(\"=\") for o in overrides or []) if k.strip() == key]",
          "(o.partition(\"=\") for o in overrides or []) if False]",
          (f"{DT}::test_camera_photos_train_two_images_a_step_unless_the_batch_is_given",)),
    Break("recipe: 100 epochs are enough", "moco/presets/auto.py",
          "MIN_EPOCHS = 200", "MIN_EPOCHS = 100",
          (f"{RC}::test_thirty_minutes_of_a_2_core_cpu_on_3000_photos_keeps_the_32px_recipe",
           f"{RC}::test_photos_get_the_largest_rung_the_budget_teaches")),
    Break("recipe: the queue ignores the user's batch", "moco/presets/auto.py",
          "    b = batch or min(b, b_pre)", "    b = min(b, b_pre)",
          ("tests/test_shards.py::test_an_empty_shard_list_an_unreadable_folder_and_too_few_samples_get_one_line",)),
    Break("pretrain: a short budget read before it is refused", "moco/cli.py",
          '    check_budget(flags["optim.time_budget"] or 0)\n', "",
          ("tests/test_budget.py::test_refusals_are_one_line_before_any_work",)),
    Break("segment: camera JPEGs decoded at full size for training", "moco/data/segmentation.py",
          "img = load_rgb(path, draft_size=self.draft or None)", "img = load_rgb(path)",
          (f"{SG}::test_camera_jpegs_train_from_a_reduced_decode_whose_views_match_the_map",)),
    Break("recipe: the probe times a step of its own", "moco/tasks/recipe.py",
          "lambda: train_step(net, opt, scaler, views, gen, precision, device)[0].item(), steps)",
          "lambda: net(views, gen)[0].item(), steps)",
          (f"{RC}::test_the_probe_times_the_trainers_own_step_and_leaves_the_random_state",)),
    Break("recipe: shards summarised without their sizes", "moco/tasks/recipe.py",
          "    for x in islice(images, sample):", "    for x in islice(images, 0):",
          (f"{RC}::test_shards_are_summarised_from_their_image_headers",)),
    Break("docs: broken links pass the strict build", "mkdocs.yml",
          "  links: {not_found: warn,", "  links: {not_found: info,",
          (f"{DC}::test_a_broken_link_or_a_page_left_out_fails_the_build",)),
]


def scratch_copy(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored) copied to ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def apply(tree: Path, b: Break) -> str:
    """Apply ``b`` in ``tree``; returns the original text of its file."""
    path = tree / b.file
    text = path.read_text()
    if text.count(b.old) != 1:
        raise SystemExit(f"{b.name}: {b.old!r} occurs {text.count(b.old)} times in {b.file}, not once: update the "
                         "check to the code")
    path.write_text(text.replace(b.old, b.new))
    return text


def first_failure(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("E ") or line.startswith("FAILED"):
            return line.strip()[:200]
    return out.strip().splitlines()[-1][:200] if out.strip() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the checks whose name contains this")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    chosen = [b for b in BREAKS if args.only in b.name]
    results = []
    with tempfile.TemporaryDirectory(prefix=".break-checks-", dir=ROOT.parent) as tmp:
        tree = Path(tmp)
        scratch_copy(tree)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        for b in chosen:
            original = apply(tree, b)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "",
                                *b.tests], cwd=tree, env=env, capture_output=True, text=True)
            (tree / b.file).write_text(original)
            caught = r.returncode == 1
            results.append({"name": b.name, "caught": caught, "returncode": r.returncode,
                            "seconds": round(time.perf_counter() - t0, 1), "tests": list(b.tests),
                            "failure": first_failure(r.stdout + r.stderr)})
            print(f"{'caught' if caught else 'MISSED'}  {b.name}  ({results[-1]['seconds']} s)\n"
                  f"        {results[-1]['failure']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    missed = [r["name"] for r in results if not r["caught"]]
    print(f"{len(results) - len(missed)} of {len(results)} mistakes caught" + (f"; missed: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
