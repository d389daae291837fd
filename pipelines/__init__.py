"""fada's models, schedulers, training, distillation, generation and evaluation."""
