"""Beyond one machine: `ptuning submit` runs the jobs × seeds as a SLURM job array (submitit), or the same plan here."""
