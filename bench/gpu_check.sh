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
#   accuracy runs   all at once, side by side on the GPU (under CUDA MPS where this script can start it): the
#                   default recipe (train.py's defaults, 35 epochs) with seeds 0, 1, 2 for each net of
#                   GPU_CHECK_NETS; the net search, as results/README.md runs it on the CPU (10 epochs, a
#                   5,000-image validation split, seed 0) for each net of GPU_CHECK_SEARCH; and each seed net
#                   with its own recipe (recipes/seedNNN.yaml, seed 0); one row each: wall time, exit status,
#                   test accuracy (validation accuracy first for the search), the GPU's busy time while they
#                   ran. Runs still going when the budget (less a reserve for shipping) is spent are stopped and
#                   keep their checkpoints in RUNS: continue them with the command in their log plus --resume auto
#   ship ...        every finished run shipped as OUT/results/NAME (python -m cifar.results ship, without the
#                   last-epoch checkpoint: cifar.replay refuses GPU runs)
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
#                    GPU_CHECK_NETS        nets trained with the default recipe (default: the default net;
#                                          dry run c4net_tiny)
#                    GPU_CHECK_SEEDS       seeds of the default recipe's accuracy runs (default 0 1 2; dry
#                                          run 0 1)
#                    GPU_CHECK_SEARCH      nets of the 10-epoch search (default: every registered c4net and
#                                          c4next net but the tiny ones; dry run none); "" for none
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
    echo "error: no python or python3 on PATH: activate the project's environment (README) or set PYTHON" >&2
    exit 2
fi

# ---------------------------------------------------------------- the machine
if [ "$dry_run" = 0 ] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: nvidia-smi finds no GPU (or is not installed): run this on a CUDA machine, or with --dry-run to" \
         "try the stages on the CPU" >&2
    exit 2
