"""What `ptuning submit` asks the SLURM cluster before it submits: that the commands are there, the partition
exists, its time limit, and whether the cluster keeps job accounting (which `sacct`, and so submitit, needs to see
a task that died). Each problem is one PtuningError line saying what to do."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

from ptuning.errors import PtuningError

#: SLURM's names of the states a task ends in, in words (sacct's State column; "CANCELLED by 0" is read as CANCELLED)
ENDED = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "was cancelled",
    "TIMEOUT": "reached its time limit (--time) and was not requeued",
    "OUT_OF_MEMORY": "ran out of memory (--mem)",
    "NODE_FAIL": "lost its node",
    "BOOT_FAIL": "lost its node before it started",
    "DEADLINE": "passed its deadline",
}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}


def _command(*args: str, what: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise PtuningError(f"{what}: `{' '.join(args)}` did not answer within 60 s; is slurmctld reachable?") from None
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise PtuningError(f"{what}: `{' '.join(args)}` failed: {detail[-1] if detail else f'exit status {out.returncode}'}")
    return out.stdout


def require_commands() -> None:
    missing = [name for name in ("sbatch", "srun", "sinfo", "scontrol", "sacct") if shutil.which(name) is None]
    if "sbatch" in missing:
        raise PtuningError("--executor slurm: there is no sbatch on this machine (SLURM's commands are not on PATH); "
                           "run ptuning submit on the cluster's login node, or pass --executor local to run here")
    if missing:
        raise PtuningError(f"--executor slurm: sbatch is here but not {', '.join(missing)}; "
                           "load the cluster's SLURM module (or fix PATH) so that all of SLURM's commands are found")


def partitions() -> tuple[list[str], str | None]:
    """(the partitions this user may submit to, the default one)."""
    names, default = [], None
    for line in _command("sinfo", "-h", "-o", "%P", what="listing the partitions").split():
        name = line.rstrip("*")
        if line.endswith("*"):
            default = name
        if name not in names:
            names.append(name)
    return names, default


def check_partition(name: str | None) -> str:
    """The partition the array goes to (the given one, else the cluster's default); refuses an unknown one."""
    names, default = partitions()
    if name is None:
        if default is None:
            raise PtuningError(f"this cluster has no default partition: pass --partition (one of {', '.join(names) or 'none'})")
        return default
    if name not in names:
        raise PtuningError(f"--partition {name}: no such partition on this cluster; the partitions are: {', '.join(names) or 'none'}")
    return name


def time_limit_minutes(partition: str) -> int | None:
    """The time limit a job gets on `partition` without --time: DefaultTime, else MaxTime (None: unlimited)."""
    text = _command("scontrol", "show", "partition", "-o", partition, what=f"reading partition {partition}")
    fields = dict(word.split("=", 1) for word in text.split() if "=" in word)
    for key in ("DefaultTime", "MaxTime"):
        value = fields.get(key, "NONE")
        if value.upper() not in ("NONE", "UNLIMITED", "INFINITE"):
            return parse_time(value, f"partition {partition}'s {key}")
    return None


def accounting() -> str:
    """The cluster's AccountingStorageType (accounting_storage/none: no sacct)."""
    for line in _command("scontrol", "show", "config", what="reading the cluster's configuration").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return value.strip()
    return "accounting_storage/none"


NO_ACCOUNTING = (
    "--wait needs SLURM's job accounting to see a task that died, and this cluster keeps none "
    "(AccountingStorageType={kind}): submitit would wait for a killed task for ever. Submit without --wait, "
    "follow the array with squeue and read the results with `ptuning tables --results {results}`; "
    "or ask the cluster's administrators for slurmdbd"
)

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str, where: str = "--time") -> int:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) → whole minutes, rounded up."""
    match = _TIME.match(text.strip())
    if not match:
        raise PtuningError(f"{where} {text!r}: expected a SLURM time such as 90 (minutes), 4:00:00 or 1-12:00:00")
    days, a, b, c = match.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a * 3600 + b * 60 + c
    elif match.group(4) is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif match.group(3) is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # minutes
        seconds = a * 60
    if seconds <= 0:
        raise PtuningError(f"{where} {text!r}: the time limit must be more than zero")
    return math.ceil(seconds / 60)


def state_name(state: str) -> str:
    """sacct's State → its first word in capitals ('CANCELLED by 0' → 'CANCELLED')."""
    return (state or "UNKNOWN").split()[0].rstrip("+").upper()
