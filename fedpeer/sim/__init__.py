"""The simulation runner: thousands of nodes in one process around one shared base model.

`mesh.SimMesh` holds the nodes as stacked states and runs rounds with the real trainer, codec and
CHOCO code; `mixing` is the vectorized mixing math (CHOCO, push-sum); `spectral` the graphs' spectral
gaps; `runner` the `--runner sim` of `fedpeer scenario run` (progress, metrics, summary).
"""
