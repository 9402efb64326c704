"""Running CineScene on a SLURM cluster, in three parts (the submitit split, without pickles):

- ``sbatch``       the executor: one sbatch call, argument by argument, for a run or a sweep's array
- ``job``          the job: one start of the batch script -- srun the ranks, requeue when there is more to do
- ``environment``  the record of each start (its ids, restarts and nodes read by
                   ``cinescene.distributed.slurm_env``)

``records`` is what a run directory keeps about its jobs, ``accounting`` asks
squeue/sacct for their states, ``sweeps`` submits a sweep as one job array and
reports its trials. The batch script is ``train.sbatch`` (``slurm/train.sbatch``).

From Python, :func:`submit` and :func:`sweep` submit the same jobs with submitit and return its ``Job``
objects (``submitit_jobs``): the job function runs the batch side of ``train.sbatch`` in the batch script.
"""

from .submitit_jobs import submit, sweep

__all__ = ["submit", "sweep"]
