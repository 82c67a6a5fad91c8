"""Ray Data runner for batch and sweep (--ray): the same TextGenerator in a pool of actors.

Imported only when a command is given --ray; the local path and the runtime never import Ray.
cluster.py joins or starts a cluster, export.py gets the export to every worker, batch.py and
sweep.py are the driver side of each command, workers.py the actors.
"""
