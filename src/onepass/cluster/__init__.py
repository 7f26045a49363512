"""Running sweeps on clusters: :mod:`onepass.cluster.slurm` (SLURM through submitit)."""
