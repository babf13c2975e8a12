#!/usr/bin/env bash
# A GPU's first minutes for this project, in one command: is the GPU path correct, how fast is it, and what
# accuracy does the default recipe reach. Runs on any CUDA machine with the project's Python environment.
#
#   bench/gpu_check.sh                                   # CIFAR-10 in ./data, 540 s in all
#   bench/gpu_check.sh --data-dir /data/cifar10 --out /tmp/check --budget 900
#   bench/gpu_check.sh --dry-run --data-dir DIR          # the same stages on the CPU, tiny: tests the script
#
# Stages, in this order, each timed; none starts after the budget is spent, and one still running then is stopped
# (a training run finishes its step and saves a checkpoint; anything is killed 30 s later):
#   data            CIFAR-10 found and decoded (its cache written) before anything is timed
#   gpu tests       python -m pytest -m gpu             (tests/test_gpu.py)
#   bench           python bench.py on the GPU: trainer vs the seed-style loop, same net and batch, and the GPU's
#                   busy time (nvidia-smi's utilization.gpu, sampled every 0.2 s while the stage runs)
#   <net>-35ep-seed0  the default recipe (train.py's defaults), 35 epochs, seed 0: wall time and GPU busy time
#   ship ...        every finished run shipped as OUT/results/NAME (python -m cifar.results ship)
#   accuracy runs   the default recipe with seeds 1 and 2, then each seed net with its own recipe
#                   (recipes/seedNNN.yaml, seed 0), each while it fits in what is left of the budget (estimated
#                   from the seed-0 run's wall time and the run's optimizer steps); else skipped
# OUT/gpu_check.md lists every stage: command, wall time, exit status (or why it was skipped), notes; each
# stage's output is in OUT/logs/. Exit status: 0 every stage that ran passed, 1 some stage failed, 2 bad input
# or no GPU, 130 interrupted (the running stage is stopped first: a training run saves a checkpoint).
#
# Settings (a flag wins over its variable):
#   --dry-run        GPU_CHECK_DRY_RUN=1   the stages on the CPU (--cpu), c4net_tiny, a few images and steps, 1 epoch
#   --data-dir DIR   GPU_CHECK_DATA        CIFAR-10 as train.py reads it (default ./data; never downloaded here)
#   --out DIR        GPU_CHECK_OUT         default $OUT if set, else ./gpu-check-<time>
#   --budget SEC     GPU_CHECK_BUDGET      seconds for all stages (default 540)
#                    GPU_CHECK_RUNS        the training runs' folders (default OUT/runs; checkpoints included)
#                    GPU_CHECK_SEEDS       seeds of the default recipe's accuracy runs after 0 (default 1 2;
#                                          dry run 1)
#                    GPU_CHECK_SEED_NETS   seed nets of the accuracy runs (default seed000 ... seed004; dry run
#                                          seed000); "" for none
#                    PYTHON                the interpreter (default python, else python3)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

dry_run=${GPU_CHECK_DRY_RUN:-0}
data=${GPU_CHECK_DATA:-./data}
out=${GPU_CHECK_OUT:-${OUT:-./gpu-check-$(date +%Y%m%d-%H%M%S)}}
budget=${GPU_CHECK_BUDGET:-540}
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --data-dir) data=${2:?--data-dir needs a folder}; shift ;;
        --out) out=${2:?--out needs a folder}; shift ;;
        --budget) budget=${2:?--budget needs seconds}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'; valid: --dry-run, --data-dir DIR, --out DIR, --budget SECONDS," \
                "--help" >&2; exit 2 ;;
    esac
    shift
done
if ! [[ "$budget" =~ ^[0-9]+$ ]] || [ "$budget" -eq 0 ]; then
    echo "error: budget '$budget' is not a whole number of seconds > 0 (--budget or GPU_CHECK_BUDGET)" >&2
    exit 2
fi
case $dry_run in 0|1) ;; *) echo "error: GPU_CHECK_DRY_RUN='$dry_run'; valid: 0, 1" >&2; exit 2 ;; esac

