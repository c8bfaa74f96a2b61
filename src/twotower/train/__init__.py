"""Training: the retrieval task (loss, negatives, temperature, logQ) and the trainer (loop, schedule,
checkpoints, metrics, early stopping), with their configs, parameter groups and run-directory rules.

Where things live: ``config`` (TrainConfig, RunConfig) · ``task`` (RetrievalTask) · ``negatives`` /
``frequency`` / ``logits`` / ``losses`` (its parts) · ``trainer`` (Trainer) · ``params`` (param groups,
optimizer, schedule) · ``batches`` / ``pseudo`` (what a step trains on) · ``checkpoint`` (writing) · ``load``
(a trained run: model + RunConfig) · ``run`` (run-directory rules, resume) · ``metrics_log`` (metrics.csv).
"""
