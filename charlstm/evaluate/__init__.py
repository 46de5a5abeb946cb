"""Scoring text and a run's validation split, with n-gram baselines and a novelty check of generated text."""
