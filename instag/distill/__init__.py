"""Distillation: teacher tags -> LoRA adapter on a small LLaMA-architecture model, and its evaluation."""