# Paths are the caller's, before this script moves to the repository root.
data=$(realpath -m "$data")
out=$(realpath -m "$out")
runs=$(realpath -m "${GPU_CHECK_RUNS:-$out/runs}")
cd "$(dirname "$(realpath "$0")")/.."
py=${PYTHON:-$(command -v python || command -v python3 || true)}
if [ -z "$py" ]; then
    echo "error: no python or python3 on PATH: activate the project's environment (README, Setup) or set PYTHON" >&2
    exit 2
fi

# ---------------------------------------------------------------- the machine
if [ "$dry_run" = 0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: nvidia-smi finds no GPU (or is not installed): run this on a CUDA machine, or with --dry-run to" \
         "try the stages on the CPU" >&2
    exit 2
fi
# One line: CUDA usable, native bf16, the default net and batch, torch's version, the GPU's name.
if ! probe=$("$py" -c 'import torch
from cifar.config import TrainConfig
gpu = torch.cuda.is_available()
print(int(gpu), int(gpu and torch.cuda.is_bf16_supported(including_emulation=False)), TrainConfig.model,
      TrainConfig.batch_size, torch.__version__, torch.cuda.get_device_name(0) if gpu else "no GPU")'); then
    echo "error: $py cannot import torch and this project's cifar package (above): activate the project's" \
         "environment (README, Setup) or set PYTHON" >&2
    exit 2
fi
read -r has_cuda has_bf16 net default_batch torch_version gpu_name <<< "$probe"
if [ "$dry_run" = 0 ] && [ "$has_cuda" != 1 ]; then
    echo "error: nvidia-smi sees a GPU but torch $torch_version cannot use it (torch.cuda.is_available() is" \
         "False): install a CUDA build of torch that matches the driver (nvidia-smi shows its CUDA version)" >&2
    exit 2
fi

# What differs in a dry run: the CPU, a small net, a few images, one epoch. Everything else is the real command.
if [ "$dry_run" = 1 ]; then
    net=c4net_tiny  # the tests' CPU net: c4net's layout at 1/8 of the width
    epochs=1
    run_args=(--cpu --epochs 1 --subset 64 --batch-size 32 --num-workers 1 --checkpoint-every 0)
    bench_args=(--cpu --batch-size 32 --steps 1 --warmup 1 --train-images 32 --num-workers 1)
    precision=no
    # One accuracy run of each kind: each train.py start costs ~15 s on a small CPU, whatever the run's size.
    seeds=${GPU_CHECK_SEEDS-1}
    seed_nets=${GPU_CHECK_SEED_NETS-seed000}
else
    # train.py's defaults throughout (on a GPU the training batches are augmented there, --augment-backend auto,
    # and no DataLoader workers run).
    epochs=35
    run_args=()
    bench_args=(--batch-size "$default_batch")
    # What train.py's --mixed-precision auto chooses (bf16 where the GPU has it natively), as the trainer runs.
    precision=$([ "$has_bf16" = 1 ] && echo bf16 || echo no)
    seeds=${GPU_CHECK_SEEDS-1 2}
    seed_nets=${GPU_CHECK_SEED_NETS-seed000 seed001 seed002 seed003 seed004}
fi
bench_args+=(--mixed-precision "$precision")

# The accuracy runs: "name:steps relative to the seed-0 run:train.py flags". The default recipe with more seeds;
# each seed net with its own recipe (recipes/NET.yaml: the write-up's epochs, batch, lr, augmentation, fp32), whose
# optimizer steps (epochs x 50,000 / batch) give its time relative to the seed-0 run. A dry run's own arguments
# (one epoch, batch 32) override every recipe, so there all runs cost the same.
accuracy_runs=()
for seed in $seeds; do accuracy_runs+=("$net-${epochs}ep-seed$seed:1:--model $net --epochs $epochs --seed $seed"); done
for seed_net in $seed_nets; do
    recipe=recipes/$seed_net.yaml
    if [ ! -f "$recipe" ]; then
        echo "error: GPU_CHECK_SEED_NETS names $seed_net, which has no recipe $recipe; valid:" \
             "$(cd recipes && ls -- *.yaml | sed 's/\.yaml$//' | paste -sd ' ')" >&2
        exit 2
    fi
    read -r recipe_epochs recipe_batch <<< "$("$py" -c 'import sys, yaml
c = yaml.safe_load(open(sys.argv[1])); print(c["epochs"], c["batch_size"])' "$recipe")"
    if [ "$dry_run" = 1 ]; then
        recipe_epochs=1
        ratio=1
    else
        ratio=$(awk -v e="$recipe_epochs" -v b="$recipe_batch" -v de="$epochs" -v db="$default_batch" \
            'BEGIN { printf "%.3f", (e / b) / (de / db) }')
    fi
    accuracy_runs+=("$seed_net-${recipe_epochs}ep-seed0:$ratio:--config $recipe --seed 0")
done

mkdir -p "$out/logs" "$out/results" "$runs"
summary=$out/gpu_check.md
started=$EPOCHREALTIME
failed=0

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
seconds_left() { awk -v a="$started" -v b="$EPOCHREALTIME" -v t="$budget" 'BEGIN { printf "%d", t - (b - a) }'; }

{
    echo "# GPU check, $(date '+%Y-%m-%d %H:%M:%S')"
    echo
    echo "$gpu_name; torch $torch_version; $(nproc) cores; data $data; budget $budget s" \
         "$([ "$dry_run" = 1 ] && echo "; DRY RUN on the CPU")"
    echo
    echo "| stage | command | wall s | exit | notes |"
    echo "|---|---|---:|---:|---|"
} > "$summary"

record() {  # stage, command, wall seconds, exit status or "skipped", notes
    local command=$2
    command=${command//|/\\|}
    echo "| $1 | \`$command\` | $3 | $4 | ${5:-} |" >> "$summary"
}

# ---------------------------------------------------------------- GPU busy time
sampler=
samples=
start_sampling() {
    samples=$1
    if [ "$dry_run" = 0 ]; then
        # The GPU torch uses as cuda:0: the first of CUDA_VISIBLE_DEVICES (an index or a UUID), else GPU 0.
        local gpu=${CUDA_VISIBLE_DEVICES:-0}
        nvidia-smi -i "${gpu%%,*}" --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 \
            > "$samples" 2>/dev/null &
        sampler=$!
    fi
}
stop_sampling() {  # prints "GPU busy N% (M samples)", or nothing without samples
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        sampler=
    fi
    awk '$1 ~ /^[0-9]+$/ { sum += $1; n++ }
         END { if (n) printf "GPU busy %.0f%% (nvidia-smi utilization.gpu, %d samples)", sum / n, n }' \
        "$samples" 2>/dev/null || true
}

# ---------------------------------------------------------------- running a stage
stage_pid=
interrupted=0
on_signal() {
    interrupted=1
    if [ -n "$stage_pid" ]; then kill -TERM "$stage_pid" 2>/dev/null || true; fi
}
trap on_signal INT TERM

status=0
wall=0
notes_from=  # a function whose output opens the notes of the next stage run_stage records
run_stage() {  # stage name, then its command; sets status and wall, records the stage
    local name=$1 left log t0
    shift
    left=$(seconds_left)
    if [ "$left" -le 0 ]; then
        record "$name" "$*" - skipped "the budget is spent"
        status=skipped
        return
    fi
    log="$out/logs/${name//[^A-Za-z0-9._-]/_}.log"
    echo "== $name (at most $left s): $*"
    start_sampling "$out/logs/${name//[^A-Za-z0-9._-]/_}.gpu"
    t0=$EPOCHREALTIME
    # timeout stops the whole stage (a training run saves a checkpoint on its SIGTERM) when the budget runs out.
    timeout --kill-after=30 "$left" "$@" < /dev/null > >(tee "$log") 2>&1 &
    stage_pid=$!
    status=0
    wait "$stage_pid" || status=$?
    while kill -0 "$stage_pid" 2>/dev/null; do  # a trapped signal interrupts wait: wait again
        status=0
        wait "$stage_pid" || status=$?
    done
    stage_pid=
    wall=$(elapsed "$t0")
    local notes=() note
    if [ -n "$notes_from" ]; then notes+=("$("$notes_from")"); fi
    if [ "$status" = 124 ]; then notes+=("stopped: out of budget"); fi
    notes+=("$(stop_sampling)")
    note=$(printf '%s\n' "${notes[@]}" | sed '/^$/d' | paste -sd ';' | sed 's/;/; /g')
    record "$name" "$*" "$wall" "$status" "$note"
    echo "== $name: exit $status, $wall s"
    if [ "$status" != 0 ]; then failed=1; fi
    if [ "$interrupted" = 1 ]; then
        echo "interrupted; the stages so far are in $summary" >&2
        exit 130
    fi
}

# A finished run's accuracy and training time, for the notes of its stage.
run_dir=
run_notes() {
    "$py" -c 'import json, sys; s = json.load(open(sys.argv[1]))
print("test acc {:.2%} ({:,} images), {:.0f} s training".format(s["test_acc"], s["test_images"], s["train_seconds"]))' \
        "$run_dir/summary.json" 2>/dev/null || true
}

# train.py with these flags (then the run arguments of this mode, which win) into RUNS/NAME: sets train_command.
train_command=()
set_train_command() {  # name, then train.py flags
    local name=$1
    shift
    train_command=("$py" train.py --data-dir "$data" --no-download "$@" "${run_args[@]}" --output-dir "$runs/$name")
}

# Train RUNS/NAME, then ship it as OUT/results/NAME; trained_wall: the training's wall time if it finished, else "".
trained_wall=
train_and_ship() {  # name, then train.py flags
    local name=$1
    set_train_command "$@"
    run_dir=$runs/$name
    notes_from=run_notes
    run_stage "$name" "${train_command[@]}"
    notes_from=
    trained_wall=
    if [ "$status" = 0 ]; then
        trained_wall=$wall
        run_stage "ship $name" "$py" -m cifar.results ship "$run_dir" "$out/results/$name"
    fi
}

# ---------------------------------------------------------------- the stages
run_stage data "$py" -c \
    'import sys, cifar.data as d; a = d.load_cifar(sys.argv[1]); print(len(a.train_labels), len(a.test_labels))' "$data"
if [ "$status" != 0 ]; then
    echo "error: no usable CIFAR-10 in $data (its log: $out/logs/data.log): unpack it there as the README's Setup" \
         "says, or pass --data-dir" >&2
    exit 2
fi

run_stage "gpu tests" "$py" -m pytest -m gpu -q -rA

run_stage bench "$py" bench.py --data-dir "$data" --model "$net" "${bench_args[@]}" --json "$out/bench.json"

train_and_ship "$net-${epochs}ep-seed0" --model "$net" --epochs "$epochs" --seed 0
seed0_wall=$trained_wall

for entry in "${accuracy_runs[@]}"; do
    name=${entry%%:*}
    ratio=${entry#*:}
    ratio=${ratio%%:*}
    read -ra flags <<< "${entry#*:*:}"
    set_train_command "$name" "${flags[@]}"
    left=$(seconds_left)
    if [ -z "$seed0_wall" ]; then
        record "$name" "${train_command[*]}" - skipped "no estimate: the seed-0 run did not finish"
        continue
    fi
    # The run and its shipping, from the seed-0 run's wall time, with a margin.
    estimate=$(awk -v w="$seed0_wall" -v r="$ratio" 'BEGIN { printf "%d", w * r * 1.1 + 10 }')
    if [ "$estimate" -gt "$left" ]; then
        record "$name" "${train_command[*]}" - skipped "estimated $estimate s, $left s left"
    else
        train_and_ship "$name" "${flags[@]}"
    fi
done

total=$(elapsed "$started")
echo >> "$summary"
echo "Total $total s of the $budget s budget. Results: $out/results; runs (with checkpoints): $runs." >> "$summary"
echo "== done in $total s; summary: $summary"
cat "$summary"
exit "$failed"
