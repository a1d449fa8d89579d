# Shared body of slurm/stylegan.sh and slurm/progan.sh (sourced from the repository root after
# they set DEFAULT_CONFIG). Runs one `srun` task per node; each runs slurm/launch.py, which
# runs `accelerate launch` with that node's rank.
#
# Environment (each optional):
#   CONFIG          run config (default: the template's DEFAULT_CONFIG)
#   RUN_DIR         run directory (default runs/<job name>-<job id>; the id survives requeues)
#   OVERRIDES       space-separated key=value config overrides, e.g. "train.max_steps=1000"
#   NPROC_PER_NODE  training processes per node (default: the node's GPUs; 1 on a CPU node)
#   MAIN_PORT       rendezvous port (default 15000 + job id % 15000)
#   PYTHON          interpreter with gan_hr's dependencies (default python3 on PATH)
#   TRAIN_SCRIPT    entry point (default pipelines/train_progressive.py)
#   STOP_GRACE      seconds the trainers get to checkpoint after SIGUSR1 before their step is
#                   cancelled, so the requeue still happens in time (default 480; keep it
#                   below the lead time of --signal=B:USR1@...)
#
# Signals to this shell: SIGUSR1 (#SBATCH --signal=B:USR1@N before the time limit, or
# `scancel --batch --signal=USR1 JOB`) makes the trainers checkpoint and exit, then the job
# requeues itself and resumes with --resume auto in the same RUN_DIR. SIGTERM
# (`scancel --batch --signal=TERM JOB`) makes them checkpoint and exit, with no requeue.

set -uo pipefail

export CONFIG="${CONFIG:-$DEFAULT_CONFIG}"
export RUN_DIR="${RUN_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}"
export OVERRIDES="${OVERRIDES:-}"
export PYTHON="${PYTHON:-python3}"
export RESUME=auto
STOP_GRACE="${STOP_GRACE:-480}"
# Log lines reach the job's output file as they are written, not when a buffer fills.
export PYTHONUNBUFFERED=1
# Progress bars redraw at most once a minute: a log file keeps every redraw.
export TQDM_MININTERVAL="${TQDM_MININTERVAL:-60}"

if ! command -v "$PYTHON" >/dev/null; then
    echo "error: PYTHON=$PYTHON not found: activate gan_hr's environment before sbatch or set PYTHON" >&2
    exit 2
fi

echo "=== $(date -Is) job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) restart count ${SLURM_RESTART_COUNT:-0}" \
     "on ${SLURM_JOB_NUM_NODES} node(s): ${SLURM_JOB_NODELIST}"
echo "root ${PWD}; config ${CONFIG}; run dir ${RUN_DIR}; overrides: ${OVERRIDES:-none}"

step_pid=""
watchdog_pid=""
requeue=0

on_usr1() {
    echo "=== $(date -Is) SIGUSR1: the trainers checkpoint and exit, then the job requeues"
    # A signal after the step ended (the run finished on its own) must not start it again.
    if [[ -z "$step_pid" ]] || ! kill -0 "$step_pid" 2>/dev/null; then
        return
    fi
    requeue=1
    # Without --batch, scancel signals the job's steps on every node and not this shell.
    scancel --signal=USR1 "$SLURM_JOB_ID" || true
    if [[ -z "$watchdog_pid" ]]; then
        # Trainers that hang (e.g. a node lost mid-collective) must not cost the requeue.
        (
            sleep "$STOP_GRACE"
            echo "=== $(date -Is) trainers still running after ${STOP_GRACE} s: cancelling the step"
            scancel "${SLURM_JOB_ID}.0"
        ) &
        watchdog_pid=$!
    fi
}

on_term() {
    echo "=== $(date -Is) SIGTERM: the trainers checkpoint and exit; no requeue"
    # Passed on as USR1, which the trainers treat like TERM: a step-wide SIGTERM would also
    # reach PyTorch's DataLoader workers, which die on it and take their trainer down.
    scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || true
}

trap on_usr1 USR1
trap on_term TERM

# srun does not pass the job's --cpus-per-task on to the step in SLURM 22.05-23.02.
srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \
     ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} --kill-on-bad-exit=1 \
     "$PYTHON" slurm/launch.py &
step_pid=$!

# `wait` returns early whenever a trapped signal arrives (that is what lets the trap run while
# the step is busy); keep waiting until the step itself has ended.
while :; do
    wait "$step_pid"
    status=$?
    if (( status > 128 )) && kill -0 "$step_pid" 2>/dev/null; then
        continue
    fi
    break
done

if [[ -n "$watchdog_pid" ]]; then
    kill "$watchdog_pid" 2>/dev/null
fi

if (( requeue )); then
    echo "=== $(date -Is) step ended with status $status; requeueing job $SLURM_JOB_ID" \
         "(it resumes from the newest checkpoint in $RUN_DIR)"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "=== $(date -Is) step ended with status $status"
exit "$status"
