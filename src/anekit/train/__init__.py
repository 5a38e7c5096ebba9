"""Training: data, CPU ops, optimizer, the step that schedules kernels, checkpoints, generation."""
