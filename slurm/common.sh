# Sourced by slurm/train.sbatch and slurm/train_multinode.sbatch (not run on its own): starts one
# `accelerate launch` on every node of the job, forwards the scheduler's USR1 warning to the training
# processes, and waits. The two templates differ only in their #SBATCH lines.

if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "error: SLURM_JOB_ID is not set: submit this template with sbatch (see docs/distributed.md)" >&2
    exit 2
fi

# ---------------------------------------------------------------- site settings
# Export any of these before `sbatch` to change them (sbatch hands the submitting shell's environment to the job).
# (CIFAR_ACTIVATE alone takes its default only when unset: set to "", it means none.)
CIFAR_ACTIVATE=${CIFAR_ACTIVATE-.venv/bin/activate}   # sourced to activate the Python environment; "" for none
CIFAR_RUNS=${CIFAR_RUNS:-runs}                        # the runs' output folders go under this folder
GPUS_PER_NODE=${GPUS_PER_NODE:-}                      # GPUs per node (default: what SLURM says, gpus_on_node below)
CPU_PROCS_PER_NODE=${CPU_PROCS_PER_NODE:-1}           # training processes per node when the job has no GPU
SEED_BASE=${SEED_BASE:-0}                             # array task i trains seed SEED_BASE + i
MAIN_ADDR=${MAIN_ADDR:-$(hostname)}                   # the batch shell runs on the first node: rank 0's host
MAIN_PORT=${MAIN_PORT:-$((20000 + SLURM_JOB_ID % 20000))}  # from the job id: jobs sharing a node do not collide

# SLURM names an array task "<array job>_<task>"; its bare SLURM_JOB_ID can equal the array's id, and
# scancel/scontrol given that would act on every task of the array.
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    job_ref="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
    job_ref="${SLURM_JOB_ID}"
fi

