"""Training: logit transforms, losses, negative samplers, frequency estimators, the loop, checkpoints."""
