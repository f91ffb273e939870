"""Searching: search spaces (:mod:`.space`), a search's configs (:mod:`.search`), its trials
(:mod:`.trial`), its results (:mod:`.results`) and ensemble selection (:mod:`.ensemble`);
``python -m ray_fer.tune`` drives them."""