# The GPUs each node's processes are to use, printed as a count: GPUS_PER_NODE if set, else what SLURM says the
# job has. SLURM says it in different variables and spellings depending on its version, its site configuration and
# how the job asked (--gpus-per-node, --gres, --gpus): SLURM_GPUS_ON_NODE ("4"; "a100:4" on some sites),
# SLURM_GPUS_PER_NODE (as given to --gpus-per-node: "4", "a100:4", "gpu:a100:4", "a100:2,v100:2"), or only
# SLURM_JOB_GPUS (the GPU indices, "0,1,2,3"). The first one set is read; none set means no GPU (0). A value
# that is none of these is an error (status 2): read as 0 it would silently train on the CPU of a GPU node.
gpus_on_node() {
    local name value count item
    local -a items
    for name in GPUS_PER_NODE SLURM_GPUS_ON_NODE SLURM_GPUS_PER_NODE SLURM_JOB_GPUS; do
        value=${!name:-}
        [ -n "$value" ] || continue
        count=0
        if [ "$name" = SLURM_JOB_GPUS ]; then
            IFS=, read -ra items <<< "$value"
            for item in "${items[@]}"; do
                [[ "$item" =~ ^[0-9]+$ ]] || { count=; break; }
                count=$(( count + 1 ))
            done
        else
            # One "[gres:][type:]count" per GPU type, comma-separated; the count is the part after the last colon.
            IFS=, read -ra items <<< "$value"
            for item in "${items[@]}"; do
                item=${item##*:}
                [[ "$item" =~ ^[0-9]+$ ]] || { count=; break; }
                count=$(( count + 10#$item ))
            done
        fi
        if [ -z "$count" ]; then
            echo "error: $name='$value' is not a GPU count SLURM writes (4, a100:4, gpu:a100:4, a100:2,v100:2; or" \
                 "GPU indices 0,1,2,3 for SLURM_JOB_GPUS): export GPUS_PER_NODE=<GPUs per node> before sbatch" >&2
            return 2
        fi
        echo "$count"
        return 0
    done
    echo 0
}

# Start every node's `accelerate launch` with train.py and the given train.py arguments; return its status.
train_on_every_node() {
    if [ -n "$CIFAR_ACTIVATE" ]; then
        if [ ! -f "$CIFAR_ACTIVATE" ]; then
            echo "error: CIFAR_ACTIVATE=$CIFAR_ACTIVATE does not exist (in $PWD): create the environment as the" \
                 "README says, or export CIFAR_ACTIVATE=/path/to/bin/activate (\"\" to use the job's PATH)" >&2
            return 2
        fi
        # shellcheck disable=SC1090
        . "$CIFAR_ACTIVATE"
    fi

    # -------------------------------------------------------------- processes: one per GPU, or CPU processes
    local nodes=${SLURM_JOB_NUM_NODES:-1} per_node device_args=() gpus
    gpus=$(gpus_on_node) || return 2
    if [ "$gpus" -gt 0 ]; then
        per_node=$gpus
    else
        per_node=$CPU_PROCS_PER_NODE
        device_args=(--cpu)
        # Torch would give each process every core; split the job's cores between the node's processes.
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( SLURM_CPUS_ON_NODE / per_node > 0 ? SLURM_CPUS_ON_NODE / per_node : 1 ))}
    fi
    local processes=$(( nodes * per_node ))
    # --multi_gpu is accelerate's torchrun path: it also runs CPU processes (train.py's --cpu makes them use gloo).
    local launch_args=(--num_processes "$processes" --num_machines "$nodes"
                       --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT"
                       --mixed_precision no --dynamo_backend no)  # train.py's own flags choose both
    if [ "$processes" -gt 1 ]; then
        launch_args+=(--multi_gpu --rdzv_backend static --same_network)
    fi

    # -------------------------------------------------------------- where the run lives
    # Derived from the job id (array: array id and task), so a requeued job finds its own checkpoints.
    local run_args
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
        run_args=(--output-dir "$CIFAR_RUNS/$SLURM_JOB_NAME-$job_ref" --seed $(( SEED_BASE + SLURM_ARRAY_TASK_ID ))
                  --wandb-group "$SLURM_JOB_NAME-$SLURM_ARRAY_JOB_ID")
    else
        run_args=(--output-dir "$CIFAR_RUNS/$SLURM_JOB_NAME-$job_ref")
    fi

    echo "job $job_ref on ${SLURM_JOB_NODELIST:-?} (start $(( ${SLURM_RESTART_COUNT:-0} + 1 ))):" \
         "$nodes node(s) x $per_node process(es), ${device_args[*]:-GPU}; rank 0 at $MAIN_ADDR:$MAIN_PORT"

    # -------------------------------------------------------------- one launcher per node
    # Single quotes: each node's shell expands its own $SLURM_NODEID. The launchers ignore USR1 (and hand that
    # to their workers, which inherit it until train.py installs its handler), so the warning signal reaches
    # the training processes without killing the launcher that waits for them.
    srun --nodes="$nodes" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_ON_NODE" --kill-on-bad-exit=1 \
        bash -c 'trap "" USR1; exec accelerate launch --machine_rank "$SLURM_NODEID" "$@"' launcher \
        "${launch_args[@]}" train.py "${device_args[@]}" --resume auto "${run_args[@]}" "$@" &
    local srun_pid=$!

    # SLURM sends USR1 to this shell only (--signal=B:...): pass it to every process of the training step.
    # train.py checkpoints at the next step boundary and its main process requeues this job.
    trap 'echo "USR1: asking the training processes to checkpoint and requeue"; scancel --signal=USR1 "$job_ref"' USR1

    # A trapped signal interrupts `wait`; wait again until srun has really ended.
    local status=0
    wait "$srun_pid" || status=$?
    while kill -0 "$srun_pid" 2>/dev/null; do
        status=0
        wait "$srun_pid" || status=$?
    done
    return "$status"
}
