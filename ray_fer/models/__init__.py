"""Building blocks that several methods' networks share (:mod:`ray_fer.models.layers`).

The networks themselves live with their methods (:mod:`ray_fer.methods`), registered by
name in :mod:`ray_fer.methods.registry`.
"""