fi
# One line: CUDA usable, the default net and batch, the search's nets (comma-separated), torch's version, the
# GPU's name.
if ! probe=$("$py" -c 'import torch
from cifar.config import TrainConfig
from cifar.nets import list_nets
gpu = torch.cuda.is_available()
search = [name for name in list_nets() if name.startswith("c4") and not name.endswith("_tiny")]
print(int(gpu), TrainConfig.model, TrainConfig.batch_size, ",".join(search), torch.__version__,
      torch.cuda.get_device_name(0) if gpu else "no GPU")'); then
    echo "error: $py cannot import torch and this project's cifar package (above): activate the project's" \
         "environment (README) or set PYTHON" >&2
    exit 2
fi
read -r has_cuda net default_batch search_nets torch_version gpu_name <<< "$probe"
if [ "$dry_run" = 0 ] && [ "$has_cuda" != 1 ]; then
    echo "error: nvidia-smi sees a GPU but torch $torch_version cannot use it (torch.cuda.is_available() is" \
         "False): install a CUDA build of torch that matches the driver (nvidia-smi shows its CUDA version)" >&2
    exit 2
fi

# What differs in a dry run: the CPU, a small net, a few images, one epoch. Everything else is the real command.
if [ "$dry_run" = 1 ]; then
    net=c4net_tiny  # the tests' CPU net: c4net's layout at 1/8 of the width
    nets=${GPU_CHECK_NETS-$net}
    epochs=1
    run_args=(--cpu --epochs 1 --subset 64 --batch-size 32 --num-workers 1 --checkpoint-every 0)
    bench_args=(--cpu --batch-size 32 --steps 1 --warmup 1 --train-images 32 --num-workers 1 --mixed-precision no)
    # One accuracy run of each kind: each train.py start costs ~15 s on a small CPU, whatever the run's size.
    seeds=${GPU_CHECK_SEEDS-0 1}
    search=${GPU_CHECK_SEARCH-}
    search_args=(--val-size 16)
    seed_nets=${GPU_CHECK_SEED_NETS-seed000}
else
    # train.py's defaults throughout (on a GPU the training batches are augmented there, --augment-backend auto,
    # and no DataLoader workers run).
    nets=${GPU_CHECK_NETS-$net}
    epochs=35
    run_args=()
    # bench.py's --mixed-precision auto is train.py's: bf16 where the GPU has it natively.
    bench_args=(--batch-size "$default_batch")
    seeds=${GPU_CHECK_SEEDS-0 1 2}
    search=${GPU_CHECK_SEARCH-${search_nets//,/ }}
    search_args=(--epochs 10 --val-size 5000)
    seed_nets=${GPU_CHECK_SEED_NETS-seed000 seed001 seed002 seed003 seed004}
fi

# The accuracy runs, "name:train.py flags": the default recipe with each net and seed; the search's nets, named
# as in results/search; each seed net with its own recipe (recipes/NET.yaml: the write-up's epochs, batch, lr,
# augmentation, fp32). A dry run's own arguments (one epoch, batch 32) override every recipe.
accuracy_runs=()
for recipe_net in $nets; do
    for seed in $seeds; do
        accuracy_runs+=("$recipe_net-${epochs}ep-seed$seed:--model $recipe_net --epochs $epochs --seed $seed")
    done
done
for search_net in $search; do accuracy_runs+=("s10-$search_net:--model $search_net ${search_args[*]} --seed 0"); done
for seed_net in $seed_nets; do
    recipe=recipes/$seed_net.yaml
    if [ ! -f "$recipe" ]; then
        echo "error: GPU_CHECK_SEED_NETS names $seed_net, which has no recipe $recipe; valid:" \
             "$(cd recipes && ls -- *.yaml | sed 's/\.yaml$//' | paste -sd ' ')" >&2
        exit 2
    fi
    recipe_epochs=$([ "$dry_run" = 1 ] && echo 1 || "$py" -c 'import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["epochs"])' "$recipe")
    accuracy_runs+=("$seed_net-${recipe_epochs}ep-seed0:--config $recipe --seed 0")
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
join_notes() {  # notes, empty ones dropped, as one "a; b" cell
    printf '%s\n' "$@" | sed '/^$/d' | paste -sd ';' | sed 's/;/; /g'
}
stop_if_interrupted() {
    if [ "$interrupted" = 1 ]; then
        echo "interrupted; the stages so far are in $summary" >&2
        exit 130
    fi
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
pids=()      # the accuracy runs' timeout processes, and their states: running, an exit status, or skipped
statuses=()
interrupted=0
on_signal() {
    interrupted=1
    if [ -n "$stage_pid" ]; then kill -TERM "$stage_pid" 2>/dev/null || true; fi
    local i
    for i in "${!pids[@]}"; do
        if [ "${statuses[$i]}" = running ]; then kill -TERM "${pids[$i]}" 2>/dev/null || true; fi
    done
}
trap on_signal INT TERM

status=0
wall=0
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
    local notes=()
    if [ "$status" = 124 ]; then notes+=("stopped: out of budget"); fi
    notes+=("$(stop_sampling)")
    record "$name" "$*" "$wall" "$status" "$(join_notes "${notes[@]}")"
    echo "== $name: exit $status, $wall s"
    if [ "$status" != 0 ]; then failed=1; fi
    stop_if_interrupted
}

# A finished run's accuracy and training time, for the notes of its row; a search run's final validation accuracy
# first, since that is what ranks it.
run_notes() {  # the run's folder
    "$py" -c 'import json, sys; s = json.load(open(sys.argv[1] + "/summary.json"))
last = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl") if line.strip()][-1]
val = "final val acc {:.2%}, ".format(last["val_acc"]) if "val_acc" in last else ""
print(val + "test acc {:.2%} ({:,} images), {:.0f} s training".format(s["test_acc"], s["test_images"], s["train_seconds"]))' \
        "$1" 2>/dev/null || true
}

# train.py with these flags (then the run arguments of this mode, which win) into RUNS/NAME: sets train_command.
train_command=()
set_train_command() {  # name, then train.py flags
    local name=$1
    shift
    train_command=("$py" train.py --data-dir "$data" --no-download "$@" "${run_args[@]}" --output-dir "$runs/$name")
}

# ---------------------------------------------------------------- the stages
run_stage data "$py" -c \
    'import sys, cifar.data as d; a = d.load_cifar(sys.argv[1]); print(len(a.train_labels), len(a.test_labels))' "$data"
if [ "$status" != 0 ]; then
    echo "error: no usable CIFAR-10 in $data (its log: $out/logs/data.log): unpack it there as docs/data.md" \
         "says, or pass --data-dir" >&2
    exit 2
fi

run_stage "gpu tests" "$py" -m pytest -m gpu -q -rA

run_stage bench "$py" bench.py --data-dir "$data" --model "$net" "${bench_args[@]}" --json "$out/bench.json"

# The accuracy runs, side by side: a net this small leaves most of a big GPU idle between its kernel launches,
# so runs in parallel share it well, and under CUDA MPS their kernels run concurrently instead of time-sliced
# (on one H200, 17 such runs kept it 94% busy). Each stops when the budget less a reserve for shipping is spent.
reserve=$((10 + 5 * ${#accuracy_runs[@]}))
mps=0
if [ "$dry_run" = 0 ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
    # Ours to stop later. A daemon that serves no client (another user's rights, say) is stopped at once.
    if "$py" -c 'import torch; torch.ones(1, device="cuda")' >/dev/null 2>&1; then
        mps=1
    else
        echo quit | nvidia-cuda-mps-control || true
    fi
fi
names=()
commands=()
starts=()
walls=()
start_sampling "$out/logs/accuracy-runs.gpu"
for entry in "${accuracy_runs[@]}"; do
    name=${entry%%:*}
    read -ra flags <<< "${entry#*:}"
    set_train_command "$name" "${flags[@]}"
    names+=("$name")
    commands+=("${train_command[*]}")
    starts+=("$EPOCHREALTIME")
    walls+=(-)
    left=$(($(seconds_left) - reserve))
    if [ "$left" -le 0 ] || [ "$interrupted" = 1 ]; then
        pids+=("")
        statuses+=(skipped)
        continue
    fi
    echo "== $name (side by side, at most $left s): ${train_command[*]}"
    timeout --kill-after=30 "$left" "${train_command[@]}" < /dev/null > "$out/logs/$name.log" 2>&1 &
    pids+=($!)
    statuses+=(running)
done
# Polled, not waited for in order, so each run's wall time ends when the run does.
while [[ " ${statuses[*]} " == *" running "* ]]; do
    sleep 1
    for i in "${!pids[@]}"; do
        if [ "${statuses[$i]}" = running ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
            run_status=0
            wait "${pids[$i]}" || run_status=$?
            statuses[$i]=$run_status
            walls[$i]=$(elapsed "${starts[$i]}")
            echo "== ${names[$i]}: exit $run_status, ${walls[$i]} s"
        fi
    done
done
busy=$(stop_sampling)
if [ "$mps" = 1 ]; then echo quit | nvidia-cuda-mps-control || true; fi
shared="side by side with $((${#names[@]} - 1)) other run(s)"
if [ "$mps" = 1 ]; then shared+=", under CUDA MPS"; fi
for i in "${!names[@]}"; do
    if [ "${statuses[$i]}" = skipped ]; then
        record "${names[$i]}" "${commands[$i]}" - skipped \
            "$([ "$interrupted" = 1 ] && echo "interrupted" || echo "the budget is spent")"
        continue
    fi
    notes=("$(run_notes "$runs/${names[$i]}")" "$shared")
    if [ "${statuses[$i]}" = 124 ]; then
        notes+=("stopped: out of budget; continue it with its log's command plus --resume auto")
    fi
    notes+=("$busy")
    record "${names[$i]}" "${commands[$i]}" "${walls[$i]}" "${statuses[$i]}" \
        "$(join_notes "${notes[@]}")"
    if [ "${statuses[$i]}" != 0 ]; then failed=1; fi
done
stop_if_interrupted
# cifar.replay refuses GPU runs, so no last-epoch checkpoint travels; the runs' folders keep theirs.
for i in "${!names[@]}"; do
    if [ "${statuses[$i]}" = 0 ]; then
        run_stage "ship ${names[$i]}" "$py" -m cifar.results ship "$runs/${names[$i]}" "$out/results/${names[$i]}" \
            --without-replay
    fi
done

total=$(elapsed "$started")
echo >> "$summary"
echo "Total $total s of the $budget s budget. Results: $out/results; runs (with checkpoints): $runs." >> "$summary"
echo "== done in $total s; summary: $summary"
cat "$summary"
exit "$failed"
