"""Running ray_fer on a Ray cluster: a local multi-node cluster for tests (:mod:`.local`).

The cloud side (the AWS cluster-launcher config, the KubeRay manifest and the guide) lives
in the repository's ``cluster/`` folder.
"""
