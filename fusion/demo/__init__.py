"""The embedded default of ``fusion demo``: trained members shipped as package data, run on rendered test images.

* :mod:`fusion.demo.assets`: where the shipped member files live, the demo config, the SHA-256 manifest.
* :mod:`fusion.demo.real`: ``fusion demo`` (render -> ensemble -> fuse -> score -> report and picture).
* :mod:`fusion.demo.picture`: the side-by-side picture of members' and fused boxes.
* :mod:`fusion.demo.retrain`: ``fusion demo --retrain`` / ``python -m fusion.demo.retrain``, which reproduces every
  shipped file with the project's own jobs.

``fusion demo --simulated`` (simulated members, no networks) stays in :mod:`fusion.cli.demo`.
"""
